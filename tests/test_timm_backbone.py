"""timm models as DELG backbones (MODEL.TYPE timm, modeling/timm_backbone.py): a small CNN and a
small DINOv2-style ViT, untrained, with their maps, geometry and local checkpoints; and the whole
pipeline on the tiny synthetic world (train_delg.py -> tools/extractor.py ->
tools/revisitop/evaluate.py with global and sv, tools/search.py, tools/vis/attention.py,
tools/export_onnx.py)."""

import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm (requirements.txt)")

from core.checkpoint import list_checkpoints  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.io import read_json  # noqa: E402
from datasets.features import open_store  # noqa: E402
from modeling import build_model  # noqa: E402
from tests.small_models import small_cfg  # noqa: E402
from tests.tiny import (  # noqa: E402
    REPO,
    TINY_EXTRACTION,
    TINY_HEADS,
    TINY_PRESET,
    generate_tiny_world,
    run_benchmark,
    tiny_training_options,
)

# resnet10t at a quarter of its width: stem 3x3/2, 3x3, 3x3, max-pool 3x3/2, one basic block
# (two 3x3) per stage, the first of a stage strided: at layer3 (stride 16) the field is
# 1 + 2 (1 + 2 + 2) + 2 * 4 (1 + 2) + 2 * 8 * 2 + 2 * 16 = 103 px, padding (103 - 1) / 2
CNN = ["MODEL.TYPE", "timm", "TIMM.NAME", "resnet10t", "TIMM.KWARGS", "['channels=(16,32,64,128)']"]
# ViT-S/14 of DINOv2 shrunk to 2 blocks of width 48
VIT = [
    "MODEL.TYPE",
    "timm",
    "TIMM.NAME",
    "vit_small_patch14_dinov2",
    "TIMM.KWARGS",
    "['depth=2', 'embed_dim=48', 'num_heads=2', 'img_size=56']",
    "TIMM.LOCAL_STRIDE",
    "14",
]


def _backbone(*options):
    return build_model(small_cfg(*options)).backbone.eval()


