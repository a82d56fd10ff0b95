"""tools/convert_official.py: every archive variable lands where it should (one test per fold),
the slim head rule, the graph facts of TF1 archives, the written files and the one-line errors."""

import os

import numpy as np
import pytest
import torch

from tests import tf_archives

tf = tf_archives.tensorflow_or_skip()

from tools.interop.official_tf.convert import convert_archive  # noqa: E402
from tools.interop.official_tf.savedmodel import ConversionError  # noqa: E402
from tools.interop.official_tf.weights_tf import KERAS_BN_EPS  # noqa: E402

OUR_EPS = 1e-5
CLASSES = 5


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory):
    variables = tf_archives.keras_variables(classes=CLASSES, seed=1)
    folder = tmp_path_factory.mktemp("keras") / "r50delg_gld_20200814"
    tf_archives.save_keras(str(folder), variables)
    return variables, convert_archive(str(folder))


@pytest.fixture(scope="module")
def slim_case(tmp_path_factory):
    variables = tf_archives.slim_variables(seed=2, gamma=False)
    prefix = str(tmp_path_factory.mktemp("slim") / "model.ckpt")
    tf_archives.save_checkpoint(prefix, variables)
    return variables, convert_archive(prefix)


def ours(converted, key):
    return converted.state[key].numpy()


def keras_block(variables, block, index):
    return variables[f"_model/backbone/{block}/variables/{index}"]


def test_keras_conv_kernels_are_transposed_hwio_to_oihw(keras_case):
    variables, converted = keras_case
    kernel = keras_block(variables, "l3b", 6)  # conv2b kernel of the second unit of stage 3
    assert np.array_equal(
        ours(converted, "backbone.layer2.1.conv2.weight"), kernel.transpose(3, 2, 0, 1)
    )
    shortcut = keras_block(variables, "l4a", 18)
    assert np.array_equal(
        ours(converted, "backbone.layer3.0.downsample.0.weight")[:, :, 0, 0], shortcut[0, 0].T
    )


def test_keras_conv_bias_folds_into_the_running_mean(keras_case):
    variables, converted = keras_case
    mean, bias = keras_block(variables, "l5c", 16), keras_block(variables, "l5c", 13)
    assert np.allclose(ours(converted, "backbone.layer4.2.bn3.running_mean"), mean - bias)
    stem_mean = variables["_model/backbone/bn_conv1/moving_mean"]
    stem_bias = variables["_model/backbone/conv1/bias"]
    assert np.allclose(ours(converted, "backbone.bn1.running_mean"), stem_mean - stem_bias)


def test_keras_bn_epsilon_folds_into_the_running_variance(keras_case):
    variables, converted = keras_case
    variance = keras_block(variables, "l2a", 5)  # bn2a moving_variance
    folded = ours(converted, "backbone.layer1.0.bn1.running_var")
    assert np.allclose(folded, variance + KERAS_BN_EPS - OUR_EPS)
    # the folded statistics normalise exactly as Keras does
    x = np.linspace(-2, 2, variance.size).astype(np.float32)
    mean = ours(converted, "backbone.layer1.0.bn1.running_mean")
    keras_mean = keras_block(variables, "l2a", 4) - keras_block(variables, "l2a", 1)
    assert np.allclose(
        (x - mean) / np.sqrt(folded + OUR_EPS),
        (x - keras_mean) / np.sqrt(variance + KERAS_BN_EPS),
        rtol=1e-6,
    )


def test_keras_gamma_and_beta_copy_unchanged(keras_case):
    variables, converted = keras_case
    assert np.array_equal(
        ours(converted, "backbone.layer3.5.bn2.weight"), keras_block(variables, "l4f", 8)
    )
    assert np.array_equal(
        ours(converted, "backbone.layer3.5.bn2.bias"), keras_block(variables, "l4f", 9)
    )


def test_keras_dense_kernels_are_transposed(keras_case):
    variables, converted = keras_case
    kernel = variables["_model/backbone/embedding_layer/kernel"]
    assert np.array_equal(ours(converted, "whiten.weight"), kernel.T)
    assert np.array_equal(
        ours(converted, "whiten.bias"), variables["_model/backbone/embedding_layer/bias"]
    )


def test_keras_cosine_weights_become_the_margin_head(keras_case):
    variables, converted = keras_case
    cosine = variables["_model/cosine_weights"]  # [dim, classes]
    assert ours(converted, "margin.weight").shape == (CLASSES, cosine.shape[0])
    assert np.array_equal(ours(converted, "margin.weight"), cosine.T)
    attn_fc = variables["_model/attn_classification/kernel"]
    assert np.array_equal(ours(converted, "attention_classifier.weight"), attn_fc.T)
    assert converted.settings["num_classes"] == CLASSES


