"""CPU training repeats bit for bit with TRAIN.CPU_THREADS, whatever thread count the process had
and whatever else loads the machine (the reduced demo config on the tiny world)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import trainer
from core.checkpoint import list_checkpoints, read_training_checkpoint
from core.config import load_cfg
from tests.tiny import generate_tiny_world

CI_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "synthetic" / "demo_ci.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate_tiny_world(tmp_path_factory.mktemp("determinism")) / "train"


def final_weights(data_root, out_dir, ambient_threads):
    opts = [
        "TRAIN.DATA_ROOT", str(data_root), "OUT_DIR", str(out_dir), "OPTIM.MAX_ITER", "8",
        "TRAIN.RETRIEVAL_EVAL", "False", "TRAIN.EVAL_PERIOD", "100",
    ]  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(ambient_threads)
    try:
        assert trainer.train_in_process(load_cfg(CI_CONFIG, opts).dump()) == 0
        assert torch.get_num_threads() == ambient_threads  # restored after training
    finally:
        torch.set_num_threads(before)
    return read_training_checkpoint(list_checkpoints(str(out_dir))[-1][1])["model"]


def test_demo_training_is_identical_across_thread_counts_and_load(data_root, tmp_path):
    assert load_cfg(CI_CONFIG).TRAIN.CPU_THREADS == 1
    quiet = final_weights(data_root, tmp_path / "quiet", ambient_threads=2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # another load on a core
    try:
        loaded = final_weights(data_root, tmp_path / "loaded", ambient_threads=3)
    finally:
        busy.kill()
        busy.wait()
    assert quiet.keys() == loaded.keys()
    for key in quiet:
        assert torch.equal(quiet[key], loaded[key]), key