def test_timm_imports_beside_our_datasets_package():
    """The repository's top-level `datasets` shadows Hugging Face's; timm (and the Hugging Face hub
    client it imports) must not mind, from the repository root as the scripts run."""
    code = (
        "import timm, timm.data, timm.models; timm.create_model('resnet10t', pretrained=False); "
        "import datasets, datasets.synthetic; print(datasets.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO / "datasets" / "__init__.py")


def test_a_timm_cnn_gives_the_stage_of_the_local_stride_and_its_field():
    backbone = _backbone(*CNN)
    shapes = backbone.output_shape()
    assert shapes == {"local": (64, 16), "global": (128, 32)}
    assert backbone.local_geometry() == (103, 16, 51)
    for size in ((97, 130), (64, 33), (20, 20)):
        with torch.no_grad():
            local, global_map = backbone(torch.zeros(1, 3, *size))
        assert tuple(local.shape[2:]) == backbone.local_map_size(size)
        assert (local.shape[1], global_map.shape[1]) == (64, 128)
    assert _backbone(*CNN, "TIMM.LOCAL_STRIDE", "8").output_shape()["local"] == (32, 8)


def test_model_info_describes_a_timm_model_built_on_the_meta_device():
    from modeling.complexity import describe_model

    text = describe_model(small_cfg(*CNN), 128)
    assert text.startswith("DELG timm resnet10t, 16-d global")
    assert text.endswith("receptive field 103 px, stride 16, padding 51")


def test_a_timm_vit_gives_its_patch_grids():
    backbone = _backbone(*VIT, "TIMM.LOCAL_BLOCK", "0")
    assert backbone.output_shape() == {"local": (48, 14), "global": (48, 14)}
    assert backbone.local_geometry() == (14, 14, 0)
    images = torch.randn(1, 3, 70, 42)
    with torch.no_grad():
        local, global_map = backbone(images)
        (expected_local,) = backbone.model.forward_intermediates(
            images, indices=[0], norm=True, intermediates_only=True
        )
        tokens = backbone.model.forward_features(images)
    assert torch.allclose(local, expected_local, atol=1e-6)
    expected_global = tokens[:, 1:].transpose(1, 2).reshape(1, 48, 5, 3)
    assert torch.allclose(global_map, expected_global, atol=1e-6)
    # sizes that are not multiples of the patch lose their last partial patch, as a conv would
    with torch.no_grad():
        local, _ = backbone(torch.randn(1, 3, 100, 37))
    assert tuple(local.shape[2:]) == backbone.local_map_size((100, 37)) == (7, 2)


def _timm_options(name, kwargs):
    entries = [f"{key}={value}" for key, value in kwargs.items()]
    return ["MODEL.TYPE", "timm", "TIMM.NAME", name, "TIMM.KWARGS", str(entries)]


def _same_weights(name, kwargs, tmp_path):
    """A timm model and DELG's backbone of it with the same (random) weights."""
    reference = timm.create_model(name, pretrained=False, **kwargs).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    options = _timm_options(name, kwargs)
    return reference, _backbone(*options, "TIMM.WEIGHTS", str(path))


SWIN_KWARGS = {"depths": (1, 1, 1, 1), "embed_dim": 16, "num_heads": (1, 1, 1, 1)}
SWIN = _timm_options("swin_tiny_patch4_window7_224", SWIN_KWARGS)


def test_a_channels_last_timm_model_gives_nchw_maps_of_any_size(tmp_path):
    """Swin keeps its stages channels last (timm's output_fmt NHWC) and takes only its training
    size unless built with dynamic_img_size: the maps are timm's own intermediates, as NCHW."""
    kwargs = {**SWIN_KWARGS, "dynamic_img_size": True}  # the reference too
    reference, backbone = _same_weights("swin_tiny_patch4_window7_224", kwargs, tmp_path)
    assert backbone.output_shape() == {"local": (64, 16), "global": (128, 32)}
    for size in ((100, 68), (131, 90)):
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            local, global_map = backbone(images)
            expected = reference.forward_intermediates(
                images[..., : size[0] // 4 * 4, : size[1] // 4 * 4],
                indices=[2, 3],
                intermediates_only=True,
            )
        assert torch.allclose(local, expected[0], atol=1e-5)
        assert torch.allclose(global_map, expected[1], atol=1e-5)
        assert tuple(local.shape[2:]) == backbone.local_map_size(size)


# Twins: FeatureListNet cannot split it (its stages are not modules in sequence)
TWINS_KWARGS = {"depths": (1, 1, 1, 1), "embed_dims": (8, 16, 32, 64), "num_heads": (1, 1, 2, 2)}
TWINS = _timm_options("twins_svt_small", TWINS_KWARGS)
# DLA adds paths of two resolutions: it runs on sides that halve evenly down to stride 32 only
DLA_KWARGS = {"channels": (4, 8, 8, 16, 16, 32)}
DLA = _timm_options("dla34", DLA_KWARGS)
# XCiT: a plain transformer (every map of stride 16) that is not a timm VisionTransformer
XCIT_KWARGS = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def test_a_model_that_cannot_be_split_gives_its_intermediates_in_one_pass(tmp_path):
    from modeling.timm_backbone import TimmIntermediates

    reference, backbone = _same_weights("twins_svt_small", TWINS_KWARGS, tmp_path)
    assert isinstance(backbone, TimmIntermediates) and backbone.multiple == 1
    assert backbone.output_shape() == {"local": (32, 16), "global": (64, 32)}
    for size in ((100, 68), (131, 90)):
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            local, global_map = backbone(images)
            expected = reference.forward_intermediates(images, [2, 3], intermediates_only=True)
        assert torch.allclose(local, expected[0], atol=1e-5)
        assert torch.allclose(global_map, expected[1], atol=1e-5)
        assert tuple(local.shape[2:]) == backbone.local_map_size(size)


def test_a_model_that_needs_even_sides_gets_its_input_cropped(tmp_path):
    from modeling.timm_models import size_failure

    reference, backbone = _same_weights("dla34", DLA_KWARGS, tmp_path)
    assert backbone.multiple == 32
    backbone.multiple = 1  # the probe itself: 16 is not enough, 32 is
    assert size_failure(backbone, 16) is not None and size_failure(backbone, 32) is None
    backbone.multiple = 32
    for size in ((100, 68), (131, 97)):
        images = torch.randn(1, 3, *size)
        with torch.no_grad():
            local, _ = backbone(images)
            cropped = images[..., : size[0] // 32 * 32, : size[1] // 32 * 32]
            (expected,) = reference.forward_intermediates(cropped, [4], intermediates_only=True)
        assert torch.allclose(local, expected, atol=1e-5)
        assert tuple(local.shape[2:]) == backbone.local_map_size(size)


def test_a_side_too_small_for_the_global_stage_gives_no_map():
    """ConvNeXt downsamples with a 2 x 2 convolution: a single row at stride 16 has no stride-32
    row, so that scale is left out (local_map_size 0) rather than failing in extraction."""
    backbone = _backbone(*_timm_options("convnext_atto", {"dims": (8, 16, 32, 64)}))
    assert backbone.local_map_size((20, 200)) == (0, 12)
    assert backbone.local_map_size((40, 200)) == (2, 12)
    with torch.no_grad():
        local, global_map = backbone(torch.zeros(1, 3, 40, 200))
    assert tuple(local.shape[2:]) == (2, 12) and tuple(global_map.shape[2:]) == (1, 6)


def test_parameters_the_global_map_does_not_reach_are_frozen():
    """DELG trains the backbone through the global map alone: a layer that feeds only the local
    map (HRNet's fuse layers towards a branch the global map does not read) would never get a
    gradient, which DDP refuses."""
    from modeling.timm_models import freeze_unreached

    class TwoMaps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.shared = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.local_only = torch.nn.Conv2d(4, 4, 1)
            self.global_only = torch.nn.Conv2d(4, 4, 1)

        def forward(self, images):
            shared = self.shared(images)
            return self.local_only(shared), self.global_only(shared)

    toy = TwoMaps()
    assert freeze_unreached(toy) == ["local_only.weight", "local_only.bias"]
    trainable = [name for name, p in toy.named_parameters() if p.requires_grad]
    assert trainable == ["shared.weight", "shared.bias", "global_only.weight", "global_only.bias"]


@pytest.mark.parametrize(
    "backbone",
    [
        CNN,
        VIT,
        [*VIT, "TIMM.KWARGS", "['depth=1', 'embed_dim=48', 'num_heads=2', 'global_pool=avg']"],
        SWIN,
        TWINS,
        DLA,
    ],
    ids=["cnn", "vit", "vit_fc_norm", "swin", "twins", "dla"],
)
def test_every_parameter_of_a_timm_delg_model_gets_a_gradient(backbone):
    """What DDP needs: no parameter left out of the loss (the ViT's classifier and its norm are
    dropped)."""
    from modeling import build_loss

    cfg = small_cfg(*backbone)
    model = build_model(cfg).train()
    labels = torch.tensor([0, 1])
    loss, _ = build_loss(cfg)(model(torch.randn(2, 3, 56, 70), labels), labels)
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ((*VIT, "TIMM.LOCAL_STRIDE", "16"), "set TIMM.LOCAL_STRIDE 14"),
        ((*CNN, "TIMM.LOCAL_STRIDE", "32"), r"one of \[2, 4, 8, 16\], got 32"),
        ((*CNN, "TIMM.NAME", "no_such_model"), "TIMM.NAME: unknown timm model 'no_such_model'"),
        ((*CNN, "TIMM.KWARGS", "['depth']"), "TIMM.KWARGS entry 'depth' must be key=value"),
        (
            _timm_options("beit_base_patch16_224", {"depth": 1, "embed_dim": 32, "num_heads": 1}),
            r"TIMM.NAME 'beit_base_patch16_224' does not run at every input size \(even cropped to "
            r"multiples of 16, 96x224: AssertionError: Input height \(96\) doesn't match",
        ),
        (
            [*_timm_options("xcit_nano_12_p16_224", XCIT_KWARGS), "TIMM.LOCAL_STRIDE", "8"],
            "every map of 'xcit_nano_12_p16_224' has stride 16: set TIMM.LOCAL_STRIDE 16",
        ),
        (
            [*_timm_options("xcit_nano_12_p16_224", XCIT_KWARGS), "TIMM.LOCAL_BLOCK", "2"],
            r"TIMM.LOCAL_BLOCK must be in \[-2, 1\], got 2",
        ),
    ],
)
def test_timm_settings_that_do_not_fit_name_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model(small_cfg(*options))


def test_timm_weights_load_from_a_local_file_only(tmp_path):
    reference = timm.create_model("resnet10t", pretrained=False, channels=(16, 32, 64, 128))
    path = tmp_path / "resnet10t.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    backbone = _backbone(*CNN, "TIMM.WEIGHTS", str(path))
    assert torch.equal(backbone.body["layer3"][0].conv1.weight, reference.layer3[0].conv1.weight)
    # a checkpoint without the classifier (self-supervised weights) or with another one loads
    headless = {key: value for key, value in reference.state_dict().items() if "fc." not in key}
    torch.save(headless, tmp_path / "headless.pth")
    backbone = _backbone(*CNN, "TIMM.WEIGHTS", str(tmp_path / "headless.pth"))
    assert torch.equal(backbone.body["layer3"][0].conv1.weight, reference.layer3[0].conv1.weight)
    torch.save({**headless, "fc.weight": torch.zeros(21843, 128)}, tmp_path / "in21k.pth")
    _backbone(*CNN, "TIMM.WEIGHTS", str(tmp_path / "in21k.pth"))
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), other)
    with pytest.raises(ConfigError, match=f"TIMM.WEIGHTS {other} does not fit"):
        _backbone(*CNN, "TIMM.WEIGHTS", str(other))
    with pytest.raises(ConfigError, match="no such file"):
        _backbone(*CNN, "TIMM.WEIGHTS", str(tmp_path / "missing.pth"))


