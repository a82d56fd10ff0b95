"""Weight loading: seed checkpoints, torchvision ImageNet ResNets, our own checkpoints, and the
report's rules."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from core.config import load_cfg
from core.io import torch_save
from core.weights import WeightsError, load_weights, read_checkpoint
from modeling import build_model
from tests.small_models import small_cfg, tiny_cfg

REPO = Path(__file__).resolve().parents[1]
SEED_KEYS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "seed_r50_delg_state_dict_keys.json"
)
SEED_CLASSES = 81313  # the class count of the released seed checkpoint


def random_seed_state_dict(num_classes, generator):
    """Every key and shape of the seed's R50 checkpoint (classifiers resized to num_classes), random
    values."""
    if not SEED_KEYS.is_file():
        pytest.skip(f"seed key list not found at {SEED_KEYS}")
    shapes = json.loads(SEED_KEYS.read_text())
    state = {}
    for key, shape in shapes.items():
        shape = [num_classes if size == SEED_CLASSES else size for size in shape]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        elif key.endswith("pool.p"):
            state[key] = torch.tensor([2.5])
        elif key.endswith("weight") and len(shape) > 1:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
        elif key.endswith("weight"):  # BatchNorm scale
            state[key] = torch.rand(shape, generator=generator) * 0.5 + 0.5
        else:  # biases, running means, the curricular t
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


def seed_by_hand(state, images):
    """The seed's pycls ResNet-50 (stride on the 3x3 conv), GlobalHead and SpatialAttention2d, from
    its tensors."""

    def bn(x, prefix):
        return F.batch_norm(
            x,
            state[prefix + "running_mean"],
            state[prefix + "running_var"],
            state[prefix + "weight"],
            state[prefix + "bias"],
            training=False,
            eps=1e-5,
        )

    g = "globalmodel."
    x = F.relu(
        bn(F.conv2d(images, state[g + "stem.conv.weight"], stride=2, padding=3), g + "stem.bn.")
    )
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, depth in enumerate((3, 4, 6, 3), start=1):
        for block in range(1, depth + 1):
            p, stride = f"{g}s{stage}.b{block}.", (2 if stage > 1 and block == 1 else 1)
            f = F.relu(bn(F.conv2d(x, state[p + "f.a.weight"]), p + "f.a_bn."))
            f = F.relu(
                bn(F.conv2d(f, state[p + "f.b.weight"], stride=stride, padding=1), p + "f.b_bn.")
            )
            f = bn(F.conv2d(f, state[p + "f.c.weight"]), p + "f.c_bn.")
            shortcut = (
                bn(F.conv2d(x, state[p + "proj.weight"], stride=stride), p + "bn.")
                if p + "proj.weight" in state
                else x
            )
            x = F.relu(shortcut + f)
        if stage == 3:
            block3 = x
    power = state[g + "head.pool.p"]
    pooled = x.clamp(min=1e-6).pow(power).mean(dim=(2, 3)).pow(1.0 / power)
    embedding = F.linear(pooled, state[g + "head.fc.weight"], state[g + "head.fc.bias"])
    hidden = bn(
        F.conv2d(block3, state["localmodel.conv1.weight"], state["localmodel.conv1.bias"]),
        "localmodel.bn.",
    )
    attention = F.softplus(
        F.conv2d(F.relu(hidden), state["localmodel.conv2.weight"], state["localmodel.conv2.bias"])
    )
    return embedding, attention, hidden


def test_seed_checkpoint_loads_completely_and_computes_what_the_seed_computes(tmp_path):
    generator = torch.Generator().manual_seed(0)
    state = random_seed_state_dict(10, generator)
    path = tmp_path / "seed.pyth"
    torch_save({"epoch": 3, "model_state": state, "cfg": "MODEL: {}"}, path)
    model = build_model(
        load_cfg(str(REPO / "configs/seed/resnet_delg_8gpu.yaml"), ["MODEL.NUM_CLASSES", "10"])
    )
    lines = []
    report = load_weights(model, str(path), log=lines.append)
    assert report.source == "seed"
    assert report.missing == [] and report.unexpected == [] and report.skipped_classifier == []
    assert len(report.loaded) == len(state) == report.total
    assert "loaded 334 of 334" in lines[0]
    torch.testing.assert_close(model.margin.t, state["desc_cls.t"])
    torch.testing.assert_close(model.attention_classifier.bias, state["att_cls.fc.bias"])

    images = torch.randn(2, 3, 67, 53, generator=generator)
    model.eval()
    with torch.inference_mode():
        out = model.extract(images)
        embedding, attention, hidden = seed_by_hand(state, images)
    torch.testing.assert_close(out["global"], embedding, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["attention"], attention, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["local"], hidden, atol=1e-4, rtol=1e-4)


def test_seed_checkpoint_with_another_class_count_skips_only_the_classifiers(tmp_path):
    state = random_seed_state_dict(12, torch.Generator().manual_seed(1))
    torch_save({"model_state": state}, tmp_path / "seed.pyth")
    model = build_model(
        load_cfg(str(REPO / "configs/seed/resnet_delg_8gpu.yaml"), ["MODEL.NUM_CLASSES", "10"])
    )
    before = model.margin.weight.detach().clone()
    lines = []
    report = load_weights(model, str(tmp_path / "seed.pyth"), log=lines.append)
    assert sorted(key for key, _, _ in report.skipped_classifier) == sorted(model.classifier_keys)
    assert sum("classifier left out" in line for line in lines) == 3
    torch.testing.assert_close(model.margin.weight, before)
    torch.testing.assert_close(model.whiten.weight, state["globalmodel.head.fc.weight"])


def test_torchvision_resnet50_loads_into_the_backbone(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so that a wrong mapping shows in the outputs
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.0)
    torch_save(reference.state_dict(), tmp_path / "resnet50.pth")
    # torchvision's layout, to compare outputs
    model = build_model(small_cfg("RESNET.STRIDE_1X1", "False"))
    lines = []
    report = load_weights(model, str(tmp_path / "resnet50.pth"), log=lines.append)
    assert report.source == "torchvision"
    assert not [key for key in report.missing if key.startswith("backbone.")]
    assert report.unexpected == [] and set(report.dropped) == {"fc.weight", "fc.bias"}
    assert any("dropped by the conversion" in line for line in lines)
    assert all(not key.startswith("backbone.") for key in report.missing)

    reference.eval(), model.eval()
    images = torch.randn(1, 3, 64, 48)
    with torch.inference_mode():
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(stem))))
        _, block4 = model.backbone(images)
    torch.testing.assert_close(block4, expected)


def test_our_checkpoint_roundtrip_and_report(tmp_path):
    source = build_model(tiny_cfg())
    torch_save(
        {"format": "delg-training-checkpoint", "model": source.state_dict()}, tmp_path / "ours.pth"
    )
    model = build_model(tiny_cfg())
    lines = []
    report = load_weights(model, str(tmp_path / "ours.pth"), log=lines.append, strict=True)
    assert report.source == "ours" and report.missing == [] and report.unexpected == []
    assert len(report.loaded) == report.total == len(source.state_dict())
    assert lines == [
        f"weights {tmp_path / 'ours.pth'} (a checkpoint of this framework): loaded {report.total} "
        f"of {report.total} model tensors"
    ]
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_ddp_prefix_is_removed(tmp_path):
    source = build_model(tiny_cfg())
    torch_save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pth")
    report = load_weights(build_model(tiny_cfg()), str(tmp_path / "ddp.pth"), log=lambda line: None)
    assert report.source == "ours" and report.missing == []


def test_other_class_count_skips_the_classifiers_with_a_line(tmp_path):
    source = build_model(tiny_cfg("MODEL.NUM_CLASSES", "7"))
    torch_save({"model": source.state_dict()}, tmp_path / "ours.pth")
    model = build_model(tiny_cfg("MODEL.NUM_CLASSES", "10"))
    lines = []
    report = load_weights(model, str(tmp_path / "ours.pth"), log=lines.append, strict=True)
    assert sorted(key for key, _, _ in report.skipped_classifier) == [
        "attention_classifier.bias",
        "attention_classifier.weight",
        "margin.weight",
    ]
    assert any(
        "margin.weight is [7, 16] in the file, [10, 16] in the model" in line for line in lines
    )
    torch.testing.assert_close(model.whiten.weight, source.whiten.weight)
    assert model.margin.weight.shape == (10, 16)


def test_backbone_shape_mismatch_is_an_error(tmp_path):
    torch_save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    model = build_model(tiny_cfg())  # half width: 32 stem channels against torchvision's 64
    with pytest.raises(
        WeightsError, match=r"backbone\.conv1\.weight: \[64, 3, 7, 7\] in the file, \[32, 3, 7, 7\]"
    ):
        load_weights(model, str(tmp_path / "resnet18.pth"), log=lambda line: None)


def test_head_shape_mismatch_is_an_error(tmp_path):
    torch_save({"model": build_model(tiny_cfg()).state_dict()}, tmp_path / "ours.pth")
    model = build_model(tiny_cfg("MODEL.HEADS.REDUCTION_DIM", "24"))
    with pytest.raises(WeightsError, match=r"whiten\.weight"):
        load_weights(model, str(tmp_path / "ours.pth"), log=lambda line: None)


def test_missing_backbone_tensors_are_an_error(tmp_path):
    torch_save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    model = build_model(small_cfg("MODEL.DEPTH", "34", "RESNET.TRANS_FUN", "basic_transform"))
    with pytest.raises(
        WeightsError, match=r"missing 80 tensors \(backbone\.layer1 10, backbone\.layer2 20, "
    ):
        load_weights(model, str(tmp_path / "resnet18.pth"), log=lambda line: None)


class NotATensor:
    pass


def test_files_that_could_run_code_or_are_not_weights_are_refused(tmp_path):
    torch.save({"model": {"x": NotATensor()}}, tmp_path / "pickled.pth")
    with pytest.raises(WeightsError, match="refused.*could run code.*the global .*NotATensor"):
        read_checkpoint(str(tmp_path / "pickled.pth"))
    with pytest.raises(WeightsError, match="no such weights file"):
        read_checkpoint(str(tmp_path / "absent.pth"))
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch weights file"):
        read_checkpoint(str(tmp_path / "garbage.pth"))
    torch_save({"model": build_model(tiny_cfg()).state_dict()}, tmp_path / "whole.pth")
    (tmp_path / "truncated.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated.pth: unreadable"):
        read_checkpoint(str(tmp_path / "truncated.pth"))
    torch_save({"head.weight": torch.zeros(2)}, tmp_path / "unknown.pth")
    with pytest.raises(WeightsError, match="unrecognised parameter names"):
        load_weights(build_model(tiny_cfg()), str(tmp_path / "unknown.pth"), log=lambda line: None)


def test_torchvision_weights_into_the_official_layout_say_so(tmp_path):
    torch_save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "resnet50.pth")
    cfg = small_cfg()
    assert cfg.RESNET.STRIDE_1X1  # the paper's default layout
    lines = []
    load_weights(build_model(cfg), str(tmp_path / "resnet50.pth"), log=lines.append)
    assert any("RESNET.STRIDE_1X1" in line for line in lines)
