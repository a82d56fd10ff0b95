"""Layout options without TensorFlow: TF 'SAME' padding for any size, the stems' map sizes and
geometry, and the two attention wirings of the autoencoder head."""

import pytest
import torch
import torch.nn.functional as F

from core.config import ConfigError, load_cfg
from modeling import build_model
from modeling.local_head import AutoencoderLocalHead
from modeling.resnet import ResNet
from modeling.same_padding import same_padding


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 7, 2, (2, 3)),
        (225, 7, 2, (3, 3)),
        (112, 3, 2, (0, 1)),
        (113, 3, 2, (1, 1)),
        (5, 1, 2, (0, 0)),
        (1, 7, 2, (3, 3)),
    ],
)
def test_tf_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # ceil(n / s)


@pytest.mark.parametrize("stem, padding", [("torchvision", 145), ("keras", 142), ("slim", 143)])
def test_stem_geometry(stem, padding):
    cfg = load_cfg("", ["MODEL.NUM_CLASSES", "3", "RESNET.STEM", stem])
    with torch.device("meta"):
        model = build_model(cfg)
    assert tuple(model.local_geometry) == (291, 32, padding)


@pytest.mark.parametrize("size", [64, 67, 97])
def test_stem_map_sizes_follow_tf(size):
    """keras: conv 'same' gives ceil(n / 2), pool 'valid' floor((m - 3) / 2) + 1; slim: conv
    floor((n - 1) / 2) + 1, pool 'SAME' ceil(m / 2)."""
    images = torch.randn(1, 3, size, size)
    for stem, expected in (
        ("keras", (-(-size // 2) - 3) // 2 + 1),
        ("slim", -(-((size - 1) // 2 + 1) // 2)),
        ("torchvision", ((size - 1) // 2 + 1 - 1) // 2 + 1),
    ):
        backbone = ResNet(18, width_per_group=8, stem=stem).eval()
        x = backbone.relu(backbone.bn1(backbone.conv1(backbone.conv1_pad(images))))
        assert backbone.maxpool(backbone.maxpool_pad(x)).shape[-1] == expected, stem


def test_slim_pool_pads_with_minus_infinity():
    backbone = ResNet(18, width_per_group=8, stem="slim")
    x = -torch.ones(1, 1, 4, 4)  # negative everywhere: a zero pad would win the max
    assert backbone.maxpool(backbone.maxpool_pad(x)).max().item() == -1.0


def test_attention_wirings():
    torch.manual_seed(0)
    head = AutoencoderLocalHead(16, 8, 4, attention_input="decoder").eval()
    block3 = torch.rand(2, 16, 5, 6)
    with torch.no_grad():
        out = head(block3)
        descriptors, reconstruction = head.autoencoder(block3)
        attention = head.attention(reconstruction)
        torch.testing.assert_close(out["attention"], attention)
        pooled = (attention * F.normalize(block3, dim=1)).mean(dim=(2, 3))
        torch.testing.assert_close(out["pooled"], pooled)
        torch.testing.assert_close(head.extract(block3), (attention, descriptors))
        head.attention_input = "block3"
        other = head(block3)
        torch.testing.assert_close(other["attention"], head.attention(block3))
        pooled = (other["attention"] * F.normalize(reconstruction, dim=1)).mean(dim=(2, 3))
        torch.testing.assert_close(other["pooled"], pooled)
    assert not torch.allclose(out["attention"], other["attention"])


def test_layout_config_errors():
    for key, value in (("RESNET.STEM", "caffe"), ("MODEL.LOCAL.ATTENTION_INPUT", "block4")):
        cfg = load_cfg("", ["MODEL.NUM_CLASSES", "3", key, value])
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            build_model(cfg)


def test_presets_use_the_official_wiring():
    from tests.tiny import REPO

    for preset in sorted((REPO / "configs").glob("*/*.yaml")):
        cfg = load_cfg(str(preset))
        if cfg.MODEL.LOCAL.TYPE == "autoencoder" and preset.parent.name != "official":
            assert cfg.MODEL.LOCAL.ATTENTION_INPUT == "decoder", preset
    paper = load_cfg(str(REPO / "configs" / "delg" / "r50_delg_gldv2clean_8gpu.yaml"))
    assert paper.RESNET.STEM == "torchvision"  # what its ImageNet initialisation was trained with