def test_an_original_dinov2_checkpoint_loads_through_timms_filter(tmp_path):
    """The original DINOv2 release stores a position table of 37 x 37 patches (518 px) and a mask
    token; timm's checkpoint filter (as for its downloads) resamples the table to the model's grid
    and drops the token."""
    reference = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, depth=2, embed_dim=48, num_heads=2
    )
    original = dict(reference.state_dict())
    original["mask_token"] = torch.zeros(1, 48)
    assert original["pos_embed"].shape == (1, 1 + 37 * 37, 48)
    torch.save(original, tmp_path / "dinov2_vits14_pretrain.pth")
    backbone = _backbone(*VIT, "TIMM.WEIGHTS", str(tmp_path / "dinov2_vits14_pretrain.pth"))
    assert backbone.model.pos_embed.shape == (1, 1 + 4 * 4, 48)  # img_size 56: 4 x 4 patches
    assert torch.equal(backbone.model.blocks[1].mlp.fc2.weight, reference.blocks[1].mlp.fc2.weight)


def test_a_torchvision_checkpoint_loads_into_its_timm_model(tmp_path):
    """torchvision's ResNets and timm's share their parameter names: a torchvision checkpoint (as
    its download cache holds it) gives the same block3 map as torchvision itself."""
    import torchvision

    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(reference.state_dict(), path)
    backbone = _backbone(*_timm_options("resnet18", {}), "TIMM.WEIGHTS", str(path))
    images = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        local, _ = backbone(images)
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        expected = reference.layer3(reference.layer2(reference.layer1(x)))
    assert torch.allclose(local, expected, atol=1e-5)


