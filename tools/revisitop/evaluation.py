"""The evaluation pipeline: feature stores + ground truth -> global search -> re-ranking -> table
and results.json.

    # {method: {protocol: {metric: percent}}}, also printed and written to results.json
    results = evaluate(cfg)

EVAL.DATASET picks the benchmark: revisitop (roxford5k, rparis6k, synth; '+1m' for distractors) with
the Easy / Medium / Hard protocols and mAP, mP@k, or ``gldv2`` with mAP@100 from EVAL.SOLUTION_FILE
(tools/retrieval/gldv2_evaluation.py). Either way a context offers the methods one interface.

Revisitop: one chunked pass over the database serves every method: it keeps each query's top
EVAL.SEARCH_TOPK
images (the shortlists) and counts, for every relevant image, how many images rank above it, so the
global ranking's metrics are exact over the whole database (1M distractors included) without ever
sorting it. Re-ranking methods permute a shortlist; positives outside it keep their position (see
metrics._positions_in_protocol).

Methods are functions ``method(context) -> raw results`` in METHODS (revisitop: {protocol: (mAP,
aps, mP@k, P@k)}; GLDv2: {"gldv2": mAP@100}); ``register_method`` adds more. Built in: global, sv
(spatial verification; local features of a global-only database, e.g. +1M distractors, are extracted
on demand for the shortlisted images only, see tools/extraction/on_demand.py), asmk and asmk_rerank
(tools/revisitop/asmk_methods.py).
"""

import logging
import os
import time

import numpy as np

from core.io import write_json
from datasets.features import FeatureStoreError, open_store
from datasets.revisitop import gnd_path, load_ground_truth
from tools.extraction.on_demand import (
    LOCAL_ONLY_KEYS,
    RUN_KEYS,
    LocalFeatureAccess,
    ProvenanceMismatch,
    provenance_difference,
)
from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification
from tools.retrieval.gldv2_evaluation import (
    GLDV2,
    Gldv2Context,
    open_gldv2_stores,
    solution_queries,
)
from tools.retrieval.gldv2_evaluation import K as GLDV2_K
from tools.retrieval.gldv2_metric import read_retrieval_solution
from tools.retrieval.global_search import TopK, order_keys, resolve_device, score_chunks, search
from tools.revisitop.asmk_methods import ASMK_METHODS
from tools.revisitop.metrics import (
    RelevantRankCounter,
    compute_map,
    locate,
    protocol_results_from_ranks,
    relevant_items,
    summarize,
)
from tools.revisitop.protocols import protocol_gnd, protocol_gnds

logger = logging.getLogger(__name__)

DISTRACTOR_SUFFIX = "+1m"


# ------------------------------------------------------------------------------------------- inputs
def load_gnd(path):
    """The ground-truth dict (imlist, qimlist, gnd) of a gnd_<name>.pkl, read without running
    code."""
    return load_ground_truth(path)


def split_dataset_name(name):
    """'roxford5k+1m' -> ('roxford5k', True); 'rparis6k' -> ('rparis6k', False)."""
    if name.endswith(DISTRACTOR_SUFFIX):
        return name[: -len(DISTRACTOR_SUFFIX)], True
    return name, False


def features_dir(cfg):
    return cfg.EVAL.FEATURES_DIR or cfg.EXTRACT.OUTPUT_DIR or os.path.join(cfg.OUT_DIR, "features")


def open_stores(folder, dataset):
    """(query store, database store): ``<dataset>_query`` / ``<dataset>_database``; for X+1m the
    stores of X are used when no X+1m stores exist (the extractor names its stores after
    EXTRACT.DATASET)."""
    base, _ = split_dataset_name(dataset)
    for name in dict.fromkeys([dataset, base]):
        query, database = (os.path.join(folder, f"{name}_{part}") for part in ("query", "database"))
        if os.path.isdir(query) and os.path.isdir(database):
            return open_store(query), open_store(database)
    raise FileNotFoundError(
        f"no feature stores {dataset}_query / {dataset}_database under {folder} "
        f"(EVAL.FEATURES_DIR; run tools/extractor.py first)"
    )


def check_provenance(query_store, database_store):
    """Refuse stores whose provenance (model config, checkpoint hash, scales, ...) differs; name the
    key.

    Settings of local features are compared only when both stores hold local features: a global-only
    database (+1M distractors) legitimately records other local settings than its queries.
    """
    both_local = query_store.has_local and database_store.has_local
    ignored = RUN_KEYS if both_local else RUN_KEYS + LOCAL_ONLY_KEYS
    difference = provenance_difference(query_store.provenance, database_store.provenance, ignored)
    if difference:
        key, query_value, database_value = difference
        raise ProvenanceMismatch(
            f"{query_store.folder} and {database_store.folder} come from different extractions: "
            f"provenance {key} is {query_value!r} for the queries but {database_value!r} for the "
            f"database"
        )


