"""Training checkpoints: atomic save, rotation, newest-readable lookup and the state an exact resume
needs.

A checkpoint is OUT_DIR/checkpoints/checkpoint_<global iteration>.pth, written to a temporary file
and renamed, so a crash leaves either the old set or the new file whole. It holds only tensors,
numbers, strings, lists and dicts (RNG states are converted to tensors), so
``torch.load(weights_only=True)`` reads it: no pickled objects.
"""

import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import yaml

from core.io import check_free_space, torch_save
from core.nested import flatten
from core.weights import refusal_reason

CHECKPOINT_DIR = "checkpoints"
FORMAT = "delg-training-checkpoint"
_NAME = re.compile(r"checkpoint_(\d+)\.pth$")
CORRUPT_SUFFIX = ".corrupt"
_REQUIRED = ("format", "model", "optimizer", "position", "rng", "config")


@dataclass(frozen=True)
class Position:
    """Where training stands: the epoch under way, the batches of it already consumed, and their
    global count."""

    epoch: int
    iter_in_epoch: int
    global_iter: int

    def as_dict(self):
        return {
            "epoch": self.epoch,
            "iter_in_epoch": self.iter_in_epoch,
            "global_iter": self.global_iter,
        }


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""

    def __init__(self, path, reason=None):
        super().__init__(path if reason is None else f"{path}: {reason}")
        self.reason = reason


# -------------------------------------------------------------------------------------------- files
def checkpoint_path(out_dir, global_iter):
    return os.path.join(out_dir, CHECKPOINT_DIR, f"checkpoint_{global_iter:09d}.pth")


def list_checkpoints(out_dir):
    """[(global iteration, path)] of the checkpoints in out_dir, oldest first (readable or not)."""
    folder = os.path.join(out_dir, CHECKPOINT_DIR)
    if not os.path.isdir(folder):
        return []
    found = [
        (int(m.group(1)), os.path.join(folder, name))
        for name in os.listdir(folder)
        if (m := _NAME.match(name))
    ]
    return sorted(found)


def set_aside(path, reason, report):
    """Rename an unreadable checkpoint to <path>.corrupt (never deleted: it may be worth a look) so
    that neither resume nor rotation counts it; report(message) names it in one line."""
    target = path + CORRUPT_SUFFIX
    number = 1
    while os.path.exists(target):
        number += 1
        target = f"{path}{CORRUPT_SUFFIX}{number}"
    os.replace(path, target)
    report(f"checkpoint {path} is unreadable ({reason}); moved aside to {target}")
    return target


def readable_checkpoints(out_dir, report):
    """[(global iteration, path)] of the checkpoints that read back, oldest first; the others are
    set aside (set_aside). The check memory-maps each file, so it costs little for large ones, and a
    file is checked once per process unless it changes."""
    readable = []
    for iteration, path in list_checkpoints(out_dir):
        try:
            _check_once(path)
        except CheckpointError as error:
            set_aside(path, error.reason, report)
            continue
        readable.append((iteration, path))
    return readable


_CHECKED = set()  # (path, size, mtime) of files that read back whole


def _check_once(path):
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        read_training_checkpoint(path, mmap=True)
        _CHECKED.add(key)


def save_checkpoint(out_dir, state, keep, report=print):
    """Write state atomically as the checkpoint of its global iteration, keep the newest `keep`;
    return the path.

    Unreadable checkpoints are set aside first, so they neither count as newer nor survive in place
    of readable ones. Before writing, the free space is checked against the checkpoint's size: the
    oldest checkpoints that rotation would delete anyway are removed first when that makes room
    (never the newest readable one), and a shortage raises DiskFullError (core.io).
    """
    path = checkpoint_path(out_dir, state["position"]["global_iter"])
    readable = [entry for entry in readable_checkpoints(out_dir, report) if entry[1] != path]
    keep = max(keep, 1)
    needed = _estimated_size(state, readable)
    surplus = readable[: min(len(readable) - (keep - 1), len(readable) - 1)]
    folder = os.path.dirname(path)
    while surplus and shutil.disk_usage(folder).free < needed:
        _, oldest = surplus.pop(0)
        os.remove(oldest)
        readable = readable[1:]
    check_free_space(folder, needed, f"checkpoint {os.path.basename(path)}")
    torch_save(state, path)
    _check_once(path)
    for _, old in readable[: max(len(readable) - (keep - 1), 0)]:
        os.remove(old)
    return path


