"""Output shapes, the training/extraction contract, config checks, freezing, channels_last and
autocast."""

import math

import pytest
import torch

from core.config import ConfigError
from modeling import build_loss, build_model
from tests.small_models import small_cfg, tiny_cfg


@pytest.mark.parametrize("depth", [18, 50, 101])
@pytest.mark.parametrize("stride", [16, 32])
def test_output_shapes_at_odd_sizes(depth, stride):
    """ResNet-18 computes; the deeper nets run on the meta device, which gives every shape without
    arithmetic."""
    block = "basic_transform" if depth == 18 else "bottleneck_transform"
    cfg = small_cfg(
        "MODEL.DEPTH", str(depth), "RESNET.TRANS_FUN", block, "MODEL.LOCAL_STRIDE", str(stride)
    )
    device = torch.device("cpu" if depth == 18 else "meta")
    with device:
        model = build_model(cfg)
        height, width = 67, 45
        images, labels = torch.randn(2, 3, height, width), torch.tensor([0, 4])
    h, w = math.ceil(height / stride), math.ceil(width / stride)
    block3_channels = 256 if depth == 18 else 1024

    outputs = model(images, labels)
    assert outputs["global_logits"].shape == (2, 5)
    assert outputs["attention_logits"].shape == (2, 5)
    assert outputs["embedding"].shape == (2, 16)
    assert outputs["attention"].shape == (2, 1, h, w)
    assert outputs["reconstruction_loss"].shape == ()

    model.eval()
    with torch.inference_mode():
        out = model.extract(images)
    assert out["global"].shape == (2, 16)
    assert out["attention"].shape == (2, 1, h, w)
    assert out["local"].shape == (2, 128, h, w)
    assert model.backbone.block3_channels == block3_channels
    assert (model.global_dim, model.local_descriptor_dim) == (16, 128)
    assert model.local_geometry.stride == stride


def test_half_width_halves_every_stage():
    model = build_model(small_cfg("RESNET.WIDTH_PER_GROUP", "32"))
    assert model.backbone.conv1.out_channels == 32
    assert [
        layer[-1].bn3.num_features
        for layer in (
            model.backbone.layer1,
            model.backbone.layer2,
            model.backbone.layer3,
            model.backbone.layer4,
        )
    ] == [128, 256, 512, 1024]


def test_extract_runs_only_what_is_asked():
    model = build_model(tiny_cfg()).eval()
    calls = []
    model.backbone.layer4.register_forward_hook(lambda *args: calls.append("layer4"))
    model.local_head.register_forward_hook(lambda *args: calls.append("local_head"))
    model.local_head.attention.register_forward_hook(lambda *args: calls.append("attention"))
    images = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        local_only = model.extract(images, want_global=False)
        assert set(local_only) == {"attention", "local"} and calls == ["attention"]
        calls.clear()
        global_only = model.extract(images, want_local=False)
        assert set(global_only) == {"global"} and calls == ["layer4"]
        both = model.extract(images)
    torch.testing.assert_close(both["global"], global_only["global"])
    torch.testing.assert_close(both["local"], local_only["local"])


def test_extract_matches_training_forward_parts():
    model = build_model(tiny_cfg()).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outputs, out = model(images), model.extract(images)
    torch.testing.assert_close(out["global"], outputs["embedding"])
    torch.testing.assert_close(out["attention"], outputs["attention"])


def test_loss_is_the_weighted_sum_of_its_parts():
    cfg = tiny_cfg(
        "MODEL.LOSSES.ATTENTION_WEIGHT", "0.5", "MODEL.LOSSES.RECONSTRUCTION_WEIGHT", "3.0"
    )
    model, loss_fn = build_model(cfg), build_loss(cfg)
    labels = torch.tensor([1, 2])
    outputs = model(torch.randn(2, 3, 64, 64), labels)
    total, parts = loss_fn(outputs, labels)
    expected = parts["global"] + 0.5 * parts["attention"] + 3.0 * parts["reconstruction"]
    torch.testing.assert_close(total.detach(), expected)
    torch.testing.assert_close(
        parts["global"], torch.nn.functional.cross_entropy(outputs["global_logits"], labels)
    )
    assert parts["reconstruction"] > 0 and not parts["global"].requires_grad


def test_seed_local_head_has_no_reconstruction():
    model = build_model(tiny_cfg("MODEL.LOCAL.TYPE", "seed", "MODEL.LOCAL.DESCRIPTOR_DIM", "16"))
    outputs = model(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    assert outputs["reconstruction_loss"].item() == 0.0
    assert model.local_descriptor_dim == 16


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["MODEL.NUM_CLASSES", "0"], "MODEL.NUM_CLASSES"),
        (["MODEL.HEADS.IN_FEAT", "2048"], "MODEL.HEADS.IN_FEAT"),
        (["RESNET.TRANS_FUN", "bottleneck_transform"], "RESNET.TRANS_FUN"),
        (["MODEL.HEADS.MARGIN_TYPE", "sphereface"], "MODEL.HEADS.MARGIN_TYPE"),
        (["MODEL.LOCAL.TYPE", "seed"], "MODEL.LOCAL.DESCRIPTOR_DIM"),
        (["MODEL.LOCAL_STRIDE", "8"], "MODEL.LOCAL_STRIDE"),
    ],
)
def test_config_mistakes_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        build_model(tiny_cfg(*overrides))


def test_in_feat_matching_the_backbone_is_accepted():
    assert build_model(tiny_cfg("MODEL.HEADS.IN_FEAT", "256")).whiten.in_features == 256


def test_freeze_bn_and_stem():
    model = build_model(tiny_cfg("MODEL.FREEZE_BN", "True", "MODEL.FREEZE_STEM", "True")).train()
    backbone = model.backbone
    assert not backbone.conv1.weight.requires_grad
    assert not any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.local_head.attention.bn.training
    before = backbone.layer2[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64), torch.tensor([0, 1]))
    torch.testing.assert_close(backbone.layer2[0].bn1.running_mean, before)
    assert backbone.layer2[0].conv1.weight.requires_grad


def test_zero_init_final_gamma():
    model = build_model(tiny_cfg("BN.ZERO_INIT_FINAL_GAMMA", "True"))
    assert model.backbone.layer1[0].bn2.weight.abs().sum() == 0
    assert model.backbone.layer1[0].bn1.weight.abs().sum() > 0


def test_channels_last_and_bfloat16_autocast():
    cfg = tiny_cfg()
    model = build_model(cfg).to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last)
    labels = torch.tensor([0, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(images, labels)
        loss, _ = build_loss(cfg)(outputs, labels)
    loss.backward()
    assert outputs["global_logits"].dtype == torch.float32  # margin arithmetic stays in float32
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.extract(images)
    assert (
        torch.isfinite(out["global"].float()).all() and torch.isfinite(out["local"].float()).all()
    )
