"""Small official-layout DELG archives for the converter tests, and TensorFlow forward passes with
the official layer semantics (written for these tests from the layer definitions: TF 'SAME'
padding, Keras conv biases and BatchNorm eps 1e-3, tf-slim's stride on the last unit).

Widths are small (base width 8: block3 128 channels, block4 256) so that building, saving and
converting take seconds; the converter reads every size from the shapes.
"""

import os

import numpy as np

STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
HEADS = {"reduction": 16, "attention": 8, "descriptor": 4}


def _conv(rng, kh, cin, cout):
    return (rng.standard_normal((kh, kh, cin, cout)) * np.sqrt(2.0 / (kh * kh * cin))).astype(
        np.float32
    )


def _bn(rng, channels, gamma=True):
    values = {
        "beta": rng.standard_normal(channels).astype(np.float32) * 0.1,
        "moving_mean": rng.standard_normal(channels).astype(np.float32) * 0.1,
        "moving_variance": rng.uniform(0.5, 1.5, channels).astype(np.float32),
    }
    if gamma:
        values["gamma"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    return values


def _vec(rng, size, scale=0.1):
    return (rng.standard_normal(size) * scale).astype(np.float32)


def units(depth, width):
    """(stage 0..3, unit, in channels, inner width, out channels) of every bottleneck."""
    cin = width
    for stage, count in enumerate(STAGES[depth]):
        for unit in range(count):
            inner = width * 2**stage
            yield stage, unit, cin, inner, inner * 4
            cin = inner * 4


# ------------------------------------------------------------------------------------ TF2 / Keras
def keras_variables(depth=50, width=8, classes=0, seed=0):
    """{object path: array} with the positional keys of a TF2 DELG SavedModel (issue fact 8)."""
    rng = np.random.default_rng(seed)
    out = {}
    root = "_model/backbone/"
    out[root + "conv1/kernel"] = _conv(rng, 7, 3, width)
    out[root + "conv1/bias"] = _vec(rng, width)
    for attr, value in _bn(rng, width).items():
        out[root + f"bn_conv1/{attr}"] = value
    for stage, unit, cin, inner, cout in units(depth, width):
        values = []
        for kh, a, b in ((1, cin, inner), (3, inner, inner), (1, inner, cout)):
            values += [_conv(rng, kh, a, b), _vec(rng, b)]
            bn = _bn(rng, b)
            values += [bn["gamma"], bn["beta"], bn["moving_mean"], bn["moving_variance"]]
        if unit == 0:
            bn = _bn(rng, cout)
            values += [_conv(rng, 1, cin, cout), _vec(rng, cout), bn["gamma"], bn["beta"]]
            values += [bn["moving_mean"], bn["moving_variance"]]
        block = f"l{stage + 2}{chr(97 + unit)}"
        for index, value in enumerate(values):
            out[f"{root}{block}/variables/{index}"] = value
    c3, c4 = width * 16, width * 32
    out[root + "embedding_layer/kernel"] = _conv(rng, 1, c4, HEADS["reduction"])[0, 0]
    out[root + "embedding_layer/bias"] = _vec(rng, HEADS["reduction"])
    bn = _bn(rng, HEADS["attention"])
    attention = [_conv(rng, 1, c3, HEADS["attention"]), _vec(rng, HEADS["attention"])]
    attention += [bn["gamma"], bn["beta"], bn["moving_mean"], bn["moving_variance"]]
    attention += [_conv(rng, 1, HEADS["attention"], 1), _vec(rng, 1)]
    for index, value in enumerate(attention):
        out[f"_model/attention/variables/{index}"] = value
    d = HEADS["descriptor"]
    autoencoder = [_conv(rng, 1, c3, d), _vec(rng, d), _conv(rng, 1, d, c3), _vec(rng, c3)]
    for index, value in enumerate(autoencoder):
        out[f"_model/autoencoder/variables/{index}"] = value
    if classes:
        out["_model/cosine_weights"] = _vec(rng, (HEADS["reduction"], classes), 1.0)
        out["_model/attn_classification/kernel"] = _vec(rng, (c3, classes), 1.0)
        out["_model/attn_classification/bias"] = _vec(rng, classes)
    return out


def save_keras(folder, variables):
    """A real SavedModel (tf.saved_model.save) whose variables have exactly these object paths."""
    import tensorflow as tf

    tree = {}
    for name, value in variables.items():
        node = tree
        parts = name.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def build(node):
        if not isinstance(node, dict):
            return tf.Variable(node)
        if all(key.isdigit() for key in node):
            return [build(node[str(i)]) for i in range(len(node))]
        return tf.train.Checkpoint(**{key: build(child) for key, child in node.items()})

    tf.saved_model.save(build(tree), folder)
    return folder


def keras_forward(v, images, depth=50, width=8):
    """Official TF2 DELG on NHWC images: (block3 after the stride-2 subsampling, block4, embedding,
    attention, local descriptors), with the Keras layer semantics of research/delf."""
    import tensorflow as tf

    def conv(x, name, stride=1, padding="SAME"):
        return tf.nn.conv2d(x, v[name + "kernel"], stride, padding) + v[name + "bias"]

    def bn(x, g, b, m, var):
        return tf.nn.batch_normalization(x, m, var, b, g, 1e-3)

    root = "_model/backbone/"
    x = conv(images, root + "conv1/", 2)
    x = tf.nn.relu(
        bn(
            x,
            *(
                v[root + f"bn_conv1/{a}"]
                for a in ("gamma", "beta", "moving_mean", "moving_variance")
            ),
        )
    )
    x = tf.nn.max_pool2d(x, 3, 2, "VALID")
    block3 = None
    for stage, unit, _, _, _ in units(depth, width):
        if stage == 3 and unit == 0:
            x = block3 = tf.nn.max_pool2d(x, 1, 2, "VALID")
        p = [
            v[f"{root}l{stage + 2}{chr(97 + unit)}/variables/{i}"]
            for i in range(24 if unit == 0 else 18)
        ]
        stride = 2 if unit == 0 and stage in (1, 2) else 1
        y = tf.nn.conv2d(x, p[0], stride, "VALID") + p[1]
        y = tf.nn.relu(bn(y, *p[2:6]))
        y = tf.nn.relu(bn(tf.nn.conv2d(y, p[6], 1, "SAME") + p[7], *p[8:12]))
        y = bn(tf.nn.conv2d(y, p[12], 1, "VALID") + p[13], *p[14:18])
        shortcut = x if unit else bn(tf.nn.conv2d(x, p[18], stride, "VALID") + p[19], *p[20:24])
        x = tf.nn.relu(y + shortcut)
    gem = tf.reduce_mean(tf.pow(tf.maximum(x, 1e-6), 3.0), [1, 2]) ** (1.0 / 3.0)
    embedding = (
        tf.matmul(gem, v[root + "embedding_layer/kernel"]) + v[root + "embedding_layer/bias"]
    )
    a = [v[f"_model/attention/variables/{i}"] for i in range(8)]
    e = [v[f"_model/autoencoder/variables/{i}"] for i in range(4)]
    reduced = tf.nn.conv2d(block3, e[0], 1, "SAME") + e[1]
    expanded = tf.nn.relu(tf.nn.conv2d(reduced, e[2], 1, "SAME") + e[3])
    hidden = tf.nn.relu(bn(tf.nn.conv2d(expanded, a[0], 1, "SAME") + a[1], *a[2:6]))
    attention = tf.nn.softplus(tf.nn.conv2d(hidden, a[6], 1, "SAME") + a[7])
    return [t.numpy() for t in (block3, x, embedding, attention, reduced)]


# ------------------------------------------------------------------------------------ TF1 / slim
SLIM_HEAD_NAMES = {  # the release's names are not public; any scope outside resnet_v1_* will do
    "whitening": ("delg/whitening/weights", "delg/whitening/biases"),
    "encoder": ("delg/autoencoder/conv1/weights", "delg/autoencoder/conv1/biases"),
    "decoder": ("delg/autoencoder/conv2/weights", "delg/autoencoder/conv2/biases"),
}


def slim_variables(depth=50, width=8, seed=0, gamma=True, heads=None):
    """{name: array} with tf-slim resnet_v1 and TF1 DELF attention names (issue fact 7)."""
    rng = np.random.default_rng(seed)
    heads = heads or HEADS
    root = f"resnet_v1_{depth}/"
    out = {root + "conv1/weights": _conv(rng, 7, 3, width)}
    for attr, value in _bn(rng, width, gamma).items():
        out[root + f"conv1/BatchNorm/{attr}"] = value
    for stage, unit, cin, inner, cout in units(depth, width):
        scope = f"{root}block{stage + 1}/unit_{unit + 1}/bottleneck_v1/"
        layers = [("conv1", 1, cin, inner), ("conv2", 3, inner, inner), ("conv3", 1, inner, cout)]
        if unit == 0:
            layers.append(("shortcut", 1, cin, cout))
        for layer, kh, a, b in layers:
            out[f"{scope}{layer}/weights"] = _conv(rng, kh, a, b)
            for attr, value in _bn(rng, b, gamma).items():
                out[f"{scope}{layer}/BatchNorm/{attr}"] = value
    c3, c4, d = width * 16, width * 32, heads["descriptor"]
    att = "attention_block/attention/compute/"
    out[att + "conv1/weights"] = _conv(rng, 1, c3, heads["attention"])
    for attr, value in _bn(rng, heads["attention"], gamma).items():
        out[f"{att}conv1/BatchNorm/{attr}"] = value
    out[att + "conv2/weights"] = _conv(rng, 1, heads["attention"], 1)
    out[att + "conv2/biases"] = _vec(rng, 1)
    shapes = {
        "whitening": ((c4, heads["reduction"]), heads["reduction"]),
        "encoder": ((1, 1, c3, d), d),
        "decoder": ((1, 1, d, c3), c3),
    }
    for role, (kernel, bias) in SLIM_HEAD_NAMES.items():
        shape, size = shapes[role]
        out[kernel] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(
            np.float32
        )
        out[bias] = _vec(rng, size)
    out["global_step"] = np.array(1234, np.int64)
    return out


def save_checkpoint(prefix, variables):
    """A TF checkpoint with exactly these variable names (what a TF1 Saver writes), no graph."""
    import tensorflow as tf

    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[name]) for name in names],
    )
    return prefix


