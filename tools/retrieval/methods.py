"""Evaluation methods, benchmark-neutral: the registry, the context interface they use, dispatch and
the results table.

    register_method("my_rerank", my_rerank)  # my_rerank(context) -> raw results
    results = run_methods(context, ["global", "sv", "my_rerank"])  # {method: {protocol: {metric}}}
    print(format_table(results, context.title))

A method is a function of a context (``EvaluationContext`` below; each benchmark's context class is
registered in its own module: tools/retrieval/benchmark.py) that returns the benchmark's raw
results, typically through ``context.global_results()``, ``context.results_with_reranked(
shortlists)``, ``context.results_from_ranking(ranks)`` or, after new descriptors,
``context.search_again(queries, database).global_results()``; ``context.summarize`` turns them into
percentages. Built in here: ``global`` and ``sv`` (spatial verification of the global shortlist;
local features of a global-only database are extracted on demand). The others live in
tools/evaluation/methods/, one module per family; a new method is one module there that calls
``register_method`` (the package imports every module in itself).
"""

import logging
import time
from typing import Any, Protocol

import numpy as np

from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification

logger = logging.getLogger(__name__)


class EvaluationContext(Protocol):
    """What every method may use, on every benchmark."""

    cfg: Any  # the evaluation config (EVAL.*, SV.*, ASMK.*, ...)
    query_store: Any  # datasets.features.FeatureStore of the queries
    database_store: Any  # ... and of the database
    query_rows: np.ndarray  # [n_queries] the evaluated queries' rows in query_store
    query_descriptors: np.ndarray  # [n_queries, D] float32 global descriptors of those queries
    database_descriptors: np.ndarray  # [N, D] the database's global descriptors (memory-mapped)
    top_scores: np.ndarray  # [n_queries, depth] global scores of each query's top images
    top_indices: np.ndarray  # [n_queries, depth] their database rows, best first
    local: Any  # tools.extraction.on_demand.LocalFeatureAccess: query(q), database(row), prepare_*
    device: Any  # torch.device for re-ranking
    cache: dict  # shared between the methods of one evaluation (e.g. one ASMK index)
    title: str  # the table's first line
    ranking_depth: Any  # None: results_from_ranking needs whole rankings; else how many it reads

    def shortlists(self, size: int) -> dict:
        """{protocol: per query, the first `size` database rows of the global ranking (junk of the
        protocol left out)}."""

    def global_results(self) -> dict:
        """Raw results of the global ranking."""

    def results_with_reranked(self, reranked: dict) -> dict:
        """Raw results when each protocol's shortlist is re-ordered ({protocol: per query,
        rows})."""

    def results_from_ranking(self, ranks: np.ndarray) -> dict:
        """Raw results of a whole ranking [n_queries, >= ranking_depth] (database rows, best
        first)."""

    def summarize(self, results: dict) -> dict:
        """{protocol: {metric: percent}} of raw results."""

    def search_again(self, queries: np.ndarray, database: np.ndarray) -> "EvaluationContext":
        """A context like this one whose global ranking is that of ``queries`` [n_queries, D] in
        ``database`` [N, D] (expanded queries, an augmented database), as deep; local features
        shared, its own cache."""


METHODS = {}


def register_method(name, function):
    """Make EVAL.METHODS accept `name`; function(context) -> raw results."""
    METHODS[name] = function


def check_methods(names):
    """Raise ValueError naming the methods of EVAL.METHODS that are not registered."""
    unknown = [method for method in names if method not in METHODS]
    if unknown or not names:
        raise ValueError(
            f"EVAL.METHODS: unknown method(s) {', '.join(unknown) or '(none given)'}; available: "
            f"{', '.join(METHODS)}"
        )


def raw_results(context, names):
    """{method: raw results} of the named methods on one context, in order, each timed."""
    check_methods(names)
    results = {}
    for method in names:
        start = time.perf_counter()
        results[method] = METHODS[method](context)
        seconds = time.perf_counter() - start
        logger.info("%s: %.1f s", method, seconds)
        run = context.cache.setdefault("runs", {}).setdefault(method, {})
        run.update(seconds=seconds, queries_per_s=len(context.query_rows) / max(seconds, 1e-9))
    return results


def run_methods(context, names):
    """{method: {protocol: {metric: percent}}} of the named methods on one context."""
    raw = raw_results(context, names)
    return {method: context.summarize(results) for method, results in raw.items()}


def format_table(results, title=""):
    """One line per method and protocol (E / M / H, or gldv2): the metrics in percent."""
    metrics = list(next(iter(next(iter(results.values())).values())))
    width = max(len("method"), *(len(method) for method in results)) + 2
    lines = [title] if title else []
    lines.append(
        f"{'method':<{width}}{'protocol':<10}" + "".join(f"{metric:>9}" for metric in metrics)
    )
    for method, by_protocol in results.items():
        for protocol, values in by_protocol.items():
            lines.append(
                f"{method:<{width}}{protocol:<10}"
                + "".join(f"{values[metric]:>9.2f}" for metric in metrics)
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- built in
def evaluate_global(context):
    return context.global_results()


def evaluate_spatial_verification(context):
    """Re-rank SV.SHORTLIST images per query by inliers; a global-only store's shortlisted images
    are extracted."""
    cfg = context.cfg
    shortlists = context.shortlists(cfg.SV.SHORTLIST)
    rows = [
        np.asarray(ids, dtype=np.int64) for per_query in shortlists.values() for ids in per_query
    ]
    context.local.prepare_queries()
    context.local.prepare_database(
        np.unique(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    )
    reranked, _ = rerank_with_spatial_verification(
        shortlists,
        context.local.query,
        context.local.database,
        options_from_cfg(cfg),
        num_workers=cfg.SV.NUM_WORKERS,
        device=context.device,
    )
    return context.results_with_reranked(reranked)


register_method("global", evaluate_global)
register_method("sv", evaluate_spatial_verification)
