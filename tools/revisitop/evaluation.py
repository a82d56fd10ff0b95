"""The evaluation entry point: feature stores + ground truth -> global search -> re-ranking ->
table and results.json.

    # {method: {protocol: {metric: percent}}}, also printed and written to results.json
    results = evaluate(cfg)

EVAL.DATASET picks the benchmark's context: revisitop (roxford5k, rparis6k, synth; '+1m' for
distractors) with the Easy / Medium / Hard protocols and mAP, mP@k (tools/revisitop/context.py), or
``gldv2`` with mAP@100 from EVAL.SOLUTION_FILE (tools/retrieval/gldv2_evaluation.py). Either way the
methods of EVAL.METHODS see one interface (tools/retrieval/methods.py: the registry, dispatch and
the table). This module imports every module that registers methods: global and sv
(tools/retrieval/methods.py), asmk and asmk_rerank (tools/revisitop/asmk_methods.py), qe, dba,
dba_qe, superglobal and their compositions (tools/revisitop/rerank_methods.py).
"""

from tools.extraction.stores import GLDV2
from tools.retrieval.gldv2_evaluation import build_gldv2_context
from tools.retrieval.methods import (
    METHODS,
    check_methods,
    format_table,
    register_method,
    run_methods,
)
from tools.revisitop import (
    asmk_methods,  # noqa: F401  (registers asmk, asmk_rerank)
    learned_methods,  # noqa: F401  (learned, learned_binary, E+learned)
    rerank_methods,  # noqa: F401  (qe, dba, dba_qe, superglobal, ...)
)
from tools.revisitop.context import build_revisitop_context, load_gnd
from tools.revisitop.results_file import prepare_results, write_results

# the registry's names, for modules that register methods through this module
__all__ = ["METHODS", "build_context", "evaluate", "format_table", "load_gnd", "register_method"]


def build_context(cfg):
    """The evaluation context of EVAL.DATASET: GLDv2 or a revisitop dataset."""
    return build_gldv2_context(cfg) if cfg.EVAL.DATASET == GLDV2 else build_revisitop_context(cfg)


def evaluate(cfg):
    """Run EVAL.METHODS on EVAL.DATASET; print the table, write OUT_DIR/results.json (merged per
    method with an earlier one: tools/revisitop/results_file.py); return the results."""
    check_methods(cfg.EVAL.METHODS)
    earlier = prepare_results(cfg)  # before the work: a read-only OUT_DIR fails now, not after
    context = build_context(cfg)
    results = run_methods(context, cfg.EVAL.METHODS)
    print(format_table(results, context.title), flush=True)
    # "runs": per method its seconds, queries/s and settings (tools/retrieval/methods.raw_results)
    write_results(cfg, earlier, results, context.cache.get("runs", {}))
    return results
