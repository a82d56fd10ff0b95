"""The backbone contract (modeling/backbone.py): a backbone written and registered in this file
trains through the real training step and extracts through the real pyramid; our ResNet's
analytical geometry equals the one measured from gradients."""


import pytest
import torch
import torch.nn as nn

from core.step import train_step
from modeling import build_loss, build_model
from modeling.backbone import Backbone, MapSpec
from modeling.geometry import LocalGeometry, compose_geometry, geometry_probe, measured_geometry
from modeling.registry import BACKBONES
from tests.small_models import cpu_step_run, tiny_cfg
from tools.extraction.pyramid import ExtractionSettings, extract_image


class ToyBackbone(Backbone):
    """A 4x4/4 conv (shared, local map: stride 4) and a 2x2/2 conv on it (global map: stride 8)."""

    def __init__(self, channels=8):
        super().__init__()
        self.patchify = nn.Conv2d(3, channels, 4, stride=4)
        self.reduce = nn.Conv2d(channels, 2 * channels, 2, stride=2)
        self.channels = channels

    @classmethod
    def from_config(cls, cfg):
        return cls()

    def forward_shared(self, images):
        return torch.relu(self.patchify(images))

    def local_map(self, shared):
        return shared

    def global_map(self, shared):
        return torch.relu(self.reduce(shared))

    def output_shape(self):
        return {"local": MapSpec(self.channels, 4), "global": MapSpec(2 * self.channels, 8)}

    def local_geometry(self):
        return LocalGeometry(4, 4, 0)

    def local_map_size(self, size):
        return tuple(side // 4 for side in size)


@pytest.fixture
def toy_backbone():
    BACKBONES.register("toy")(ToyBackbone)
    yield
    BACKBONES.remove("toy")


def _step(model, loss_fn):
    """One real training step (core.step.train_step) of the model on 4 random 32 px images."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = cpu_step_run(model, loss_fn, optimizer)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(4, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 3])
    model.train()
    return train_step(run, images, labels, 0)


def test_a_backbone_registered_here_trains_and_extracts(toy_backbone):
    cfg = tiny_cfg("MODEL.TYPE", "toy")
    torch.manual_seed(0)
    model = build_model(cfg)
    assert isinstance(model.backbone, ToyBackbone) and model.whiten.in_features == 16
    before = model.backbone.patchify.weight.detach().clone()
    stats = _step(model, build_loss(cfg))
    assert stats["nonfinite"] == 0 and stats["loss"] > 0
    assert not torch.equal(model.backbone.patchify.weight, before)  # the gradient reached it

    model.eval()
    settings = ExtractionSettings((1.0,), (1.0, 0.5), attention_threshold=0.0, max_features=20)
    with torch.inference_mode():
        features = extract_image(model, torch.randn(1, 3, 40, 48), (40, 48), (4, 4, 0), settings)
    assert features["global"].shape == (16,)
    local = features["local"]
    # 10 x 12 + 5 x 6 cells at the two scales, the top 20 kept
    assert len(local["locations"]) == 20 and local["descriptors"].shape[1] == 8


def test_the_local_losses_do_not_reach_the_backbone(toy_backbone):
    """The official gradient stop: the local head reads a detached local map."""
    cfg = tiny_cfg("MODEL.TYPE", "toy", "MODEL.LOSSES.GLOBAL_WEIGHT", "0.0")
    torch.manual_seed(0)
    model = build_model(cfg)
    before = model.backbone.patchify.weight.detach().clone()
    head_before = next(model.local_head.parameters()).detach().clone()
    _step(model, build_loss(cfg))
    assert torch.equal(model.backbone.patchify.weight, before)
    assert not torch.equal(next(model.local_head.parameters()), head_before)


def test_an_unknown_backbone_names_the_key_and_the_known_ones():
    with pytest.raises(ValueError, match="MODEL.TYPE: unknown backbone 'nope'; known: resnet"):
        build_model(tiny_cfg("MODEL.TYPE", "nope"))


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("RESNET.STEM", "keras"),
        ("RESNET.STEM", "slim", "MODEL.LOCAL_STRIDE", "32"),
        ("RESNET.STRIDE_1X1", "False"),
    ],
)
def test_measured_geometry_equals_the_resnet_layers(options):
    """The gradient measurement used for timm CNNs agrees with the layer composition."""
    backbone = build_model(tiny_cfg(*options)).backbone
    probe = geometry_probe(backbone)
    stride = backbone.output_shape()["local"].stride

    def local(images):
        return probe.local_map(probe.forward_shared(images))

    expected = compose_geometry(backbone.local_path_modules())
    assert measured_geometry(local, stride) == expected == backbone.local_geometry()


def test_measured_geometry_widens_its_strip_for_a_layer_that_needs_it():
    """A 5 x 40 kernel without padding does not run on the first 32-pixel strip (Inception's and
    PVT's stems fail so on narrow inputs); the strip widens until it runs."""
    layer = nn.Conv2d(3, 2, (5, 40), stride=(2, 1))
    with torch.no_grad():
        layer.weight.fill_(1.0)

    def local(images):
        return layer(images)

    assert measured_geometry(local, 2) == LocalGeometry(5, 2, 0)
    assert measured_geometry(local, 2, side=32, max_side=32) is None


def test_resnet_output_shape_and_map_size_match_its_maps():
    backbone = build_model(tiny_cfg("MODEL.LOCAL_STRIDE", "32")).backbone.eval()
    shapes = backbone.output_shape()
    with torch.no_grad():
        local, global_map = backbone(torch.zeros(1, 3, 97, 130))
    assert (local.shape[1], global_map.shape[1]) == (shapes["local"][0], shapes["global"][0])
    assert tuple(local.shape[2:]) == backbone.local_map_size((97, 130))
    assert (shapes["local"].stride, shapes["global"].stride) == (32, 32)