def align_ground_truth(ground_truth, query_store, database_store, with_distractors, source):
    """(query rows of the store in gnd order, gnd with indices into the database store's rows)."""
    query_rows = np.array(
        [_row(query_store, name, source) for name in ground_truth["qimlist"]], dtype=np.int64
    )
    database_rows = np.array(
        [_row(database_store, name, source) for name in ground_truth["imlist"]], dtype=np.int64
    )
    extra = len(database_store) - len(database_rows)
    if extra and not with_distractors:
        raise ValueError(
            f"{database_store.folder} holds {extra} images beyond the {len(database_rows)} of "
            f"{source}; "
            f"evaluate it as a '{DISTRACTOR_SUFFIX}' dataset (EVAL.DATASET)"
        )
    if with_distractors and not extra:
        logger.warning(
            "%s: EVAL.DATASET asks for distractors but the database holds only the benchmark's "
            "images",
            database_store.folder,
        )
    gnd = [
        {
            key: database_rows[np.asarray(entry[key], dtype=np.int64)]
            for key in ("easy", "hard", "junk")
        }
        for entry in ground_truth["gnd"]
    ]
    return query_rows, gnd


def _row(store, name, source):
    try:
        return store.index_of(name)
    except FeatureStoreError:
        raise FeatureStoreError(
            f"{store.folder} has no image {name!r}, which {source} lists"
        ) from None


# ------------------------------------------------------------------------------------------- search
def global_pass(query_descriptors, database_descriptors, gnd_raw, topk, chunk_size, device):
    """One pass over the database: (RelevantRanks, top scores [n_q, k], top indices [n_q, k]). The
    rank counter needs every chunk's scores, so the top k come from the same chunks (EVAL.USE_FAISS
    would only score twice)."""
    items = relevant_items(gnd_raw)
    item_scores = [
        np.asarray(database_descriptors[ids], dtype=np.float32) @ query_descriptors[query]
        for query, ids in enumerate(items)
    ]
    counter = RelevantRankCounter(items, item_scores, len(database_descriptors))
    top = TopK(len(query_descriptors), min(topk, len(database_descriptors)))
    for offset, scores in score_chunks(query_descriptors, database_descriptors, chunk_size, device):
        counter.patch(offset, scores)
        counter.add(offset, scores)
        top.add(offset, scores)
    top_scores, top_indices = top.result()
    return counter.result(), top_scores, top_indices


class EvaluationContext:
    """What every method may use on revisitop: the aligned ground truth, the stores, the global
    pass, local features (``local``: LocalFeatureAccess), a cache shared between methods, and the
    config."""

    ranking_depth = None  # results_from_ranking needs whole rankings

    def __init__(
        self, cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices
    ):
        self.cfg, self.gnd, self.kappas = cfg, gnd, tuple(cfg.EVAL.KAPPAS)
        self.query_store, self.database_store, self.query_rows = (
            query_store,
            database_store,
            query_rows,
        )
        self.relevant, self.top_scores, self.top_indices = relevant, top_scores, top_indices
        self.device = resolve_device(cfg.EVAL.DEVICE)
        self.local = LocalFeatureAccess(cfg, query_store, database_store, query_rows)
        self.cache = {}
        self.title = (
            f"{cfg.EVAL.DATASET}: {len(query_rows)} queries, {len(database_store)} database images"
        )

    def shortlists(self, size):
        """{protocol: per query, the first `size` images of the global ranking that are not junk
        there}."""
        lists = {}
        for protocol, gnd in protocol_gnds(self.gnd).items():
            lists[protocol] = []
            for query, entry in enumerate(gnd):
                ranked = self.top_indices[query]
                lists[protocol].append(ranked[~np.isin(ranked, entry["junk"])][:size])
        short = min(len(ids) for per_query in lists.values() for ids in per_query)
        if short < size and len(self.top_indices[0]) < len(self.database_store):
            logger.warning(
                "a shortlist holds only %d images (< %d): raise EVAL.SEARCH_TOPK", short, size
            )
        return lists

    def global_results(self):
        return protocol_results_from_ranks(self.relevant, self.gnd, self.kappas)

    def results_with_reranked(self, reranked):
        """Protocol results when each protocol's shortlist was re-ordered ({protocol: per query,
        indices})."""
        with_keys = {}
        for protocol, per_query in reranked.items():
            with_keys[protocol] = []
            for query, ids in enumerate(per_query):
                ids = np.asarray(ids, dtype=np.int64)
                at, found = locate(self.top_indices[query], ids)
                if not found.all():
                    raise ValueError(
                        f"query {query}: a re-ranked image is not in the global shortlist"
                    )
                with_keys[protocol].append((ids, order_keys(self.top_scores[query][at], ids)))
        return protocol_results_from_ranks(self.relevant, self.gnd, self.kappas, with_keys)

    def results_from_ranking(self, ranks):
        """Protocol results of another method's whole ranking [n_queries, n_database] (database
        rows, best first)."""
        ranks = np.asarray(ranks).T
        return {
            protocol: compute_map(ranks, protocol_gnd(self.gnd, protocol), self.kappas)
            for protocol in protocol_gnds(self.gnd)
        }

    def summarize(self, results):
        return summarize(results, self.kappas)


