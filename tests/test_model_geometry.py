"""Receptive field, stride and padding from the layer definitions, checked against gradients; FLOP
counts."""

import pytest
import torch
import torch.nn as nn
import torchvision

from core.config import load_cfg
from modeling import build_model
from modeling.complexity import complexity_report, count_flops, count_parameters, format_complexity
from modeling.geometry import LocalGeometry, compose_geometry
from modeling.resnet import ResNet


@pytest.mark.parametrize(
    "stride_1x1, expected_rf, expected_padding", [(True, 291, 145), (False, 267, 133)]
)
@pytest.mark.parametrize("stride", [16, 32])
def test_resnet50_block3_geometry(stride_1x1, expected_rf, expected_padding, stride):
    cfg = load_cfg(
        "",
        [
            "MODEL.NUM_CLASSES",
            "5",
            "RESNET.STRIDE_1X1",
            str(stride_1x1),
            "MODEL.LOCAL_STRIDE",
            str(stride),
        ],
    )
    with torch.device("meta"):
        model = build_model(cfg)
    assert model.local_geometry == LocalGeometry(expected_rf, stride, expected_padding)


def test_compose_geometry_of_a_plain_stack():
    layers = [
        nn.Conv2d(1, 1, 7, stride=2, padding=3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        nn.Conv2d(1, 1, 3, dilation=2, padding=2),
    ]
    assert compose_geometry(layers) == LocalGeometry(7 + 2 * 2 + 4 * 4, 4, 3 + 2 + 2 * 4)


def positive_backbone(depth, stride_1x1, local_stride):
    """An eighth-width backbone whose every path adds positively: positive weights, identity BN,
    average stem pool.

    Then the input pixels that influence a local-map cell are exactly its receptive field (the
    max-pool of the stem is swapped for an average pool of the same size, which spreads gradients to
    its whole window).
    """
    backbone = ResNet(
        depth, groups=1, width_per_group=8, stride_1x1=stride_1x1, local_stride=local_stride
    )
    backbone.maxpool = nn.AvgPool2d(3, stride=2, padding=1)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.rand_like(module.weight) / fan_in + 0.1 / fan_in)
    return backbone.double().eval()


@pytest.mark.parametrize(
    "depth, stride_1x1, local_stride, size",
    [(18, False, 16, 256), (18, False, 32, 256), (50, True, 16, 320), (50, False, 32, 320)],
)
def test_geometry_matches_the_gradient_footprint(depth, stride_1x1, local_stride, size):
    backbone = positive_backbone(depth, stride_1x1, local_stride)
    geometry = compose_geometry(backbone.local_path_modules())
    # rows are checked; a narrow image keeps the cost down (columns cut by the border still reach
    # every row)
    images = (torch.rand(1, 3, size, 48, dtype=torch.float64) + 0.5).requires_grad_(True)
    local_map, _ = backbone(images)
    cell = local_map.shape[-2] // 2
    local_map[0, :, cell, local_map.shape[-1] // 2].sum().backward()
    rows = images.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten()
    start = geometry.stride * cell - geometry.padding
    assert start > 0 and start + geometry.receptive_field < size, (
        "the footprint must not touch the border"
    )
    assert (rows.min().item(), rows.max().item()) == (start, start + geometry.receptive_field - 1)


def test_resnet50_flops_and_parameters_match_torchvision():
    with torch.device("meta"):
        ours = ResNet(50)
        reference = torchvision.models.resnet50(weights=None)
    fc = reference.fc
    assert (
        count_parameters(ours)["total"]
        == sum(p.numel() for p in reference.parameters()) - fc.weight.numel() - fc.bias.numel()
    )
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(1, 3, 224, 224, device="meta")
    with FlopCounterMode(display=False) as counter:
        ours(images)
    ours_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        reference(images)
    assert ours_flops == counter.get_total_flops() - 2 * fc.in_features * fc.out_features
    assert abs(ours_flops / 2 / 1e9 - 4.1) < 0.05  # the published 4.1 GMACs


def test_complexity_report_of_a_real_model():
    cfg = load_cfg("configs/synthetic/delg_tiny_cpu.yaml", ["MODEL.NUM_CLASSES", "7"])
    model = build_model(cfg).train()
    report = complexity_report(model, 64, 48)
    assert model.training
    assert report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert (
        report["flops"] > report["flops_global"] > 0 and report["flops"] > report["flops_local"] > 0
    )
    assert count_flops(model, 128, 96) > 3.5 * report["flops"]  # convolutions scale with the area
    assert "GFLOPs" in format_complexity(report)


def test_model_info_describes_a_preset_without_building_weights(capsys):
    from tests.tiny import REPO
    from tools.model_info import main

    preset = str(REPO / "configs" / "delg" / "r50_delg_gldv2clean_8gpu.yaml")
    assert main(["--cfg", preset, "--size", "224"]) == 0
    text = capsys.readouterr().out
    assert "DELG resnet-50, 2048-d global, 128-d local (autoencoder), 81313 classes" in text
    assert "backbone 23.51M" in text  # torchvision's ResNet-50 without its fc
    assert "local features: receptive field 291 px, stride 32, padding 145" in text
    assert main(["--cfg", preset, "--size", "-1"]) == 2
