import random

import numpy as np
import pytest
import torch
from torch import nn

from core.checkpoint import (
    CheckpointError,
    Position,
    capture_rng_state,
    config_differences,
    list_checkpoints,
    newest_readable_checkpoint,
    read_training_checkpoint,
    restore_rng_state,
    restore_training_state,
    save_checkpoint,
    training_state,
)


def _state(global_iter, model=None, optimizer=None):
    model = model or nn.Linear(3, 2)
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    position = Position(global_iter // 5, global_iter % 5, global_iter)
    return training_state(
        model, optimizer, None, position, [capture_rng_state()], [10, 31, 77], "A: 1\n"
    )


def test_rotation_keeps_the_newest(tmp_path):
    for it in (5, 10, 15, 20):
        path = save_checkpoint(str(tmp_path), _state(it), keep=2)
    assert [it for it, _ in list_checkpoints(str(tmp_path))] == [15, 20]
    assert path.endswith("checkpoint_000000020.pth")
    # no temporary files left
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.suffix != ".pth"]


def test_state_round_trip_restores_model_optimizer_and_position(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()  # momentum buffers exist now
    path = save_checkpoint(str(tmp_path), _state(7, model, optimizer), keep=3)

    state = torch.load(path, weights_only=True)  # plain tensors and containers only
    fresh = nn.Linear(3, 2)
    fresh_optimizer = torch.optim.SGD(fresh.parameters(), lr=0.5, momentum=0.9)
    position = restore_training_state(
        state, fresh, fresh_optimizer, None, [10, 31, 77], epoch_iters=5
    )
    assert position == Position(1, 2, 7)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
    momentum = [s["momentum_buffer"] for s in fresh_optimizer.state.values()]
    assert len(momentum) == 2 and fresh_optimizer.param_groups[0]["lr"] == 0.1
    assert state["class_ids"].tolist() == [10, 31, 77]


def test_checkpoint_of_other_classes_or_epoch_length_is_refused(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = _state(7, model, optimizer)
    with pytest.raises(CheckpointError, match="3 classes that differ"):
        restore_training_state(state, model, optimizer, None, [10, 31, 78], epoch_iters=5)
    with pytest.raises(CheckpointError, match="does not fit epochs of 4 iterations"):
        restore_training_state(state, model, optimizer, None, [10, 31, 77], epoch_iters=4)


def test_rng_states_round_trip():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    state = capture_rng_state()
    expected = torch.rand(3), np.random.randn(3), random.gauss(0, 1), random.random()
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(state)
    got = torch.rand(3), np.random.randn(3), random.gauss(0, 1), random.random()
    assert (
        torch.equal(expected[0], got[0])
        and np.array_equal(expected[1], got[1])
        and expected[2:] == got[2:]
    )
    assert all(torch.is_tensor(v) for k, v in state.items() if k != "cuda")


def test_truncated_newest_is_reported_and_skipped(tmp_path):
    save_checkpoint(str(tmp_path), _state(5), keep=3)
    newest = save_checkpoint(str(tmp_path), _state(10), keep=3)
    data = open(newest, "rb").read()
    with open(newest, "wb") as handle:
        handle.write(data[: len(data) // 2])
    reports = []
    path, state = newest_readable_checkpoint(str(tmp_path), reports.append)
    assert path.endswith("checkpoint_000000005.pth") and state["position"]["global_iter"] == 5
    assert (
        len(reports) == 1
        and "checkpoint_000000010.pth" in reports[0]
        and "unreadable" in reports[0]
    )


def test_foreign_or_missing_checkpoints(tmp_path):
    assert newest_readable_checkpoint(str(tmp_path), print) == (None, None)
    foreign = tmp_path / "checkpoints" / "checkpoint_000000001.pth"
    foreign.parent.mkdir()
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        read_training_checkpoint(str(foreign))
    reports = []
    assert (
        newest_readable_checkpoint(str(tmp_path), reports.append) == (None, None)
        and len(reports) == 1
    )


def test_config_differences_name_each_changed_key():
    saved = "OPTIM:\n  MAX_EPOCH: 10\n  STEPS: [0, 5]\nTRAIN:\n  BATCH_SIZE: 8\n"
    current = "OPTIM:\n  MAX_EPOCH: 20\n  STEPS: [0, 5]\nTRAIN:\n  BATCH_SIZE: 8\nNEW: 1\n"
    assert config_differences(saved, current) == [
        ("NEW", "<absent>", 1),
        ("OPTIM.MAX_EPOCH", 10, 20),
    ]
