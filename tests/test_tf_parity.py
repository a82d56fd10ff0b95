"""Converted official weights compute what TensorFlow computes with the official layer semantics.

- TF2/Keras: block3 (after the stride-2 subsampling), block4, global embedding, attention and local
  descriptors of a converted random archive against a TF forward pass written from the Keras layer
  definitions (tests/tf_archives.py), within 1e-4 relative, on an odd and an even image size.
- TF1/tf-slim (issue fact 7): slim's layout (stride on the last unit's 3x3 conv with a 1x1 max-pool
  shortcut, pool1 'SAME') equals ours with the stride on the 1x1 conv, the block3 1x1 max-pool and
  RESNET.STEM slim.
"""

import numpy as np
import pytest
import torch

from tests import tf_archives

tf = tf_archives.tensorflow_or_skip()


def relative_error(reference, ours):
    ours = ours.detach().numpy()
    if ours.ndim == 4:
        ours = ours.transpose(0, 2, 3, 1)
    assert reference.shape == ours.shape
    scale = np.abs(reference).max()
    assert scale > 0, "a reference that is all zero would test nothing"
    return np.abs(reference - ours).max() / scale


def converted_model(folder):
    from modeling import build_inference_model
    from tools.interop.official_tf.convert import convert_archive
    from tools.interop.official_tf.official_yaml import config_of

    converted = convert_archive(str(folder))
    model = build_inference_model(config_of(converted.settings)).eval()
    model.load_state_dict(converted.state, strict=False)
    return model, converted


@pytest.fixture(scope="module")
def keras_archive(tmp_path_factory):
    variables = tf_archives.keras_variables(seed=3)
    # keep the attention logits in softplus' sensitive range on these random weights
    variables["_model/attention/variables/6"] *= 0.05
    folder = tmp_path_factory.mktemp("keras") / "r50delg_gldv2clean_20200914"
    return variables, tf_archives.save_keras(str(folder), variables)


@pytest.mark.parametrize("height, width", [(67, 90), (64, 96)])
def test_keras_forward_matches_tensorflow(keras_archive, height, width):
    variables, folder = keras_archive
    model, converted = converted_model(folder)
    assert converted.settings["attention_input"] == "decoder"
    images = np.random.default_rng(height).standard_normal((1, height, width, 3)).astype(np.float32)
    reference = tf_archives.keras_forward(variables, tf.constant(images))
    with torch.no_grad():
        local, block4 = model.backbone(torch.from_numpy(images).permute(0, 3, 1, 2))
        attention, descriptors = model.local_head.extract(local)
        ours = [local, block4, model.embed(block4), attention, descriptors]
    names = ["block3", "block4", "embedding", "attention", "descriptors"]
    errors = {name: relative_error(r, o) for name, r, o in zip(names, reference, ours)}
    assert max(errors.values()) < 1e-4, errors


def test_block3_wiring_differs_from_the_official_one(keras_archive):
    """The attention input matters: the TF1 wiring gives other attention on the same weights."""
    variables, folder = keras_archive
    model, _ = converted_model(folder)
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        local, _ = model.backbone(images)
        official, _ = model.local_head.extract(local)
        model.local_head.attention_input = "block3"
        other, _ = model.local_head.extract(local)
    assert not torch.allclose(official, other, rtol=1e-2)


@pytest.fixture(scope="module")
def slim_archives(tmp_path_factory):
    archives = {}
    for depth in (50, 101):
        variables = tf_archives.slim_variables(depth=depth, seed=depth)
        prefix = str(tmp_path_factory.mktemp(f"slim{depth}") / "model.ckpt")
        archives[depth] = variables, tf_archives.save_checkpoint(prefix, variables)
    return archives


@pytest.mark.parametrize("depth, height, width", [(50, 64, 96), (50, 71, 53), (101, 40, 40)])
def test_slim_layout_equals_ours_with_the_slim_stem(slim_archives, depth, height, width):
    variables, prefix = slim_archives[depth]
    model, converted = converted_model(prefix)
    assert converted.settings["depth"] == depth and converted.settings["layout"] == "slim"
    images = np.random.default_rng(width).standard_normal((1, height, width, 3)).astype(np.float32)
    block3, block4 = tf_archives.slim_forward(variables, tf.constant(images), depth=depth)
    with torch.no_grad():
        local, ours4 = model.backbone(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert relative_error(block3, local) < 1e-4
    assert relative_error(block4, ours4) < 1e-4
    model.backbone.maxpool_pad = torch.nn.Identity()  # without pool1's TF 'SAME' it differs
    model.backbone.maxpool.padding = 1
    with torch.no_grad():
        shifted, _ = model.backbone(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert shifted.shape != local.shape or relative_error(block3, shifted) > 1e-2
