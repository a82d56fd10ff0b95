"""What a new user reads and sees: levels in log lines, a first line at iteration 1, validation
progress without carriage returns, the extraction weights report, complete --help, a second
make_synthetic, titled training curves and ranking rows."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import trainer
from core.checkpoint import list_checkpoints
from core.config import load_cfg
from core.progress import LogProgress, progress_bar
from core.weights import load_weights
from modeling import build_inference_model
from tests.tiny import TINY_PRESET, generate_tiny_world, tiny_training_options
from tools import make_synthetic
from tools.plot_training import MARGIN_NOTE, plot_training, run_title
from tools.vis.ranking import ranking_grid

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("logs")
    data_root = generate_tiny_world(base) / "train"
    out = base / "run"
    opts = tiny_training_options(
        data_root, out, "LOG_DEST", "file", "OPTIM.MAX_ITER", "4", "LOG_PERIOD", "100",
        "TRAIN.EVAL_PERIOD", "1",
    )  # fmt: skip
    assert trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump()) == 0
    return out, opts


def test_log_lines_have_levels_a_first_line_and_validation_progress(trained):
    out, _ = trained
    log = (out / "stdout.log").read_text()
    lines = log.splitlines()
    assert all(" INFO " in line or " WARNING " in line for line in lines if line.startswith("["))
    assert any("(total 1/4)" in line for line in lines)  # before LOG_PERIOD (100) iterations
    assert any("validation after epoch 1: " in line and " batch " in line for line in lines)
    assert "\r" not in log


def test_progress_off_a_terminal_is_plain_lines(tmp_path):
    with open(tmp_path / "not_a_tty", "w") as stream:
        bar = progress_bar(10, "work", "img", stream=stream)
    assert isinstance(bar, LogProgress)


def test_extraction_report_does_not_call_unused_classifiers_errors(trained):
    out, opts = trained
    model = build_inference_model(load_cfg(TINY_PRESET, opts))
    lines = []
    report = load_weights(
        model, list_checkpoints(str(out))[-1][1], lines.append, True, model.classifier_keys
    )
    assert len(lines) == 1, lines
    assert f"loaded {report.total} of {report.total} model tensors" in lines[0]
    assert "the classifiers, 3 tensors, play no part here" in lines[0]


def test_model_info_help_is_complete():
    result = subprocess.run(
        [sys.executable, "tools/model_info.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "(no weights, no arithmetic)." in " ".join(
        result.stdout.split()
    )


def test_make_synthetic_twice_says_the_folder_holds_that_world(tmp_path, capsys):
    argv = ["--size", "tiny", "--out", str(tmp_path / "world"), "--workers", "1"]
    make_synthetic.main(argv)
    assert "written" in capsys.readouterr().out
    make_synthetic.main(argv)
    assert "already holds the world of these settings" in capsys.readouterr().out


def test_training_curves_are_titled_and_explain_the_margin_error(trained):
    out, _ = trained
    title = run_title(str(out), {"iter": 4, "max_iter": 4})
    assert title.startswith("DELG training: resnet-18 on synthetic, iteration 4 of 4")
    assert "margin logits" in MARGIN_NOTE
    assert Path(plot_training(str(out))).read_bytes()[:4] == b"\x89PNG"


def test_ranking_rows_carry_their_titles_and_multi_line_captions():
    query = np.full((64, 64, 3), 128, np.uint8)
    rows = [([query], ["positive"], ["1 0.9996\ndb_001"]), ([query], ["negative"], ["1\ndb_002"])]
    plain = ranking_grid(query, rows)
    titled = ranking_grid(query, rows, titles=["global", "spatial verification"])
    assert plain.shape == titled.shape
    assert not np.array_equal(plain[:160, :160], titled[:160, :160])  # a title on each query tile
    assert not np.array_equal(titled[:160, :160], titled[160:, :160])  # and they differ
