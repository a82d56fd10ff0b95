"""What a new user meets in the first hour: a preempted demo that says how to continue and counts
every run's time, mistakes found before the heavy work and reported in one form, progress and an
ETA that covers the whole run, and one TensorFlow."""

import importlib.metadata
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import train_delg
from core import eta as eta_module
from core import trainer as trainer_module
from core.checkpoint import Position
from core.config import load_cfg
from core.eta import EtaClock, validations_left
from core.io import read_json
from core.trainer import due_at
from datasets.features import write_store
from modeling import build_model
from tests.tiny import REPO, TINY_PRESET, generate_tiny_world, tiny_training_options
from tools import search
from tools.demo_runs import EXIT_PREEMPTED, LEDGER, DemoStopped, stop_on_signals
from tools.revisitop.validation import build_retrieval_validator

CI_CONFIG = str(REPO / "configs" / "synthetic" / "demo_ci.yaml")

# Runs tools/demo.py in this process and sends itself SIGTERM before training step argv[2].
DRIVER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from core import trainer
real_step, calls, stop_at = trainer.train_step, [], int(sys.argv[2])
def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_step(*args, **kwargs)
trainer.train_step = step
sys.argv = ["tools/demo.py", *sys.argv[3:]]
from tools.demo import main
sys.exit(main())
"""


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return generate_tiny_world(tmp_path_factory.mktemp("first_hour"))


def _demo(world, out, signal_at_step=None):
    arguments = ["--cfg", CI_CONFIG, "--size", "tiny", "--data", str(world), "--out", str(out)]
    arguments += ["--iters", "12", "--threads", "1", "--no-reranker"]
    arguments += ["EVAL.METHODS", "['global', 'sv']"]  # what the pictures need, and no more
    if signal_at_step is None:
        command = [sys.executable, "tools/demo.py", *arguments]
    else:
        command = [sys.executable, "-c", DRIVER, str(REPO), str(signal_at_step), *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=200)


# ------------------------------------------------------------------------------------ 13. preempted
def test_a_preempted_demo_says_how_to_continue_and_counts_every_run(tiny_world, tmp_path):
    out = tmp_path / "demo"
    stopped = _demo(tiny_world, out, signal_at_step=5)
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == EXIT_PREEMPTED == 75, output[-3000:]
    assert "Traceback" not in output
    assert stopped.stderr.strip().splitlines()[-1] == (
        "demo: training stopped at iteration 5 of 12 after a checkpoint: run the same command "
        "again to continue"
    )
    assert "with TRAIN.AUTO_RESUME True" not in output  # the demo's own command continues it
    first = read_json(str(out / LEDGER))["runs"]
    assert len(first) == 1 and first[0]["wall_s"] > 0

    finished = _demo(tiny_world, out)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    assert "holds this training up to iteration 5: continuing it" in finished.stdout
    timing = read_json(str(out / "summary.json"))["timing"]
    assert timing["runs"] == 2
    assert timing["wall_s"] == pytest.approx(timing["this_run"]["wall_s"] + first[0]["wall_s"])
    assert timing["cpu_s"] == pytest.approx(timing["this_run"]["cpu_s"] + first[0]["cpu_s"])
    time_line = next(line for line in finished.stdout.splitlines() if line.startswith("time:"))
    assert f"{timing['wall_s']:.0f} s wall" in time_line and "2 runs" in time_line
    assert not (out / LEDGER).exists()  # the next finished run counts from zero


def test_a_signal_outside_the_training_stops_the_step_with_the_same_line():
    with pytest.raises(DemoStopped) as caught, stop_on_signals(lambda: "extract, trained"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert caught.value.code == EXIT_PREEMPTED
    assert str(caught.value) == (
        "stopped by SIGTERM during extract, trained: run the same command again to continue"
    )
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


# ------------------------------------------------------------------------- 14. mistakes found early
def _train_delg(monkeypatch, *options):
    """train_delg.py's main in this process (as `python train_delg.py` names itself)."""
    monkeypatch.setattr(sys, "argv", ["train_delg.py"])
    return train_delg.main(["--cfg", TINY_PRESET, *options])


def test_train_delg_checks_the_weights_before_reading_the_data(
    tiny_world, tmp_path, monkeypatch, capsys
):
    missing = tmp_path / "imagenet_r18.pth"
    read = []
    monkeypatch.setattr(trainer_module, "build_run", lambda *args, **kwargs: read.append(args))
    options = tiny_training_options(tiny_world / "train", tmp_path / "run")
    assert _train_delg(monkeypatch, *options, "TRAIN.WEIGHTS", str(missing)) == 2
    assert capsys.readouterr().err.strip() == (
        f"train_delg error: TRAIN.WEIGHTS: no such file {missing}"
    )
    assert read == []  # no data set read, no model built
    options = tiny_training_options(tmp_path / "nowhere", tmp_path / "run")
    assert _train_delg(monkeypatch, *options) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"train_delg error: TRAIN.DATA_ROOT: no such folder {tmp_path / 'nowhere'}"