def test_keras_attention_and_autoencoder_positional_variables(keras_case):
    variables, converted = keras_case
    attention = [variables[f"_model/attention/variables/{i}"] for i in range(8)]
    assert np.array_equal(ours(converted, "local_head.attention.conv1.bias"), attention[1])
    assert np.allclose(
        ours(converted, "local_head.attention.bn.running_var"),
        attention[5] + KERAS_BN_EPS - OUR_EPS,
    )
    assert np.array_equal(ours(converted, "local_head.attention.bn.running_mean"), attention[4])
    assert np.array_equal(ours(converted, "local_head.attention.conv2.bias"), attention[7])
    decoder = variables["_model/autoencoder/variables/2"]
    assert np.array_equal(
        ours(converted, "local_head.autoencoder.decoder.weight")[:, :, 0, 0], decoder[0, 0].T
    )


def test_keras_every_variable_is_mapped_or_listed(keras_case):
    variables, converted = keras_case
    text = "\n".join(converted.lines)
    assert "TF2/Keras" in text and "release r50delg_gld_20200814" in text
    mapped = set()
    for line in converted.lines:
        if " <- " in line:
            sources = line.split(" <- ")[1].rsplit(" (", 1)[0]
            mapped.update(sources.split(", "))
    unused = [line.split()[0] for line in text.split("unused (")[1].splitlines()[1:]]
    assert unused and all(name.endswith("save_counter") for name in unused)
    assert set(variables) <= mapped and not mapped & set(unused)
    assert converted.settings["threshold"] == 175.0  # the R50 GLDv1 release


def test_slim_names_map_and_missing_gamma_is_one(slim_case):
    variables, converted = slim_case
    root = "resnet_v1_50/block3/unit_6/bottleneck_v1/"
    assert np.array_equal(
        ours(converted, "backbone.layer3.5.conv3.weight"),
        variables[root + "conv3/weights"].transpose(3, 2, 0, 1),
    )
    assert np.array_equal(
        ours(converted, "backbone.layer3.5.bn3.running_var"),
        variables[root + "conv3/BatchNorm/moving_variance"],
    )  # eps 1e-5 both
    assert np.array_equal(ours(converted, "backbone.layer3.5.bn3.weight"), np.ones(128))
    shortcut = "resnet_v1_50/block2/unit_1/bottleneck_v1/shortcut/"
    assert np.array_equal(
        ours(converted, "backbone.layer2.0.downsample.1.bias"),
        variables[shortcut + "BatchNorm/beta"],
    )
    assert not np.any(ours(converted, "local_head.attention.conv1.bias"))
    assert "backbone.layer1.2.downsample.0.weight" not in converted.state


def test_slim_heads_by_shape_and_scope(slim_case):
    variables, converted = slim_case
    names = tf_archives.SLIM_HEAD_NAMES
    assert np.array_equal(ours(converted, "whiten.weight"), variables[names["whitening"][0]].T)
    assert np.array_equal(
        ours(converted, "local_head.autoencoder.encoder.bias"), variables[names["encoder"][1]]
    )
    assert np.array_equal(
        ours(converted, "local_head.autoencoder.decoder.weight")[:, :, 0, 0],
        variables[names["decoder"][0]][0, 0].T,
    )
    text = "\n".join(converted.lines)
    assert "TF1/tf-slim" in text and "global_step []" in text
    assert f"whiten.weight <- {names['whitening'][0]}" in text
    assert "release unknown from the path" in text and converted.settings["threshold"] == 454.6


def test_slim_head_rule_refuses_ambiguity(tmp_path):
    variables = tf_archives.slim_variables(seed=4)
    variables["delg/other/weights"] = variables["delg/whitening/weights"].copy()
    prefix = tf_archives.save_checkpoint(str(tmp_path / "model.ckpt"), variables)
    with pytest.raises(ConversionError, match="whitening kernel.*delg/other/weights.*delg/whit"):
        convert_archive(prefix)


def test_a_shape_mismatch_names_the_variable(tmp_path):
    variables = tf_archives.slim_variables(seed=5)
    name = "resnet_v1_50/block4/unit_2/bottleneck_v1/conv2/weights"
    variables[name] = variables[name][:, :, :, :-1]
    prefix = tf_archives.save_checkpoint(str(tmp_path / "model.ckpt"), variables)
    with pytest.raises(ConversionError, match=name):
        convert_archive(prefix)


def test_a_missing_required_variable_is_named(tmp_path):
    variables = tf_archives.slim_variables(seed=6)
    name = "attention_block/attention/compute/conv2/biases"
    del variables[name]
    prefix = tf_archives.save_checkpoint(str(tmp_path / "model.ckpt"), variables)
    with pytest.raises(ConversionError, match=f"required variable {name} is missing"):
        convert_archive(prefix)


@pytest.mark.parametrize(
    "wiring, half_pixel, resize",
    [("block3", False, "bilinear_legacy"), ("decoder", True, "bilinear")],
)
def test_tf1_graph_tells_the_wiring_and_the_resize(tmp_path, wiring, half_pixel, resize):
    from tools.convert_official import main

    variables = tf_archives.slim_variables(seed=7)
    folder = tmp_path / "r101delg_gldv2clean_20200914"
    tf_archives.save_slim(str(folder), variables, wiring=wiring, half_pixel=half_pixel)
    assert (
        main([str(folder), str(tmp_path / "out"), "--release", "r50delg_gldv2clean_20200914"]) == 0
    )
    import yaml

    values = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert values["MODEL"]["LOCAL"]["ATTENTION_INPUT"] == wiring
    assert values["EXTRACT"]["RESIZE"] == resize
    assert values["RESNET"]["STEM"] == "slim" and values["EXTRACT"]["ATTENTION_THRESHOLD"] == 454.6