def build_revisitop_context(cfg):
    base, with_distractors = split_dataset_name(cfg.EVAL.DATASET)
    gnd_file = gnd_path(cfg.EVAL.DATA_ROOT, base)
    ground_truth = load_gnd(gnd_file)
    query_store, database_store = open_stores(features_dir(cfg), cfg.EVAL.DATASET)
    check_provenance(query_store, database_store)
    query_rows, gnd = align_ground_truth(
        ground_truth, query_store, database_store, with_distractors, gnd_file
    )
    queries = np.asarray(query_store.global_descriptors(), dtype=np.float32)[query_rows]
    # deep enough that every protocol's shortlist is full after its junk is taken out
    depth = max(
        cfg.EVAL.SEARCH_TOPK,
        cfg.SV.SHORTLIST
        + max(len(entry["junk"]) + len(entry["easy"]) + len(entry["hard"]) for entry in gnd),
    )
    relevant, top_scores, top_indices = global_pass(
        queries,
        database_store.global_descriptors(),
        gnd,
        depth,
        cfg.EVAL.CHUNK_SIZE,
        cfg.EVAL.DEVICE,
    )
    return EvaluationContext(
        cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices
    )


def build_gldv2_context(cfg):
    if not cfg.EVAL.SOLUTION_FILE or not os.path.isfile(cfg.EVAL.SOLUTION_FILE):
        raise FileNotFoundError(
            f"EVAL.SOLUTION_FILE {cfg.EVAL.SOLUTION_FILE!r}: no such file (EVAL.DATASET gldv2 "
            f"needs the solution file, retrieval_solution_v2.1.csv)"
        )
    solution = read_retrieval_solution(cfg.EVAL.SOLUTION_FILE)
    query_store, database_store = open_gldv2_stores(features_dir(cfg))
    check_provenance(query_store, database_store)
    query_ids, query_rows = solution_queries(solution, query_store, cfg.EVAL.SOLUTION_FILE)
    queries = np.asarray(query_store.global_descriptors(), dtype=np.float32)[query_rows]
    depth = max(GLDV2_K, cfg.SV.SHORTLIST, cfg.EVAL.SEARCH_TOPK)
    top_scores, top_indices = search(
        queries,
        database_store.global_descriptors(),
        depth,
        cfg.EVAL.CHUNK_SIZE,
        cfg.EVAL.DEVICE,
        cfg.EVAL.USE_FAISS,
    )
    return Gldv2Context(
        cfg, solution, query_store, database_store, query_ids, query_rows, top_scores, top_indices
    )


# ------------------------------------------------------------------------------------------ methods
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


METHODS = {"global": evaluate_global, "sv": evaluate_spatial_verification}


def register_method(name, function):
    """Make EVAL.METHODS accept `name`; function(context) -> raw results (see the module
    docstring)."""
    METHODS[name] = function


for _name, _function in ASMK_METHODS.items():
    register_method(_name, _function)


# ------------------------------------------------------------------------------------------- report
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


def build_context(cfg):
    """The evaluation context of EVAL.DATASET: GLDv2 or a revisitop dataset."""
    return build_gldv2_context(cfg) if cfg.EVAL.DATASET == GLDV2 else build_revisitop_context(cfg)


def evaluate(cfg):
    """Run EVAL.METHODS on EVAL.DATASET; print the table, write OUT_DIR/results.json; return the
    results."""
    unknown = [method for method in cfg.EVAL.METHODS if method not in METHODS]
    if unknown or not cfg.EVAL.METHODS:
        raise ValueError(
            f"EVAL.METHODS: unknown method(s) {', '.join(unknown) or '(none given)'}; available: "
            f"{', '.join(METHODS)}"
        )
    context = build_context(cfg)
    results = {}
    for method in cfg.EVAL.METHODS:
        start = time.perf_counter()
        results[method] = context.summarize(METHODS[method](context))
        logger.info("%s: %.1f s", method, time.perf_counter() - start)
    print(format_table(results, context.title), flush=True)
    write_json(os.path.join(cfg.OUT_DIR, "results.json"), results)
    return results
