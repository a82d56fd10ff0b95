"""Fault injection on training checkpoints: garbage files, a full disk, a torch writer that fails
with the short-write error, and the requeued run afterwards."""

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from core import checkpoint, io, trainer
from core.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    read_training_checkpoint,
    save_checkpoint,
)
from core.config import load_cfg
from core.io import EXIT_DISK_FULL, DiskFullError
from tests.tiny import TINY_PRESET, generate_tiny_world, tiny_training_options

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_tiny_world(tmp_path_factory.mktemp("ckfaults")) / "train"


def train(data_root, out_dir, *extra):
    opts = tiny_training_options(
        data_root, out_dir, "LOG_DEST", "file", "TRAIN.AUTO_RESUME", "True", *extra
    )
    return trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump())


def garbage(out_dir, iterations):
    paths = [checkpoint_path(str(out_dir), it) for it in iterations]
    os.makedirs(os.path.dirname(paths[0]), exist_ok=True)
    for path in paths:
        Path(path).write_bytes(b"garbage!")
    return paths


def state_at(iteration, size=1000):
    return {
        "format": checkpoint.FORMAT,
        "model": {"w": torch.zeros(size)},
        "optimizer": {},
        "position": {"epoch": 0, "iter_in_epoch": iteration, "global_iter": iteration},
        "rng": [],
        "config": "",
    }


def test_garbage_checkpoints_are_set_aside_and_the_run_keeps_its_own(data_root, tmp_path):
    bad = garbage(tmp_path, [120, 130, 140])
    assert train(data_root, tmp_path, "OPTIM.MAX_ITER", "4", "TRAIN.CHECKPOINT_ITERS", "2") == 0
    log = (tmp_path / "stdout.log").read_text()
    for path in bad:
        assert not os.path.exists(path) and os.path.isfile(path + ".corrupt")  # kept, renamed
        assert f"checkpoint {path} is unreadable" in log and f"moved aside to {path}.corrupt" in log
    assert "no readable checkpoint in" in log
    kept = list_checkpoints(str(tmp_path))
    assert kept[-1][0] == 4
    read_training_checkpoint(kept[-1][1])
    # the requeued run continues from the run's own checkpoint instead of starting over
    assert train(data_root, tmp_path, "OPTIM.MAX_ITER", "6", "TRAIN.CHECKPOINT_ITERS", "2") == 0
    assert "resumed from" in (tmp_path / "stdout.log").read_text()
    assert list_checkpoints(str(tmp_path))[-1][0] == 6


def test_rotation_never_deletes_the_newest_readable_checkpoint(tmp_path):
    save_checkpoint(str(tmp_path), state_at(10), keep=1)
    garbage(tmp_path, [20])  # a newer but unreadable file
    messages = []
    save_checkpoint(str(tmp_path), state_at(11), keep=1, report=messages.append)
    assert [it for it, _ in list_checkpoints(str(tmp_path))] == [11]
    assert len(messages) == 1 and "checkpoint_000000020.pth is unreadable" in messages[0]


def fake_free(monkeypatch, free_of):
    """shutil.disk_usage reports free_of() bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: Usage(10**12, 0, free_of()))


def test_shortage_stops_with_one_line_naming_folder_needed_and_free(tmp_path, monkeypatch):
    fake_free(monkeypatch, lambda: 3 * 2**20)
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(str(tmp_path), state_at(10, size=2**20), keep=2)  # 4 MiB of tensors
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "checkpoints") in message
    assert "5.0 MB needed, 3.0 MB free" in message
    assert list_checkpoints(str(tmp_path)) == []


def test_rotation_makes_room_from_the_oldest_surplus_checkpoint(tmp_path, monkeypatch):
    for iteration in (1, 2, 3):
        save_checkpoint(str(tmp_path), state_at(iteration), keep=3)
    # room for the new checkpoint (its size + 1 MiB) only once one old one is gone
    fake_free(monkeypatch, lambda: (3 - len(list_checkpoints(str(tmp_path)))) * 2**21)
    save_checkpoint(str(tmp_path), state_at(4), keep=3)
    assert [it for it, _ in list_checkpoints(str(tmp_path))] == [2, 3, 4]
    # with keep 1 nothing but the newest readable one may go, and it must stay
    fake_free(monkeypatch, lambda: 0)
    with pytest.raises(DiskFullError):
        save_checkpoint(str(tmp_path), state_at(5), keep=1)
    assert [it for it, _ in list_checkpoints(str(tmp_path))][-1] == 4


def short_write(obj, path):
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")


def test_torch_short_write_and_enospc_become_disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", short_write)
    with pytest.raises(DiskFullError, match=f"disk full in {tmp_path} while writing a.pth"):
        io.torch_save({}, str(tmp_path / "a.pth"))

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.np, "save", no_space)
    with pytest.raises(DiskFullError, match="while writing b.npy"):
        io.write_npy(str(tmp_path / "b.npy"), [1, 2])
    assert os.listdir(tmp_path) == []  # no temporary file left behind


def test_training_on_a_full_disk_exits_5_then_resumes(data_root, tmp_path, monkeypatch):
    real_save = torch.save
    monkeypatch.setattr(torch, "save", short_write)
    opts = ("OPTIM.MAX_ITER", "4", "TRAIN.CHECKPOINT_ITERS", "2")
    assert train(data_root, tmp_path, *opts) == EXIT_DISK_FULL == 5
    log = (tmp_path / "stdout.log").read_text()
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "stopping: disk full in" in errors[0] and "Traceback" not in log
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the requeued run goes on
    assert train(data_root, tmp_path, *opts) == 0
    assert list_checkpoints(str(tmp_path))[-1][0] == 4