# ------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_tiny_world(tmp_path_factory.mktemp("timm_world"))


def _pipeline_options(world, out, backbone):
    test = str(world / "test")
    return [
        *TINY_EXTRACTION,
        *TINY_HEADS,
        *backbone,
        "EXTRACT.DATA_ROOT",
        test,
        "EVAL.DATA_ROOT",
        test,
        "EVAL.METHODS",
        "['global', 'sv']",
        "OUT_DIR",
        str(out / "eval"),
    ]


@pytest.fixture(scope="module", params=["cnn", "vit", "swin"])
def trained(request, world, tmp_path_factory):
    """(backbone options, pipeline options, out folder) after 3 training steps, an extraction and
    an evaluation through the scripts."""
    import train_delg
    from tools import extractor
    from tools.revisitop import evaluate

    backbone = {"cnn": CNN, "vit": VIT, "swin": SWIN}[request.param]
    out = tmp_path_factory.mktemp(f"timm_{request.param}")
    training = tiny_training_options(world / "train", out / "run", *backbone)
    argv = sys.argv
    sys.argv = ["train_delg.py"]
    try:
        code = train_delg.main(["--cfg", TINY_PRESET, *training, "OPTIM.MAX_ITER", "3"])
    finally:
        sys.argv = argv
    assert code == 0
    weights = list_checkpoints(str(out / "run"))[-1][1]
    options = [*_pipeline_options(world, out, backbone), "TEST.WEIGHTS", weights]
    assert extractor.main(["--cfg", TINY_PRESET, *options]) == 0
    assert evaluate.main(["--cfg", TINY_PRESET, *options]) == 0
    return backbone, options, out


