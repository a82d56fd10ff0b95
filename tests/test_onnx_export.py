"""ONNX export of one pyramid level: onnxruntime agrees with PyTorch at several image sizes, and an
extraction of the tiny synthetic test set through onnxruntime evaluates to the same mAP."""

from pathlib import Path

import numpy as np
import pytest
import torch

from core.config import load_cfg
from datasets.features import open_store
from tests.tiny import TINY_EXTRACTION, TINY_PRESET, extract_tiny_world
from tools import export_onnx as export_onnx_script
from tools.evaluation.run import evaluate
from tools.extraction import runner
from tools.extraction.runner import build_extraction_model, run_extraction
from tools.interop.onnx_export import OnnxExtractionModel, export_onnx, open_session, parity

pytest.importorskip("onnx", reason="onnx (requirements-interop.txt)")
pytest.importorskip("onnxruntime", reason="onnxruntime (requirements-interop.txt)")

TOLERANCE = 1e-4  # fp32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(tiny untrained model, path of its ONNX export)."""
    model = build_extraction_model(load_cfg(TINY_PRESET, TINY_EXTRACTION), torch.device("cpu"))
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, str(path), sample_size=(96, 128))
    return model, path


def test_onnxruntime_matches_pytorch_at_other_sizes(exported):
    model, path = exported
    report = parity(model, open_session(path), [(112, 112), (75, 101)])  # neither is the sample's
    for size, differences in report.items():
        assert set(differences) == {"global", "attention", "local"}
        assert max(difference for difference, _ in differences.values()) <= TOLERANCE, size
        assert min(magnitude for _, magnitude in differences.values()) > 0
    assert report[(75, 101)]["local"][0] > 0  # two runtimes, not one graph compared with itself


def test_adapter_returns_what_was_asked_in_the_model_layout(exported):
    model, path = exported
    onnx_model = OnnxExtractionModel(path, structure=model)
    assert tuple(onnx_model.local_geometry) == tuple(model.local_geometry)
    image = torch.randn(1, 3, 90, 70)
    with torch.inference_mode():
        expected = model.extract(image, want_global=False, want_local=True)
    got = onnx_model.extract(image, want_global=False, want_local=True)
    assert set(got) == {"attention", "local"}
    for name, value in got.items():
        assert value.shape == expected[name].shape and value.dtype == torch.float32
        assert torch.allclose(value, expected[name], atol=TOLERANCE)


def test_script_reports_the_differences(tmp_path, capsys):
    code = export_onnx_script.main(
        [
            "--cfg",
            TINY_PRESET,
            "--out",
            str(tmp_path / "m.onnx"),
            "--sizes",
            "64x80,97x65",
            *TINY_EXTRACTION,
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "m.onnx").is_file()
    assert "64x80: max abs difference (max abs value) global=" in out and "97x65:" in out
    assert export_onnx_script.main(["--cfg", TINY_PRESET, "--out", "x.onnx", "--sizes", "64"]) == 2


@pytest.mark.parametrize(
    ("difference", "magnitude", "code"),
    [(1.6e-4, 100.0, 0), (9e-5, 0.5, 0), (2e-4, 0.5, 1), (2e-2, 100.0, 1)],
)
def test_script_tolerance_is_on_the_outputs_scale(
    tmp_path, monkeypatch, difference, magnitude, code
):
    """Absolute for outputs within 1, relative beyond: fp32 local maps reaching 100 differ by ~1e-4
    between two runtimes, which is agreement, not a failed export."""
    report = {
        (64, 80): {
            "global": (1e-6, 0.2),
            "attention": (1e-6, 1.0),
            "local": (difference, magnitude),
        }
    }
    monkeypatch.setattr(export_onnx_script, "parity", lambda *args: report)
    arguments = ["--cfg", TINY_PRESET, "--out", str(tmp_path / "m.onnx"), "--sizes", "64x80"]
    assert export_onnx_script.main([*arguments, *TINY_EXTRACTION]) == code


def test_extraction_through_onnxruntime_evaluates_the_same(exported, tmp_path, monkeypatch):
    model, path = exported
    options = extract_tiny_world(tmp_path)  # through PyTorch, into tmp_path/out
    torch_dir = Path(tmp_path) / "out" / "features"
    onnx_options = [*options, "OUT_DIR", str(tmp_path / "onnx_out")]
    monkeypatch.setattr(
        runner, "build_extraction_model", lambda cfg, device: OnnxExtractionModel(path, model)
    )
    exit_code, _ = run_extraction(load_cfg(TINY_PRESET, onnx_options))
    assert exit_code == 0
    onnx_dir = Path(tmp_path) / "onnx_out" / "features"
    for name in ("synth_query", "synth_database"):
        a, b = open_store(torch_dir / name), open_store(onnx_dir / name)
        assert a.names == b.names and a.provenance == b.provenance
        assert np.abs(a.global_descriptors() - b.global_descriptors()).max() <= TOLERANCE
    results = {}
    for label, features in (("torch", torch_dir), ("onnx", onnx_dir)):
        cfg = load_cfg(
            TINY_PRESET,
            [
                *options,
                "EVAL.FEATURES_DIR",
                str(features),
                "OUT_DIR",
                str(tmp_path / f"eval_{label}"),
            ],
        )
        cfg.EVAL.METHODS = ["global", "sv"]
        results[label] = evaluate(cfg)
    assert results["onnx"] == results["torch"]


def test_an_image_too_small_for_the_network_gives_empty_features_through_onnxruntime(exported):
    from tools.extraction.pyramid import ExtractionSettings, extract_image

    model, path = exported
    onnx_model = OnnxExtractionModel(path, structure=model)
    settings = ExtractionSettings(global_scales=(1.0,), local_scales=(1.0,), min_size=10)
    # under MIN_SIZE: no network pass, empty features of the right sizes
    image = torch.randn(1, 3, 8, 30)
    features = extract_image(onnx_model, image, (8, 30), tuple(model.local_geometry), settings)
    assert features["global"].shape == (model.global_dim,) and not features["global"].any()
    assert features["local"]["descriptors"].shape == (0, model.local_descriptor_dim)
