"""Evaluate feature stores on revisitop (ROxford5k / RParis6k, +1M distractors) or the synthetic set.

    python tools/revisitop/evaluate.py --cfg configs/synthetic/delg_tiny_cpu.yaml [KEY VALUE ...]

Reads EVAL.DATASET's ground truth (EVAL.DATA_ROOT/gnd_<name>.pkl) and the stores <dataset>_query and
<dataset>_database under EVAL.FEATURES_DIR (default EXTRACT.OUTPUT_DIR, else OUT_DIR/features), runs EVAL.METHODS
(global, sv, ...), prints mAP and mP@k for Easy / Medium / Hard and writes OUT_DIR/results.json.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

from core.config import load_cfg_or_exit, parse_args  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from datasets.features import FeatureStoreError  # noqa: E402
from datasets.revisitop import GroundTruthError  # noqa: E402
from datasets.safe_pickle import PickleReadError, UnsafePickleError  # noqa: E402
from tools.revisitop.evaluation import evaluate  # noqa: E402

_USER_ERRORS = (FileNotFoundError, FeatureStoreError, GroundTruthError, PickleReadError, UnsafePickleError, ValueError)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv=argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    setup_logging(cfg.OUT_DIR, is_main=True, to_file=cfg.LOG_DEST == "file")
    try:
        evaluate(cfg)
    except _USER_ERRORS as error:
        print(f"evaluation error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
