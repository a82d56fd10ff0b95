"""Evaluate feature stores on revisitop (ROxford5k / RParis6k, +1M distractors), the synthetic set
or GLDv2.

    python tools/revisitop/evaluate.py --cfg configs/synthetic/delg_tiny_cpu.yaml [KEY VALUE ...]

Revisitop: reads EVAL.DATASET's ground truth (EVAL.DATA_ROOT/gnd_<name>.pkl) and the stores
<dataset>_query and <dataset>_database under EVAL.FEATURES_DIR (default EXTRACT.OUTPUT_DIR, else
OUT_DIR/features) and prints mAP and mP@k for Easy / Medium / Hard. EVAL.DATASET gldv2: the stores
gldv2_test and gldv2_index and EVAL.SOLUTION_FILE, mAP@100; any other registered benchmark
(tools/evaluation/benchmarks.py) by its own rules. The script is thin: tools/evaluation/run.py does
the work. EVAL.METHODS: global, sv (local features
of a global-only database are extracted on demand for the shortlisted images), asmk, asmk_rerank,
the global-only re-rankings qe, dba, dba_qe, superglobal and their combinations such as dba_qe+sv
(docs/reranking.md). Writes OUT_DIR/results.json, merged per method with an earlier one (its other
methods are kept; a printed line says which were replaced: tools/evaluation/results_file.py). Exit
codes: 2 for a mistake in the arguments or inputs (one line names it; an OUT_DIR that cannot be
written and a results.json that is not an evaluation's are found before the work), 5 when the
results did not fit on the disk.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

from core.cli import load_cfg_or_exit, parse_args, run_reporting_errors  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from tools.evaluation.run import evaluate  # noqa: E402


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], argv=argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts, "evaluation")
    setup_logging(cfg.OUT_DIR, is_main=True, to_file=cfg.LOG_DEST == "file")
    return run_reporting_errors("evaluation", _evaluate, cfg)


def _evaluate(cfg):
    evaluate(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