def test_a_timm_model_trains_extracts_and_evaluates(trained):
    backbone, options, out = trained
    results = read_json(out / "eval" / "results.json")
    for method in ("global", "sv"):
        assert set(results[method]) == {"E", "M", "H"}
        assert 0 <= results[method]["M"]["mAP"] <= 100
    geometry = build_model(small_cfg(*backbone)).local_geometry
    store = open_store(str(out / "eval" / "features" / "synth_database"))
    assert store.provenance["local_geometry"] == list(geometry)
    assert store.provenance["config"]["MODEL"]["TYPE"] == "timm"
    assert store.provenance["config"]["TIMM"]["NAME"] == backbone[backbone.index("TIMM.NAME") + 1]


def test_search_and_the_attention_picture_work_on_a_timm_model(trained, world, tmp_path):
    from tools import search
    from tools.vis import attention

    _, options, _ = trained
    image = next((world / "test" / "jpg").glob("*.jpg"))
    assert search.main(["--cfg", TINY_PRESET, str(image), "--sv", "--topk", "3", *options]) == 0
    picture = tmp_path / "attention.png"
    assert attention.main([str(image), "--out", str(picture), "--cfg", TINY_PRESET, *options]) == 0
    assert picture.stat().st_size > 0


def test_onnx_export_works_or_refuses_in_one_line(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-interop.txt)")
    from tools import export_onnx

    backbone, options, _ = trained
    out = tmp_path / "model.onnx"
    sizes = ["--sizes", "70x84,101x62"]
    code = export_onnx.main(["--cfg", TINY_PRESET, "--out", str(out), *sizes, *options])
    error = capsys.readouterr().err.strip()
    if backbone is not VIT:  # CNN and Swin, the latter at two sizes with their own masks
        assert code == 0 and out.exists(), error
    else:  # the ViT resamples its position embedding per size (bicubic, antialiased)
        assert code == 2 and not out.exists() and len(error.splitlines()) == 1, error
        assert error.startswith("export_onnx error: MODEL.TYPE timm: this backbone cannot be")


def test_the_extraction_benchmark_runs_on_a_timm_model(tmp_path):
    options = [
        "--runs",
        "1",
        *CNN,
        *TINY_HEADS,
        "EXTRACT.MAX_IMAGE_SIZE",
        "96",
        "EXTRACT.MAX_FEATURES",
        "20",
        "EXTRACT.LOCAL_SCALES",
        "[1.0]",
        "EXTRACT.GLOBAL_SCALES",
        "[1.0]",
    ]
    lines = run_benchmark("extract", options, tmp_path)
    assert any("model timm resnet10t, image" in line for line in lines)
    assert any("local stride 16" in line for line in lines)
    assert lines[-1].startswith("ratio: ")
