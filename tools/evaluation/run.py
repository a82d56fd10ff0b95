"""The evaluation entry point: feature stores + ground truth -> global search -> re-ranking ->
table and results.json.

    # {method: {protocol: {metric: percent}}}, also printed and written to results.json
    results = evaluate(cfg)

EVAL.DATASET picks the benchmark's context class (tools/evaluation/benchmarks.py): revisitop
(roxford5k, rparis6k, synth; '+1m' for distractors) with the Easy / Medium / Hard protocols and
mAP, mP@k (tools/revisitop/context.py), or ``gldv2`` with mAP@100 from EVAL.SOLUTION_FILE
(tools/gldv2/context.py). Either way the methods of EVAL.METHODS see one interface
(tools/retrieval/methods.py: the registry, dispatch and the table): global and sv are built in
there, the others are the modules of tools/evaluation/methods/, all imported with that package.
"""

import tools.evaluation.methods  # noqa: F401  (registers every method module of the package)
from tools.evaluation.benchmarks import benchmark_of
from tools.evaluation.results_file import prepare_results, write_results
from tools.retrieval.methods import check_methods, format_table, run_methods


def build_context(cfg):
    """The evaluation context of EVAL.DATASET, built by its benchmark's context class."""
    return benchmark_of(cfg.EVAL.DATASET).build(cfg)


def evaluate(cfg):
    """Run EVAL.METHODS on EVAL.DATASET; print the table, write OUT_DIR/results.json (merged per
    method with an earlier one: tools/evaluation/results_file.py); return the results."""
    check_methods(cfg.EVAL.METHODS)
    earlier = prepare_results(cfg)  # before the work: a read-only OUT_DIR fails now, not after
    context = build_context(cfg)
    results = run_methods(context, cfg.EVAL.METHODS)
    print(format_table(results, context.title), flush=True)
    # "runs": per method its seconds, queries/s and settings (tools/retrieval/methods.raw_results)
    write_results(cfg, earlier, results, context.cache.get("runs", {}))
    return results
