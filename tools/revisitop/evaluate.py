"""Evaluate feature stores on revisitop (ROxford5k / RParis6k, +1M distractors), the synthetic set
or GLDv2.

    python tools/revisitop/evaluate.py --cfg configs/synthetic/delg_tiny_cpu.yaml [KEY VALUE ...]

Revisitop: reads EVAL.DATASET's ground truth (EVAL.DATA_ROOT/gnd_<name>.pkl) and the stores
<dataset>_query and <dataset>_database under EVAL.FEATURES_DIR (default EXTRACT.OUTPUT_DIR, else
OUT_DIR/features) and prints mAP and mP@k for Easy / Medium / Hard. EVAL.DATASET gldv2: the stores
gldv2_test and gldv2_index and EVAL.SOLUTION_FILE, mAP@100. EVAL.METHODS: global, sv (local features
of a global-only database are extracted on demand for the shortlisted images), asmk, asmk_rerank.
Writes OUT_DIR/results.json.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

from core.config import load_cfg_or_exit, parse_args  # noqa: E402
from core.distributed import LaunchError  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from datasets.features import FeatureStoreError  # noqa: E402
from datasets.revisitop import GroundTruthError  # noqa: E402
from datasets.safe_pickle import PickleReadError, UnsafePickleError  # noqa: E402
from tools.revisitop.evaluation import evaluate  # noqa: E402

_USER_ERRORS = (
    FileNotFoundError,
    FeatureStoreError,
    GroundTruthError,
    PickleReadError,
    UnsafePickleError,
    ValueError,
    LaunchError,  # DEVICE cuda without a GPU, when local features are extracted on demand
)


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv=argv)
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