def save_slim(folder, variables, wiring="block3", half_pixel=False, depth=50):
    """A TF1 SavedModel (tf.compat.v1 graph + SavedModelBuilder) with these variables and a graph
    in which the attention's first conv reads block3 or the decoder output, and the pyramid
    resizes with ResizeBilinear(half_pixel_centers=half_pixel)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        tensors = {name: v1.Variable(value, name=name) for name, value in variables.items()}
        image = v1.placeholder(tf.float32, [1, None, None, 3], name="input_image")
        v1.image.resize_bilinear(image, [32, 32], half_pixel_centers=half_pixel, name="pyramid")
        last = max(u for s, u, *_ in units(depth, 8) if s == 2) + 1
        scope = f"resnet_v1_{depth}/block3/unit_{last}/bottleneck_v1/"
        kernel = tensors[scope + "conv3/weights"]
        features = v1.placeholder(tf.float32, [1, None, None, kernel.shape[2]], name="features")
        block3 = tf.nn.relu(tf.nn.conv2d(features, kernel, 1, "SAME"))
        enc, enc_b = SLIM_HEAD_NAMES["encoder"]
        dec, dec_b = SLIM_HEAD_NAMES["decoder"]
        reduced = tf.nn.conv2d(block3, tensors[enc], 1, "SAME") + tensors[enc_b]
        expanded = tf.nn.relu(tf.nn.conv2d(reduced, tensors[dec], 1, "SAME") + tensors[dec_b])
        source = expanded if wiring == "decoder" else block3
        weights = tensors["attention_block/attention/compute/conv1/weights"]
        tf.nn.relu(tf.nn.conv2d(source, weights, 1, "SAME"), name="attention_hidden")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(folder)
            builder.add_meta_graph_and_variables(session, ["serve"])
            builder.save()
    return folder


def slim_forward(v, images, depth=50, width=8):
    """tf-slim resnet_v1 (stride on the last unit's 3x3 conv, 1x1 max-pool shortcut there,
    conv2d_same stem, pool1 'SAME', BN eps 1e-5): (block3 at stride 32, block4)."""
    import tensorflow as tf

    root = f"resnet_v1_{depth}/"

    def bn(x, scope):
        g = v.get(scope + "BatchNorm/gamma", 1.0)
        return tf.nn.batch_normalization(
            x,
            v[scope + "BatchNorm/moving_mean"],
            v[scope + "BatchNorm/moving_variance"],
            v[scope + "BatchNorm/beta"],
            g,
            1e-5,
        )

    def conv_same(x, kernel, stride):  # slim conv2d_same: explicit symmetric padding, then VALID
        k = kernel.shape[0]
        if stride == 1:
            return tf.nn.conv2d(x, kernel, 1, "SAME")
        pad = k - 1
        x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]])
        return tf.nn.conv2d(x, kernel, stride, "VALID")

    x = tf.nn.relu(bn(conv_same(images, v[root + "conv1/weights"], 2), root + "conv1/"))
    x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    outputs = []
    for stage, unit, _, _, _ in units(depth, width):
        scope = f"{root}block{stage + 1}/unit_{unit + 1}/bottleneck_v1/"
        stride = 2 if stage < 3 and unit == STAGES[depth][stage] - 1 else 1
        if f"{scope}shortcut/weights" in v:
            shortcut = bn(
                tf.nn.conv2d(x, v[scope + "shortcut/weights"], stride, "VALID"), scope + "shortcut/"
            )
        else:
            shortcut = tf.nn.max_pool2d(x, 1, stride, "VALID")
        y = tf.nn.relu(
            bn(tf.nn.conv2d(x, v[scope + "conv1/weights"], 1, "VALID"), scope + "conv1/")
        )
        y = tf.nn.relu(bn(conv_same(y, v[scope + "conv2/weights"], stride), scope + "conv2/"))
        y = bn(tf.nn.conv2d(y, v[scope + "conv3/weights"], 1, "VALID"), scope + "conv3/")
        x = tf.nn.relu(y + shortcut)
        if unit == STAGES[depth][stage] - 1 and stage >= 2:
            outputs.append(x.numpy())
    return outputs


def tensorflow_or_skip():
    """TensorFlow for a test module (skipped without it), imported after torchvision's models
    (the other order crashes the test process)."""
    import pytest

    from tools.interop.official_tf.savedmodel import preload_torchvision

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    preload_torchvision()
    return pytest.importorskip("tensorflow")
