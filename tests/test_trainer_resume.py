"""Exact resume: 2N iterations straight == N, stop (preemption signal), resume, N more; and the
fallback to the checkpoint before a corrupt newest one, which must replay to the very same
weights."""

import shutil
from pathlib import Path

import pytest
import torch

from core import trainer
from core.checkpoint import list_checkpoints, read_training_checkpoint
from core.config import load_cfg
from tests.tiny import TINY_PRESET, generate_tiny_world, signal_at_step, tiny_training_options

STOP_AT = 5  # mid-epoch: the tiny set gives 4 iterations per epoch at batch 8
TOTAL = 2 * STOP_AT


def tiny_opts(data_root, out_dir, *extra):
    """The synthetic preset shrunk to seconds: half-width R18 at 16, 64 px, batch 8, no workers."""
    return tiny_training_options(
        data_root,
        out_dir,
        "LOG_DEST",
        "file",
        "OPTIM.MAX_ITER",
        str(TOTAL),
        "TRAIN.CHECKPOINT_ITERS",
        "0",
        *extra,
    )


def train(opts):
    """The entry point every training process runs; returns its exit code."""
    return trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump())


def final_model(out_dir):
    _, path = list_checkpoints(str(out_dir))[-1]
    state = read_training_checkpoint(path)
    return state["position"], state["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A straight; run B stopped by SIGUSR1 after STOP_AT steps (with 2 loader workers); B kept
    for resuming."""
    base = tmp_path_factory.mktemp("resume")
    data_root = generate_tiny_world(base) / "train"
    assert train(tiny_opts(data_root, base / "straight")) == 0

    with signal_at_step(STOP_AT):
        assert train(tiny_opts(data_root, base / "stopped", "DATA_LOADER.NUM_WORKERS", "2")) == 0
    return data_root, base


def resume_copy(runs, name):
    data_root, base = runs
    shutil.copytree(base / "stopped", base / name)
    return data_root, base / name


def test_stop_then_resume_gives_identical_weights(runs):
    data_root, out_dir = resume_copy(runs, "resumed")
    # epoch end, then the preemption
    assert [it for it, _ in list_checkpoints(str(out_dir))] == [4, STOP_AT]
    assert train(tiny_opts(data_root, out_dir, "TRAIN.AUTO_RESUME", "True")) == 0
    log = (out_dir / "stdout.log").read_text()
    assert (
        f"checkpoint_{STOP_AT:09d}.pth: epoch 2, iteration 1 of it, global iteration {STOP_AT}"
        in log
    )
    assert "config changed since the checkpoint: TRAIN.AUTO_RESUME False -> True" in log
    position, weights = final_model(out_dir)
    straight_position, straight_weights = final_model(runs[1] / "straight")
    assert position == straight_position and position["global_iter"] == TOTAL
    # 0 and 2 loader workers: augmentation seeded per sample
    assert_same_weights(weights, straight_weights)


def test_corrupt_newest_checkpoint_falls_back_and_replays_exactly(runs):
    data_root, out_dir = resume_copy(runs, "corrupt")
    _, newest = list_checkpoints(str(out_dir))[-1]
    data = Path(newest).read_bytes()
    Path(newest).write_bytes(data[: len(data) // 3])  # a copy cut short
    assert train(tiny_opts(data_root, out_dir, "TRAIN.AUTO_RESUME", "True")) == 0
    log = (out_dir / "stdout.log").read_text()
    assert f"checkpoint {newest} is unreadable (" in log
    assert f"moved aside to {newest}.corrupt" in log and Path(f"{newest}.corrupt").is_file()
    assert f"resumed from {out_dir}/checkpoints/checkpoint_000000004.pth" in log
    _, weights = final_model(out_dir)
    assert_same_weights(weights, final_model(runs[1] / "straight")[1])
