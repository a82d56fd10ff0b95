"""The tiny settings the integration tests share: the synthetic CPU preset shrunk until a training
run or an extraction of the tiny synthetic world takes seconds."""

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from core import trainer
from core.config import load_cfg
from datasets.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = str(REPO / "configs" / "synthetic" / "delg_tiny_cpu.yaml")

# 32-d heads: a 32-d embedding and attention, 16-d local descriptors.
TINY_HEADS = [
    "MODEL.HEADS.REDUCTION_DIM",
    "32",
    "MODEL.LOCAL.ATTENTION_DIM",
    "32",
    "MODEL.LOCAL.DESCRIPTOR_DIM",
    "16",
]

# A quarter-width ResNet-18 with 32-d heads: a training step of 8 crops of 64 px takes milliseconds.
TINY_TRAINING = [
    "RESNET.WIDTH_PER_GROUP",
    "16",
    *TINY_HEADS,
    "TRAIN.VAL_FRACTION",
    "0.25",
    "TRAIN.BATCH_SIZE",
    "8",
    "TRAIN.IM_SIZE",
    "64",
    "TEST.BATCH_SIZE",
    "8",
    "TEST.IM_SIZE",
    "64",
    "DATA_LOADER.NUM_WORKERS",
    "0",
    "LOG_PERIOD",
    "1",
    "TRAIN.EVAL_PERIOD",
    "100",
]

# A quarter-width ResNet-18 (basic blocks).
TINY_R18 = [
    "MODEL.DEPTH",
    "18",
    "RESNET.TRANS_FUN",
    "basic_transform",
    "RESNET.WIDTH_PER_GROUP",
    "16",
]

# An untrained quarter-width ResNet-18, images of at most 112 px, two local scales and 100 features.
TINY_EXTRACTION = [
    *TINY_R18,
    "DEVICE",
    "cpu",
    "DATA_LOADER.NUM_WORKERS",
    "0",
    "EXTRACT.MAX_IMAGE_SIZE",
    "112",
    "EXTRACT.GLOBAL_SCALES",
    "[1.0]",
    "EXTRACT.LOCAL_SCALES",
    "[0.7071, 1.0]",
    "EXTRACT.MAX_FEATURES",
    "100",
    "EVAL.DEVICE",
    "cpu",
]


def tiny_training_options(data_root, out_dir, *extra):
    """Options of a seconds-long training run on `data_root` (a synthetic train folder); `extra`
    overrides."""
    return [*TINY_TRAINING, "TRAIN.DATA_ROOT", str(data_root), "OUT_DIR", str(out_dir), *extra]


def generate_tiny_world(root):
    """The tiny synthetic world in root/data: 8 landmarks x 6 training images, 4 queries, 30
    database images."""
    generate(Path(root) / "data", size="tiny", workers=1)
    return Path(root) / "data"


def extract_tiny_world(root, *extra):
    """Generate the tiny world in root/data and extract its test set into root/out with the tiny
    untrained model.

    Returns the options used, which evaluation and search reuse (they name the data, OUT_DIR and
    `extra`)."""
    # the extraction stack is only needed by these tests
    from tools.extraction.runner import run_extraction

    test = str(generate_tiny_world(root) / "test")
    options = [
        *TINY_EXTRACTION,
        "EXTRACT.DATA_ROOT",
        test,
        "EVAL.DATA_ROOT",
        test,
        "OUT_DIR",
        str(Path(root) / "out"),
        *extra,
    ]
    exit_code, _ = run_extraction(load_cfg(TINY_PRESET, options))
    assert exit_code == 0, f"the tiny extraction in {root} failed"
    return options


@contextmanager
def signal_at_step(count, signum=signal.SIGUSR1):
    """Within the block, the training loop's step number `count` sends this process `signum` (a
    preemption): the handler acts on it at the iteration boundary."""
    real_step = trainer.train_step
    steps = {"count": 0}

    def step_then_signal(*args, **kwargs):
        steps["count"] += 1
        if steps["count"] == count:
            os.kill(os.getpid(), signum)
        return real_step(*args, **kwargs)

    trainer.train_step = step_then_signal
    try:
        yield
    finally:
        trainer.train_step = real_step


def run_benchmark(name, args, cwd):
    """Run tools/benchmark_<name>.py with `args` in `cwd`, check that it exited 0, and return its
    output lines (the headline last)."""
    command = [sys.executable, str(REPO / "tools" / f"benchmark_{name}.py"), *args]
    finished = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished.stdout.strip().splitlines()
