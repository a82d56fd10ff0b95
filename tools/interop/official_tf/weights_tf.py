"""Official DELG TensorFlow variables -> this framework's state dict (explicit, one rule per layer).

Two layouts (tools/convert_official.py tells which it found):
- TF2/Keras (``research/delf`` training code, its SavedModel exports and training checkpoints):
  object-path names, positional inside blocks (``backbone/l2a/variables/0`` = conv2a kernel; per
  block conv2a kernel, bias, bn2a gamma, beta, moving_mean, moving_variance, then 2b, 2c, the
  shortcut) or by attribute (``backbone/l2a/conv2a/kernel``); ``backbone/embedding_layer``,
  ``attention/variables/0..7``, ``autoencoder/variables/0..3``, ``cosine_weights``,
  ``attn_classification``. Every conv has a bias and BatchNorm eps is 1e-3: both fold into the
  BatchNorm statistics (fold_conv_bias, fold_bn_eps).
- TF1/tf-slim (the released archives): ``resnet_v1_{50,101}/block{k}/unit_{u}/bottleneck_v1/
  conv{1,2,3}|shortcut/{weights,BatchNorm/...}``, ``attention_block/attention/compute/conv{1,2}``;
  BatchNorm eps 1e-5, no conv biases before BatchNorm. The head variables (GeM, whitening,
  autoencoder) have no public names: slim_heads matches them by shape and scope.
Kernels are HWIO (convs) and [in, out] (dense); ours are OIHW and [out, in].
"""

import re

import numpy as np
import torch

from tools.interop.official_tf.savedmodel import ConversionError

KERAS_BN_EPS = 1e-3
SLIM_BN_EPS = 1e-5
_BN = ("gamma", "beta", "moving_mean", "moving_variance")
_CONV = ("kernel", "bias")
_KERAS_BLOCK_LAYERS = ("conv2a", "bn2a", "conv2b", "bn2b", "conv2c", "bn2c")
_KERAS_SHORTCUT = ("conv_shortcut", "bn_shortcut")
_KERAS_OURS = {"2a": "1", "2b": "2", "2c": "3"}
_SLOT = re.compile(
    r"(\.OPTIMIZER_SLOT|/(Momentum|Adam(_\d+)?|ExponentialMovingAverage|RMSProp(_\d+)?)$)"
)


def _order(layers):
    return [(layer, attr) for layer in layers for attr in _attrs(layer)]


def _attrs(layer):
    return _BN if layer.startswith("bn") else _CONV


KERAS_BLOCK_ORDER = _order(_KERAS_BLOCK_LAYERS + _KERAS_SHORTCUT)
KERAS_ATTENTION_ORDER = _order(("conv1", "bn_conv1", "conv2"))
KERAS_AUTOENCODER_ORDER = _order(("conv1", "conv2"))


# ------------------------------------------------------------------------------------------ folds
def conv_kernel(kernel):
    """TF conv kernel [kh, kw, in, out] -> ours [out, in, kh, kw]."""
    return np.transpose(kernel, (3, 2, 0, 1))


def dense_kernel(kernel):
    """TF dense kernel [in, out] (or a 1x1 conv [1, 1, in, out]) -> ours [out, in]."""
    return np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)


def fold_conv_bias(moving_mean, conv_bias):
    """BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b: the bias folds away."""
    return moving_mean - conv_bias


def fold_bn_eps(moving_variance, source_eps, target_eps):
    """(x - m) / sqrt(v + e_src) equals (x - m) / sqrt(v' + e_dst) with v' = v + e_src - e_dst."""
    return moving_variance + (source_eps - target_eps)


