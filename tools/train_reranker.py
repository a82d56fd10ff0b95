"""Train the learned local re-ranker on a training-split feature store (docs/reranking.md):

    python tools/train_reranker.py --cfg configs/reranker/synthetic_demo.yaml \
        RERANKER.TRAIN.STORE STORE RERANKER.TRAIN.LABELS train_clean.csv OUT_DIR DIR
    torchrun --nproc_per_node=8 tools/train_reranker.py --cfg configs/reranker/FILE [KEY VALUE ...]

Mines the store (exact k-NN by global descriptor, anchors with enough positives), trains with binary
cross-entropy on the training loop of train_delg.py (checkpoints, exact resume with
TRAIN.AUTO_RESUME True, preemption signals, DDP, AMP, JSON log) and keeps OUT_DIR/reranker.pth: the
checkpoint and lambda / gamma chosen on held-out training landmarks. Exit codes as train_delg.py.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

from core.cli import load_cfg_or_exit, parse_args, run_reporting_errors  # noqa: E402
from tools.reranker.training import launch  # noqa: E402


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv=argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    return run_reporting_errors("launch", launch, cfg)


if __name__ == "__main__":
    sys.exit(main())
