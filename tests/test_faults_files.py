"""Files the framework writes are shared as the umask says (atomic writes included), and a
code-running checkpoint is refused without torch's advice to load it unsafely."""

import os
import stat

import numpy as np
import pytest
import torch

from core import checkpoint
from core.checkpoint import CheckpointError, read_training_checkpoint, save_checkpoint
from core.config import dump_cfg, load_cfg
from core.io import torch_save, write_json, write_npy, write_text
from core.weights import WeightsError, read_checkpoint
from datasets.features import write_store


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def written_files(folder):
    load_cfg()
    write_text(str(folder / "a.txt"), "text")
    write_json(str(folder / "results.json"), {"map": 1.0})
    write_npy(str(folder / "array.npy"), np.zeros(3))
    torch_save({"w": torch.zeros(2)}, str(folder / "weights.pth"))
    dump_cfg(load_cfg(), str(folder))
    state = {
        "format": checkpoint.FORMAT,
        "model": {"w": torch.zeros(2)},
        "optimizer": {},
        "position": {"epoch": 0, "iter_in_epoch": 1, "global_iter": 1},
        "rng": [],
        "config": "",
    }
    save_checkpoint(str(folder), state, keep=1)
    write_store(str(folder / "store"), ["x"], global_descriptors=np.ones((1, 4)))
    return [path for path in folder.rglob("*") if path.is_file()]


def test_written_files_take_the_umask_mode(tmp_path, umask):
    files = written_files(tmp_path)
    assert len(files) == 8
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


class RunsCode:
    def __reduce__(self):
        return os.system, ("true",)


def test_code_running_checkpoint_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": RunsCode()}, path)
    for read, error_type in (
        (read_checkpoint, WeightsError),
        (read_training_checkpoint, CheckpointError),
    ):
        with pytest.raises(error_type) as caught:
            read(str(path))
        message = str(caught.value)
        assert str(path) in message and "posix.system" in message and "\n" not in message
        assert (
            "weights_only` set to `False`" not in message and "will likely succeed" not in message
        )