class Conversion:
    """Accumulates the converted tensors, the table of what went where, and the consumed names."""

    def __init__(self, variables, layout):
        self.variables = variables
        self.layout = layout
        self.state = {}
        self.rows = []  # (our key, source names, how)
        self.used = set()
        self.facts = {}

    def take(self, name):
        if name not in self.variables:
            raise ConversionError(f"required variable {name} is missing from the archive")
        self.used.add(name)
        return self.variables[name].astype(np.float32)

    def put(self, key, value, sources, how="copied"):
        self.state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        self.rows.append((key, ", ".join(sources), how))

    def unused(self):
        return {
            name: list(np.shape(value))
            for name, value in sorted(self.variables.items())
            if name not in self.used
        }

    def conv_bn(self, target, conv, bn, bn_eps, target_eps, conv_bias=None):
        """Conv kernel + BatchNorm (+ conv bias folded into the mean) into target conv / bn keys.
        conv, bn: {attr: variable name}; a missing gamma (slim scale=False) is 1."""
        self.put(
            f"{target[0]}.weight",
            conv_kernel(self.take(conv["kernel"])),
            [conv["kernel"]],
            "HWIO -> OIHW",
        )
        mean, var = self.take(bn["moving_mean"]), self.take(bn["moving_variance"])
        beta = self.take(bn["beta"])
        if bn.get("gamma") in self.variables:
            self.put(f"{target[1]}.weight", self.take(bn["gamma"]), [bn["gamma"]])
        else:
            self.put(f"{target[1]}.weight", np.ones_like(beta), [], "absent (scale=False): 1")
        self.put(f"{target[1]}.bias", beta, [bn["beta"]])
        if conv_bias is not None:
            bias_name = conv[conv_bias]
            self.put(
                f"{target[1]}.running_mean",
                fold_conv_bias(mean, self.take(bias_name)),
                [bn["moving_mean"], bias_name],
                "mean - conv bias",
            )
        else:
            self.put(f"{target[1]}.running_mean", mean, [bn["moving_mean"]])
        how = f"var + {bn_eps:g} - {target_eps:g}" if bn_eps != target_eps else "copied"
        self.put(
            f"{target[1]}.running_var",
            fold_bn_eps(var, bn_eps, target_eps),
            [bn["moving_variance"]],
            how,
        )


# ------------------------------------------------------------------------------------ TF2 / Keras
def _keras_key(name):
    """Canonical (part, ..., attr) of a Keras object path, or None (not a model variable)."""
    if _SLOT.search(name):
        return None
    parts = name.split("/")
    if parts[-1] == "cosine_weights":
        return ("cosine_weights",)
    for index, part in enumerate(parts):
        if part in ("backbone", "attention", "autoencoder", "attn_classification"):
            return _keras_scoped(part, parts[index + 1 :])
    return None


def _positional(rest, order):
    if len(rest) == 2 and rest[0] == "variables" and rest[1].isdigit():
        return order[int(rest[1])] if int(rest[1]) < len(order) else None
    return tuple(rest) if len(rest) == 2 else None


def _keras_scoped(scope, rest):
    if scope == "backbone":
        if len(rest) == 2 and rest[0] in ("conv1", "bn_conv1", "embedding_layer"):
            return ("stem" if rest[0] != "embedding_layer" else "embedding", *rest)
        match = re.fullmatch(r"l(\d)([a-z])", rest[0]) if rest else None
        layer_attr = _positional(rest[1:], KERAS_BLOCK_ORDER) if match else None
        if layer_attr:
            return ("block", int(match.group(1)) - 1, ord(match.group(2)) - 97, *layer_attr)
        return None
    if scope == "attn_classification":
        return ("attn_classification", rest[0]) if len(rest) == 1 else None
    order = KERAS_ATTENTION_ORDER if scope == "attention" else KERAS_AUTOENCODER_ORDER
    layer_attr = _positional(rest, order)
    return (scope, *layer_attr) if layer_attr else None


def keras_index(variables):
    """{canonical key: variable name}; two names for one key is an error naming both."""
    index = {}
    for name in variables:
        key = _keras_key(name)
        if key is None:
            continue
        if key in index:
            raise ConversionError(f"variables {index[key]} and {name} both read as {key}")
        index[key] = name
    return index


def convert_keras(conversion, target_eps):
    index = keras_index(conversion.variables)
    blocks = {}
    for key in index:
        if key[0] == "block":
            blocks.setdefault(key[1], set()).add(key[2])
    conversion.facts["blocks"] = tuple(len(blocks.get(stage, ())) for stage in (1, 2, 3, 4))
    _keras_backbone(conversion, index, blocks, target_eps)
    _dense(conversion, "whiten", _keras_names(index, ("embedding",), "embedding_layer"))
    attention = {
        layer: _keras_names(index, ("attention",), layer)
        for layer in ("conv1", "bn_conv1", "conv2")
    }
    _attention(conversion, attention, KERAS_BN_EPS, target_eps)
    for ours, layer in (("encoder", "conv1"), ("decoder", "conv2")):
        names = _keras_names(index, ("autoencoder",), layer)
        _conv_with_bias(conversion, f"local_head.autoencoder.{ours}", names)
    conversion.facts["decoder_kernel"] = index.get(("autoencoder", "conv2", "kernel"))
    _classifiers(
        conversion,
        index.get(("cosine_weights",)),
        {attr: index.get(("attn_classification", attr)) for attr in _CONV},
    )


