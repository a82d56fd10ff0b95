"""Train a DELG model: ``python train_delg.py --cfg FILE [KEY VALUE ...]`` (see docs/training.md).

NUM_GPUS processes are started on this machine (CPU processes where there is no GPU); under torchrun
or srun this process is one of the job's processes. The files the run reads (TRAIN.WEIGHTS, the
data root and split files, the retrieval validation's ground truth) are checked before any process
starts. A mistake prints one line, ``train_delg error: <message>``. Exit codes: 0 finished or
preempted after a checkpoint, 2 a mistake in the config or the inputs, 3 too many non-finite losses
in a row, 4 too many unreadable images, 5 a checkpoint did not fit on the disk.
"""

import os
import sys

from core import distributed
from core.cli import parse_args, run_reporting_errors
from core.config import load_cfg
from core.trainer import train_in_process
from datasets.loader import train_data_root
from tools.revisitop.validation import build_retrieval_validator, check_retrieval_inputs

# what the trainer evaluates besides its classifiers: module-level factories, so that spawned
# processes can import them
EVALUATOR_FACTORIES = [build_retrieval_validator]


def check_training_inputs(cfg):
    """FileNotFoundError naming the key of the first input the run would miss, found in
    milliseconds instead of after reading the data set and building the model."""
    root = train_data_root(cfg)
    split = (
        cfg.TRAIN.SPLIT if os.path.isabs(cfg.TRAIN.SPLIT) else os.path.join(root, cfg.TRAIN.SPLIT)
    )
    test_root = cfg.TEST.DATA_ROOT or root
    test_split = os.path.join(test_root, cfg.TEST.SPLIT) if cfg.TEST.SPLIT else ""
    checks = [
        ("TRAIN.WEIGHTS", cfg.TRAIN.WEIGHTS, os.path.exists),
        ("TRAIN.DATA_ROOT", root, os.path.isdir),
        ("TRAIN.SPLIT", split, os.path.isfile),
        ("TEST.SPLIT", test_split, os.path.isfile),
    ]
    for key, path, exists in checks:
        if path and not exists(path):
            kind = "folder" if exists is os.path.isdir else "file"
            raise FileNotFoundError(f"{key}: no such {kind} {path}")
    check_retrieval_inputs(cfg)


def train(args):
    cfg = load_cfg(args.cfg_file, args.opts)
    check_training_inputs(cfg)
    return distributed.launch(
        train_in_process,
        (cfg.dump(), EVALUATOR_FACTORIES),
        cfg.NUM_GPUS,
        cfg.HOST,
        cfg.PORT,
        cfg.DIST_BACKEND,
        cfg.DEVICE,
    )


def main(argv=None):
    args = parse_args("Train a DELG model (global and local features).", argv=argv)
    return run_reporting_errors("train_delg", train, args)


if __name__ == "__main__":
    sys.exit(main())