def test_train_delg_reports_config_and_trainer_mistakes_in_the_scripts_form(
    tiny_world, tmp_path, monkeypatch, capsys
):
    assert _train_delg(monkeypatch, "TRAIN.IM_SIZ", "64") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("train_delg error: command line: unknown config key 'TRAIN.IM_SIZ'")
    # found inside the training process, after the data was read
    options = tiny_training_options(
        tiny_world / "train", tmp_path / "run", "MODEL.NUM_CLASSES", "2"
    )
    assert _train_delg(monkeypatch, *options) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "train_delg error: MODEL.NUM_CLASSES 2 is smaller than the 8 classes of the training "
        "data; set it to 0 to take the data's count"
    ]
    assert "ERROR" not in captured.out


def test_search_checks_the_image_before_loading_the_model(tmp_path, monkeypatch, capsys):
    store = tmp_path / "store"
    write_store(store, ["a", "b"], torch.eye(2, 32).numpy())
    loaded = []
    monkeypatch.setattr(search, "extract_query", lambda *args, **kwargs: loaded.append(args))
    missing = tmp_path / "query.jpg"
    code = search.main([str(missing), "--store", str(store), "OUT_DIR", str(tmp_path / "out")])
    assert code == 2 and loaded == []
    assert capsys.readouterr().err.strip() == f"search error: {missing}: no such image file"


# ----------------------------------------------------------------------------- 15. progress and ETA
def test_the_retrieval_validation_reports_its_progress(tiny_world, caplog):
    test = str(tiny_world / "test")
    cfg = load_cfg(
        CI_CONFIG,
        ["TRAIN.RETRIEVAL_EVAL", "True", "EVAL.DATA_ROOT", test, "MODEL.NUM_CLASSES", "8"],
    )
    validator = build_retrieval_validator(cfg)
    with caplog.at_level(logging.INFO, logger="core.progress"):
        validator.table(build_model(cfg), torch.device("cpu"))
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("retrieval validation, query: 4/4 image") for line in lines)
    assert any(line.startswith("retrieval validation, database: 30/30 image") for line in lines)


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_eta_covers_validations_and_later_work_and_does_not_swing(monkeypatch):
    clock_time = FakeTime()
    monkeypatch.setattr(eta_module.time, "perf_counter", clock_time)
    clock = EtaClock(extra_s=100.0)
    clock.tick(1)  # the first step (warm-up) starts the clock
    for iteration in range(2, 52):  # 50 steps of 1 s
        clock_time.now += 1.0
        clock.tick(iteration)
    with clock.validating():
        clock_time.now += 20.0  # left out of the step rate, kept for the estimate
    assert clock.eta(51, 151, validations=3) == pytest.approx(100 * 1.0 + 3 * 20.0 + 100.0)
    before = clock.eta(51, 151, 3)
    for iteration in range(52, 57):  # 5 steps of 8 s on a busy machine
        clock_time.now += 8.0
        clock.tick(iteration)
    after = clock.eta(56, 151, 3)
    # a median over the last 10 steps would still say 1 s per step here and 8 s after 5 more slow
    # steps (x8); the mean since the start moves by the real cost of the slow stretch
    assert 1.0 < after / before < 1.7


def test_validations_left_counts_what_the_trainer_will_run():
    for total, epoch_iters, period in [(30, 7, 1), (30, 7, 2), (28, 7, 2), (5, 10, 1), (40, 8, 5)]:
        for done in range(total + 1):
            expected = 0
            for iteration in range(done + 1, total + 1):
                position = Position(iteration // epoch_iters, iteration % epoch_iters, iteration)
                expected += due_at(position, total, 0, 1, period).validate
            assert validations_left(done, total, epoch_iters, period) == expected, (total, done)


def test_the_trainer_logs_an_eta_with_the_work_after_training(tiny_world, tmp_path):
    from core import trainer

    out = tmp_path / "run"
    extra = ["OPTIM.MAX_ITER", "4", "TRAIN.ETA_EXTRA_S", "500"]
    options = tiny_training_options(tiny_world / "train", out, *extra)
    assert trainer.train_in_process(load_cfg(TINY_PRESET, options).dump()) == 0
    records = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    etas = [record["eta_seconds"] for record in records if record["type"] == "train_iter"]
    assert len(etas) == 4 and all(eta >= 500 for eta in etas[1:])


# ---------------------------------------------------------------------------- 16. one TensorFlow
TENSORFLOWS = {"tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos"}


def _requirements(path):
    """Requirement names of a requirements file and the files it includes (-r)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            names |= _requirements(path.parent / line[2:].strip())
        elif line:
            names.add(canonicalize_name(Requirement(line).name))
    return names


def _installed_closure(names):
    """names and every distribution they require, as far as the installed metadata tells."""
    environment = default_environment() | {"extra": ""}
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            try:
                requirement = Requirement(text)
            except InvalidRequirement:
                continue
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    return seen


def test_the_dev_requirements_install_one_tensorflow():
    direct = _requirements(REPO / "requirements-dev.txt")
    assert len(direct & TENSORFLOWS) <= 1, direct & TENSORFLOWS
    pulled = _installed_closure(direct) & TENSORFLOWS
    assert len(pulled) <= 1, f"{sorted(pulled)} would be installed side by side"