def _keras_names(index, prefix, layer):
    """{attribute: archive variable} of one layer; a missing one as ``<prefix/layer/attr>``."""
    return {
        attr: index.get((*prefix, layer, attr), f"<{'/'.join(map(str, prefix))}/{layer}/{attr}>")
        for attr in _attrs(layer)
    }


def _keras_backbone(conversion, index, blocks, target_eps):
    """The stem and every bottleneck unit ({stage: unit numbers}), biases folded into BatchNorm."""

    def conv_bn(targets, prefix, conv, bn):
        conv_names, bn_names = _keras_names(index, prefix, conv), _keras_names(index, prefix, bn)
        conversion.conv_bn(targets, conv_names, bn_names, KERAS_BN_EPS, target_eps, "bias")

    conv_bn(("backbone.conv1", "backbone.bn1"), ("stem",), "conv1", "bn_conv1")
    for stage, units in sorted(blocks.items()):
        for unit in sorted(units):
            prefix, ours = ("block", stage, unit), f"backbone.layer{stage}.{unit}"
            for tf_suffix, our_suffix in _KERAS_OURS.items():
                targets = (f"{ours}.conv{our_suffix}", f"{ours}.bn{our_suffix}")
                conv_bn(targets, prefix, f"conv{tf_suffix}", f"bn{tf_suffix}")
            if (*prefix, "conv_shortcut", "kernel") in index:
                targets = (f"{ours}.downsample.0", f"{ours}.downsample.1")
                conv_bn(targets, prefix, "conv_shortcut", "bn_shortcut")


def _dense(conversion, target, names):
    _weight(conversion, target, names["kernel"], dense_kernel, "[in, out] -> [out, in]")
    _bias(conversion, target, names["bias"])


def _conv_with_bias(conversion, target, names):
    _weight(conversion, target, names["kernel"], conv_kernel, "HWIO -> OIHW")
    if names.get("bias") is None:
        shape = conversion.state[f"{target}.weight"].shape[0]
        conversion.put(f"{target}.bias", np.zeros(shape, np.float32), [], "absent: 0")
    else:
        _bias(conversion, target, names["bias"])


def _weight(conversion, target, kernel, to_ours, how):
    """target.weight from a TF kernel whose layout to_ours converts (`how` says how)."""
    conversion.put(f"{target}.weight", to_ours(conversion.take(kernel)), [kernel], how)


def _bias(conversion, target, bias):
    conversion.put(f"{target}.bias", conversion.take(bias), [bias])


def _attention(conversion, names, bn_eps, target_eps):
    """Attention conv1 (+ its bias, or 0), BN, conv2 + bias -> local_head.attention.*."""
    prefix = "local_head.attention"
    conv1 = dict(names["conv1"])
    bias = conv1.pop("bias", None)
    conversion.conv_bn(
        (f"{prefix}.conv1", f"{prefix}.bn"), conv1, names["bn_conv1"], bn_eps, target_eps
    )
    if bias is not None:
        _bias(conversion, f"{prefix}.conv1", bias)
    else:
        width = conversion.state[f"{prefix}.conv1.weight"].shape[0]
        conversion.put(
            f"{prefix}.conv1.bias",
            np.zeros(width, np.float32),
            [],
            "absent (conv before BatchNorm): 0",
        )
    _conv_with_bias(conversion, f"{prefix}.conv2", names["conv2"])
    conversion.facts["attention_kernel"] = conv1["kernel"]


def _classifiers(conversion, cosine, attention_fc):
    """Training checkpoints: cosine_weights [dim, classes] -> margin.weight [classes, dim];
    the attention classifier (dense [in, classes] or 1x1 conv) -> attention_classifier."""
    if cosine is not None:
        _weight(conversion, "margin", cosine, dense_kernel, "[dim, classes] -> [classes, dim]")
    if attention_fc.get("kernel") is not None:
        _dense(conversion, "attention_classifier", attention_fc)