def _estimated_size(state, readable):
    """Bytes the checkpoint will take: its tensors' bytes or the newest readable checkpoint's size,
    whichever is larger, plus 1 MiB for the archive's structure and the config text."""
    previous = os.path.getsize(readable[-1][1]) if readable else 0
    return max(_tensor_bytes(state), previous) + 2**20


def _tensor_bytes(value):
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def read_training_checkpoint(path, mmap=False):
    """Load a training checkpoint (weights_only) and check it is complete; raise CheckpointError
    otherwise. mmap only maps the tensors (a cheap check that the file reads back)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:  # Python objects: refused, never run
        raise CheckpointError(path, f"refused: {refusal_reason(error)}") from None
    except Exception as error:  # truncated zip, bad magic, I/O errors
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(path, f"{type(error).__name__}: {first_line}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            path, f"not a training checkpoint of this framework (no format '{FORMAT}')"
        )
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise CheckpointError(path, f"incomplete training checkpoint, missing {', '.join(missing)}")
    return state


def newest_readable_checkpoint(out_dir, report):
    """(path, state) of the newest checkpoint that reads back whole, or (None, None) when there is
    none.

    Unreadable newer files (a truncated copy, a disk error, garbage) are set aside as *.corrupt and
    named through report(message).
    """
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            return path, read_training_checkpoint(path)
        except CheckpointError as error:
            set_aside(path, error.reason, report)
    return None, None


# -------------------------------------------------------------------------------------------- state
def training_state(model, optimizer, scaler, position, rng_states, class_ids, config_text):
    """The dict written as a checkpoint; rng_states holds one capture_rng_state() per process, in
    rank order."""
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "position": position.as_dict(),
        "rng": rng_states,
        "class_ids": torch.as_tensor(list(class_ids), dtype=torch.int64),
        "config": config_text,
    }


def restore_training_state(
    state, model, optimizer, scaler, class_ids, epoch_iters, path="checkpoint"
):
    """Load model, optimiser and scaler from a checkpoint dict of the same run and return its
    Position.

    The run must have the same classes and epoch length, or the position would mean other batches.
    """
    saved_ids = state["class_ids"].tolist()
    if saved_ids != list(class_ids):
        raise CheckpointError(
            f"{path} was trained on {len(saved_ids)} classes that differ from the {len(class_ids)} "
            "classes of the current data; resume with the same data or start a new OUT_DIR"
        )
    position = Position(**state["position"])
    if (
        position.iter_in_epoch >= epoch_iters
        or position.epoch * epoch_iters + position.iter_in_epoch != position.global_iter
    ):
        raise CheckpointError(
            f"{path} stopped at epoch {position.epoch + 1} iteration {position.iter_in_epoch} "
            f"(global {position.global_iter}), which does not fit epochs of {epoch_iters} "
            "iterations; resume with the same TRAIN.BATCH_SIZE, number of processes and data"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return position


def capture_rng_state():
    """This process's torch, CUDA, NumPy and Python RNG states, all as tensors."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    assert np_kind == "MT19937"
    py_version, py_internal, py_gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos_gauss": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_cached_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "python_version": torch.tensor(py_version, dtype=torch.int64),
        "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss_next": torch.tensor(
            [py_gauss_next is not None, py_gauss_next or 0.0], dtype=torch.float64
        ),
    }


def restore_process_rng(rng_states, rank, world_size, report):
    """Restore this process's RNG states from the per-process list of a checkpoint (process 0's when
    the number of processes changed, which report(message) notes)."""
    if len(rng_states) != world_size:
        report(
            f"the checkpoint holds RNG states of {len(rng_states)} processes, this run has "
            f"{world_size}: all take process 0's"
        )
        rank = 0
    restore_rng_state(rng_states[rank])


def restore_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    pos, has_gauss = (int(v) for v in state["numpy_pos_gauss"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, has_gauss, float(state["numpy_cached_gauss"])))
    has_next, gauss_next = state["python_gauss_next"].tolist()
    internal = tuple(int(v) for v in state["python_internal"].tolist())
    random.setstate((int(state["python_version"]), internal, gauss_next if has_next else None))


# ----------------------------------------------------------------------------------- config changes
def config_differences(saved_text, current_text):
    """[(key, saved value, current value)] for every key whose value differs between two dumped
    configs."""
    saved = flatten(yaml.safe_load(saved_text) or {}, keep_empty=False)
    current = flatten(yaml.safe_load(current_text) or {}, keep_empty=False)
    missing = "<absent>"
    return [
        (key, saved.get(key, missing), current.get(key, missing))
        for key in sorted(set(saved) | set(current))
        if saved.get(key, missing) != current.get(key, missing)
    ]
