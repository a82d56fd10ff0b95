"""Train a DELG model: ``python train_delg.py --cfg FILE [KEY VALUE ...]`` (see docs/training.md).

NUM_GPUS processes are started on this machine (CPU processes where there is no GPU); under torchrun
or srun this process is one of the job's processes. Exit codes: 0 finished or preempted after a
checkpoint, 2 config error, 3 too many non-finite losses in a row, 4 too many unreadable images,
5 a checkpoint did not fit on the disk.
"""

import sys

from core import distributed
from core.cli import load_cfg_or_exit, parse_args, run_reporting_errors
from core.trainer import train_in_process
from tools.revisitop.validation import build_retrieval_validator

# what the trainer evaluates besides its classifiers: module-level factories, so that spawned
# processes can import them
EVALUATOR_FACTORIES = [build_retrieval_validator]


def main():
    args = parse_args("Train a DELG model (global and local features).")
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    code = run_reporting_errors(
        "launch",
        distributed.launch,
        train_in_process,
        (cfg.dump(), EVALUATOR_FACTORIES),
        cfg.NUM_GPUS,
        cfg.HOST,
        cfg.PORT,
        cfg.DIST_BACKEND,
        cfg.DEVICE,
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