def test_written_checkpoint_and_config_load_for_extraction(tmp_path, slim_case, capsys):
    from core.config import load_cfg
    from core.weights import load_weights
    from modeling import build_inference_model
    from tools.convert_official import main

    variables, _ = slim_case
    prefix = tf_archives.save_checkpoint(str(tmp_path / "r50delg_gld_20200814.ckpt"), variables)
    with pytest.raises(ConversionError, match="R101 release"):
        convert_archive(prefix, "r101delg_gld_20200814")
    out = str(tmp_path / "converted")
    assert main([prefix, out]) == 0
    printed = capsys.readouterr().out
    assert "converted (ours <- archive, how)" in printed and "wrote" in printed
    cfg = load_cfg(out + ".yaml", ["TEST.WEIGHTS", out + ".pth"])
    assert cfg.EXTRACT.SIZE_ROUNDING == "half_even" and cfg.EXTRACT.NMS_IOU == 1.0
    assert cfg.EXTRACT.LOCAL_SCALES[1] == 0.35355338 and cfg.INPUT.MEAN[0] == 128 / 255
    model = build_inference_model(cfg)
    report = load_weights(model, cfg.TEST.WEIGHTS, log=lambda _: None, strict=True)
    assert report.source == "ours" and not report.unexpected


# ----------------------------------------------------------------- errors: exit 2, nothing written
def run_and_expect_error(capsys, tmp_path, source, expected):
    from tools.convert_official import main

    out = tmp_path / "result"
    assert main([str(source), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not any(name.startswith("result") for name in os.listdir(tmp_path))


def test_missing_folder(capsys, tmp_path):
    run_and_expect_error(capsys, tmp_path, tmp_path / "nothing_here", "no such SavedModel")


def test_a_savedmodel_that_is_not_delg(capsys, tmp_path):
    module = tf.Module()
    module.weights_of_something = tf.Variable(tf.zeros([3, 3]))
    tf.saved_model.save(module, str(tmp_path / "other"))
    run_and_expect_error(capsys, tmp_path, tmp_path / "other", "not a DELG model")


def test_a_truncated_variables_file(capsys, tmp_path):
    variables = tf_archives.slim_variables(seed=8)
    folder = tmp_path / "archive"
    tf_archives.save_slim(str(folder), variables)
    data = next((folder / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    run_and_expect_error(capsys, tmp_path, folder, "truncated or corrupt")


def test_the_conversion_needs_tensorflow_only_when_it_runs(monkeypatch):
    import builtins

    from tools.interop.official_tf import savedmodel as tf_savedmodel

    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(ConversionError, match="requirements-convert.txt"):
        tf_savedmodel.import_tensorflow()
    assert torch.is_tensor(torch.zeros(1))  # the framework itself imports without it


def test_a_tf2_training_checkpoint_folder_converts_for_fine_tuning(tmp_path, capsys):
    """tf.train.CheckpointManager layout: model/... object paths, optimizer slots, a `checkpoint`
    state file; the classifiers come along (cosine_weights transposed) and TRAIN.WEIGHTS loads."""
    from core.config import load_cfg
    from core.weights import load_weights
    from modeling import build_model
    from tools.convert_official import main

    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    variables = {
        name.replace("_model/", "model/", 1) + suffix: value
        for name, value in tf_archives.keras_variables(classes=CLASSES, seed=9).items()
    }
    slot = "model/backbone/l2a/variables/0/.OPTIMIZER_SLOT/optimizer/momentum" + suffix
    variables[slot] = np.zeros((1, 1, 8, 8), np.float32)
    variables["optimizer/iter" + suffix] = np.array(7, np.int64)
    folder = tmp_path / "train_logs"
    folder.mkdir()
    tf_archives.save_checkpoint(str(folder / "delf_tf2-ckpt-7"), variables)
    (folder / "checkpoint").write_text('model_checkpoint_path: "delf_tf2-ckpt-7"\n')
    out = str(tmp_path / "finetune")
    assert main([str(folder), out]) == 0
    printed = capsys.readouterr().out
    assert "no graph (a checkpoint): attention input decoder" in printed
    assert slot.removesuffix(suffix) + " [1, 1, 8, 8]" in printed
    cfg = load_cfg(out + ".yaml")
    assert cfg.MODEL.NUM_CLASSES == CLASSES and cfg.RESNET.STEM == "keras"
    model = build_model(cfg)
    report = load_weights(model, out + ".pth", log=lambda _: None, strict=True)
    assert not report.missing or all(k.endswith("num_batches_tracked") for k in report.missing)
    cosine = variables["model/cosine_weights" + suffix]
    assert torch.equal(model.margin.weight.detach(), torch.from_numpy(cosine.T))
