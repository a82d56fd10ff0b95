"""The demo end to end, reduced (tiny synthetic world, quarter-width network, 16 iterations), and
the trainer's retrieval-in-the-loop validation, whose last mAP must equal the one extraction +
evaluation give for the final checkpoint."""

import subprocess
import sys
from pathlib import Path

import pytest

from core import trainer
from core.config import load_cfg
from core.io import read_json
from core.logging import JSON_LOG_NAME, read_json_log
from datasets.synthetic import generate
from tools.pipeline import UNTRAINED, ensure_synthetic
from tools.pipeline_reranker import LEARNED_METHODS
from tools.revisitop.validation import build_retrieval_validator

REPO = Path(__file__).resolve().parents[1]
CI_CONFIG = str(REPO / "configs" / "synthetic" / "demo_ci.yaml")
CI_RERANKER = str(REPO / "configs" / "reranker" / "synthetic_ci.yaml")
ITERATIONS = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def demo_command(world, out, *extra, iterations=ITERATIONS):
    """The reduced demo's command line on a tiny world (iterations None: the config's)."""
    command = [sys.executable, "tools/demo.py", "--cfg", CI_CONFIG, "--size", "tiny"]
    command += ["--reranker-cfg", CI_RERANKER]
    command += ["--data", str(world), "--out", str(out)]
    if iterations is not None:
        command += ["--iters", str(iterations), "--threads", "1"]
    return [*command, *extra]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "synthetic_tiny"
    generate(str(folder), size="tiny", workers=1)
    return folder


@pytest.fixture(scope="module")
def demo_run(tiny_world):
    out = tiny_world.parent / "demo_out"
    command = demo_command(tiny_world, out)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_demo_writes_results_in_the_evaluation_layout_plus_the_untrained_row(demo_run):
    out, _ = demo_run
    results = read_json(str(out / "results.json"))
    methods = load_cfg(CI_CONFIG).EVAL.METHODS
    assert list(results) == [UNTRAINED, *methods, *LEARNED_METHODS]  # + the re-ranker's rows
    for method, by_protocol in results.items():
        assert list(by_protocol) == ["E", "M", "H"], method
        for protocol, row in by_protocol.items():
            assert list(row) == ["mAP", "mP@1", "mP@5", "mP@10"], (method, protocol)
            assert all(0.0 <= value <= 100.0 for value in row.values()), (method, protocol, row)


def test_demo_prints_the_table_and_where_the_files_are(demo_run):
    out, stdout = demo_run
    assert UNTRAINED in stdout and "asmk_rerank" in stdout
    assert str(out / "results.json") in stdout
    summary = read_json(str(out / "summary.json"))
    assert summary["iterations"] == ITERATIONS
    assert summary["timing"]["cpu_s"] > 0 and summary["timing"]["wall_s"] > 0
    pictures = summary["pictures"]
    assert set(pictures) >= {"training_curves", "matches"}
    assert len([name for name in pictures if name.startswith("attention_")]) == 2
    for path in pictures.values():
        assert path in stdout
        assert Path(path).read_bytes()[:8] == PNG_MAGIC and Path(path).stat().st_size > 5_000, path


def test_retrieval_in_the_loop_matches_extraction_and_evaluation(demo_run):
    out, _ = demo_run
    records = read_json_log(str(out / "train" / JSON_LOG_NAME))
    retrieval = [record for record in records if record["type"] == "retrieval"]
    validations = [record for record in records if record["type"] == "val"]
    # every EVAL_PERIOD and at the end
    assert [r["iter"] for r in retrieval] == [r["iter"] for r in validations]
    assert len(retrieval) >= 2 and retrieval[-1]["iter"] == ITERATIONS
    # the trainer's model after the last step is the final checkpoint the demo extracted and
    # evaluated
    results = read_json(str(out / "results.json"))
    for protocol in ("E", "M", "H"):
        assert retrieval[-1][f"mAP_{protocol}"] == pytest.approx(
            results["global"][protocol]["mAP"], abs=1e-4
        )
        assert retrieval[-1][f"mP@5_{protocol}"] == pytest.approx(
            results["global"][protocol]["mP@5"], abs=1e-4
        )


def test_retrieval_in_the_loop_without_its_dataset_stops_with_a_clear_message(
    tiny_world, tmp_path, capsys
):
    opts = [
        "TRAIN.DATA_ROOT",
        str(tiny_world / "train"),
        "EVAL.DATA_ROOT",
        str(tmp_path / "nowhere"),
        "OUT_DIR",
        str(tmp_path / "run"),
        "OPTIM.MAX_ITER",
        "2",
    ]
    factories = [build_retrieval_validator]
    assert (
        trainer.train_in_process(load_cfg(CI_CONFIG, opts).dump(), factories) == trainer.EXIT_CONFIG
    )
    assert "error: TRAIN.RETRIEVAL_EVAL: no ground truth" in capsys.readouterr().err


def test_a_world_of_another_seed_is_not_silently_reused(tiny_world):
    assert ensure_synthetic(str(tiny_world), 0, "tiny", log=lambda _: None)["seed"] == 0
    with pytest.raises(ValueError, match="seed 0"):
        ensure_synthetic(str(tiny_world), 1, "tiny", log=lambda _: None)


def test_a_config_mistake_stops_the_demo_before_it_generates_anything(tmp_path):
    command = demo_command(
        tmp_path / "world", tmp_path / "out", "TRAIN.IM_SIZ", "64", iterations=None
    )
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert (
        "unknown config key 'TRAIN.IM_SIZ'; did you mean TRAIN.IM_SIZE"
        in result.stdout + result.stderr
    )
    assert not (tmp_path / "world").exists() and not (tmp_path / "out").exists()


def test_an_interrupted_demo_continues_its_training_to_the_same_results(tiny_world, tmp_path):
    """Run the reduced demo with a checkpoint every 6 iterations, drop every checkpoint after the
    mid-epoch one at iteration 6 (as if the run had been killed at 11), run it again: it resumes and
    writes the same results. Once finished, the model is reused; a changed config is a new training
    and starts afresh."""
    out = tmp_path / "out"
    command = demo_command(tiny_world, out, "TRAIN.CHECKPOINT_ITERS", "6")

    def run(*extra):
        result = subprocess.run(
            [*command, *extra], cwd=REPO, capture_output=True, text=True, timeout=170
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout + result.stderr

    run()
    straight = (out / "results.json").read_bytes()
    checkpoints = sorted((out / "train" / "checkpoints").glob("checkpoint_*.pth"))
    assert checkpoints[0].name == "checkpoint_000000006.pth" and len(checkpoints) > 1
    for later in checkpoints[1:]:
        later.unlink()
    output = run()
    assert "holds this training up to iteration 6: continuing it" in output
    assert (out / "results.json").read_bytes() == straight
    assert "finished at iteration 16: reusing its model" in run()
    output = run("OPTIM.BASE_LR", "0.001")
    assert "continuing it" not in output and "reusing" not in output
