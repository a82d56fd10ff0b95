"""The revisitop evaluation pipeline: feature stores + ground truth -> global search -> re-ranking -> E/M/H table.

    results = evaluate(cfg)     # {method: {protocol: {metric: percent}}}, also printed and written to results.json

One chunked pass over the database serves every method: it keeps each query's top EVAL.SEARCH_TOPK images (the
shortlists) and counts, for every relevant image, how many images rank above it, so the global ranking's metrics
are exact over the whole database (1M distractors included) without ever sorting it. Re-ranking methods permute a
shortlist; positives outside it keep their position (see metrics._positions_in_protocol).

Methods are functions ``method(context) -> {protocol: (mAP, aps, mP@k, P@k)}`` in METHODS; ``register_method``
adds more (the ASMK methods live with ASMK).
"""

import logging
import os

import numpy as np

from core.io import write_json
from datasets.features import FeatureStoreError, open_store
from datasets.revisitop import gnd_path, load_ground_truth
from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification
from tools.retrieval.global_search import TopK, faiss_search, order_keys, resolve_device, score_chunks
from tools.revisitop.metrics import RelevantRankCounter, protocol_results_from_ranks, relevant_items, summarize
from tools.revisitop.protocols import PROTOCOLS, protocol_gnds

logger = logging.getLogger(__name__)

DISTRACTOR_SUFFIX = "+1m"
_PROVENANCE_IGNORED = ("signature", "dataset", "checkpoint")  # differ legitimately between a run's stores


class ProvenanceMismatch(ValueError):
    """Query and database features come from different models or settings."""


# ------------------------------------------------------------------------------------------------ inputs
def load_gnd(path):
    """The ground-truth dict (imlist, qimlist, gnd) of a gnd_<name>.pkl, read without running code."""
    return load_ground_truth(path)


def split_dataset_name(name):
    """'roxford5k+1m' -> ('roxford5k', True); 'rparis6k' -> ('rparis6k', False)."""
    if name.endswith(DISTRACTOR_SUFFIX):
        return name[: -len(DISTRACTOR_SUFFIX)], True
    return name, False


def features_dir(cfg):
    return cfg.EVAL.FEATURES_DIR or cfg.EXTRACT.OUTPUT_DIR or os.path.join(cfg.OUT_DIR, "features")


def open_stores(folder, dataset):
    """(query store, database store): ``<dataset>_query`` / ``<dataset>_database``; for X+1m the stores of X
    are used when no X+1m stores exist (the extractor names its stores after EXTRACT.DATASET)."""
    base, _ = split_dataset_name(dataset)
    for name in dict.fromkeys([dataset, base]):
        query, database = (os.path.join(folder, f"{name}_{part}") for part in ("query", "database"))
        if os.path.isdir(query) and os.path.isdir(database):
            return open_store(query), open_store(database)
    raise FileNotFoundError(f"no feature stores {dataset}_query / {dataset}_database under {folder} "
                            f"(EVAL.FEATURES_DIR; run tools/extractor.py first)")


def _first_difference(left, right, path=""):
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right)):
            found = _first_difference(left.get(key), right.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if left == right else (path, left, right)


def check_provenance(query_store, database_store):
    """Refuse stores whose provenance (model config, checkpoint hash, scales, ...) differs; name the key."""
    query = {key: value for key, value in query_store.provenance.items() if key not in _PROVENANCE_IGNORED}
    database = {key: value for key, value in database_store.provenance.items() if key not in _PROVENANCE_IGNORED}
    difference = _first_difference(query, database)
    if difference:
        key, query_value, database_value = difference
        raise ProvenanceMismatch(f"{query_store.folder} and {database_store.folder} come from different extractions: "
                                 f"provenance {key} is {query_value!r} for the queries but {database_value!r} for the "
                                 f"database")


def align_ground_truth(ground_truth, query_store, database_store, with_distractors, source):
    """(query rows of the store in gnd order, gnd with indices into the database store's rows)."""
    query_rows = np.array([_row(query_store, name, source) for name in ground_truth["qimlist"]], dtype=np.int64)
    database_rows = np.array([_row(database_store, name, source) for name in ground_truth["imlist"]], dtype=np.int64)
    extra = len(database_store) - len(database_rows)
    if extra and not with_distractors:
        raise ValueError(f"{database_store.folder} holds {extra} images beyond the {len(database_rows)} of {source}; "
                         f"evaluate it as a '{DISTRACTOR_SUFFIX}' dataset (EVAL.DATASET)")
    if with_distractors and not extra:
        logger.warning("%s: EVAL.DATASET asks for distractors but the database holds only the benchmark's images",
                       database_store.folder)
    gnd = [{key: database_rows[np.asarray(entry[key], dtype=np.int64)] for key in ("easy", "hard", "junk")}
           for entry in ground_truth["gnd"]]
    return query_rows, gnd


def _row(store, name, source):
    try:
        return store.index_of(name)
    except FeatureStoreError:
        raise FeatureStoreError(f"{store.folder} has no image {name!r}, which {source} lists") from None


# ------------------------------------------------------------------------------------------------ search
def global_pass(query_descriptors, database_descriptors, gnd_raw, topk, chunk_size, device, use_faiss=False):
    """One pass over the database: (RelevantRanks, top scores [n_q, k], top indices [n_q, k])."""
    items = relevant_items(gnd_raw)
    item_scores = [np.asarray(database_descriptors[ids], dtype=np.float32) @ query_descriptors[query]
                   for query, ids in enumerate(items)]
    counter = RelevantRankCounter(items, item_scores, len(database_descriptors))
    top = TopK(len(query_descriptors), min(topk, len(database_descriptors)))
    for offset, scores in score_chunks(query_descriptors, database_descriptors, chunk_size, device):
        counter.patch(offset, scores)
        counter.add(offset, scores)
        if not use_faiss:
            top.add(offset, scores)
    if use_faiss:
        top_scores, top_indices = faiss_search(query_descriptors, database_descriptors, topk, chunk_size)
    else:
        top_scores, top_indices = top.result()
    return counter.result(), top_scores, top_indices


class EvaluationContext:
    """What every method may use: the aligned ground truth, the stores, the global pass and the config."""

    def __init__(self, cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices):
        self.cfg, self.gnd, self.kappas = cfg, gnd, tuple(cfg.EVAL.KAPPAS)
        self.query_store, self.database_store, self.query_rows = query_store, database_store, query_rows
        self.relevant, self.top_scores, self.top_indices = relevant, top_scores, top_indices
        self.device = resolve_device(cfg.EVAL.DEVICE)

    def shortlists(self, size):
        """{protocol: per query, the first `size` images of the global ranking that are not junk there}."""
        lists = {}
        for protocol, gnd in protocol_gnds(self.gnd).items():
            lists[protocol] = []
            for query, entry in enumerate(gnd):
                ranked = self.top_indices[query]
                lists[protocol].append(ranked[~np.isin(ranked, entry["junk"])][:size])
        short = min(len(ids) for per_query in lists.values() for ids in per_query)
        if short < size and len(self.top_indices[0]) < len(self.database_store):
            logger.warning("a shortlist holds only %d images (< %d): raise EVAL.SEARCH_TOPK", short, size)
        return lists

    def results_with_reranked(self, reranked):
        """Protocol results when each protocol's shortlist was re-ordered ({protocol: per query, indices})."""
        with_keys = {}
        for protocol, per_query in reranked.items():
            with_keys[protocol] = []
            for query, ids in enumerate(per_query):
                score_of = dict(zip(self.top_indices[query].tolist(), self.top_scores[query].tolist()))
                scores = np.array([score_of[int(index)] for index in ids], dtype=np.float32)
                with_keys[protocol].append((ids, order_keys(scores, ids)))
        return protocol_results_from_ranks(self.relevant, self.gnd, self.kappas, with_keys)

    def local_features(self, store, row):
        features = store.local_at(int(row))
        return features["locations"], features["descriptors"]


# ------------------------------------------------------------------------------------------------ methods
def evaluate_global(context):
    return protocol_results_from_ranks(context.relevant, context.gnd, context.kappas)


def evaluate_spatial_verification(context):
    for store in (context.query_store, context.database_store):
        if not store.has_local:
            raise ValueError(f"{store.folder} has no local features: method 'sv' needs them (EXTRACT.LOCAL True)")
    cfg = context.cfg
    reranked, _ = rerank_with_spatial_verification(
        context.shortlists(cfg.SV.SHORTLIST),
        lambda query: context.local_features(context.query_store, context.query_rows[query]),
        lambda row: context.local_features(context.database_store, row),
        options_from_cfg(cfg), num_workers=cfg.SV.NUM_WORKERS, device=context.device)
    return context.results_with_reranked(reranked)


METHODS = {"global": evaluate_global, "sv": evaluate_spatial_verification}
PLANNED_METHODS = ("asmk", "asmk_rerank")  # registered by the ASMK code; skipped with a warning until then


def register_method(name, function):
    """Make EVAL.METHODS accept `name`; function(context) -> {protocol: (mAP, aps, mP@k, P@k)}."""
    METHODS[name] = function


# ------------------------------------------------------------------------------------------------ report
def format_table(results, title=""):
    """One line per method and protocol: mAP and mP@k in percent."""
    metrics = list(next(iter(next(iter(results.values())).values())))
    lines = [title] if title else []
    lines.append(f"{'method':<14}{'protocol':<10}" + "".join(f"{metric:>8}" for metric in metrics))
    for method, by_protocol in results.items():
        for protocol in PROTOCOLS:
            values = by_protocol[protocol]
            lines.append(f"{method:<14}{protocol:<10}" + "".join(f"{values[metric]:>8.2f}" for metric in metrics))
    return "\n".join(lines)


def evaluate(cfg):
    """Run EVAL.METHODS on EVAL.DATASET; print the table, write OUT_DIR/results.json; return the results."""
    unknown = [method for method in cfg.EVAL.METHODS if method not in METHODS and method not in PLANNED_METHODS]
    if unknown:
        raise ValueError(f"EVAL.METHODS: unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    methods = [method for method in cfg.EVAL.METHODS if method in METHODS]
    for method in sorted(set(cfg.EVAL.METHODS) - set(methods)):
        logger.warning("EVAL.METHODS: %s is not available in this build (not registered); skipped", method)
    base, with_distractors = split_dataset_name(cfg.EVAL.DATASET)
    gnd_file = gnd_path(cfg.EVAL.DATA_ROOT, base)
    ground_truth = load_gnd(gnd_file)
    query_store, database_store = open_stores(features_dir(cfg), cfg.EVAL.DATASET)
    check_provenance(query_store, database_store)
    query_rows, gnd = align_ground_truth(ground_truth, query_store, database_store, with_distractors, gnd_file)
    queries = np.asarray(query_store.global_descriptors(), dtype=np.float32)[query_rows]
    # deep enough that every protocol's shortlist is full after its junk is taken out
    depth = max(cfg.EVAL.SEARCH_TOPK, cfg.SV.SHORTLIST + max(len(entry["junk"]) + len(entry["easy"]) +
                                                            len(entry["hard"]) for entry in gnd))
    relevant, top_scores, top_indices = global_pass(queries, database_store.global_descriptors(), gnd, depth,
                                                    cfg.EVAL.CHUNK_SIZE, cfg.EVAL.DEVICE, cfg.EVAL.USE_FAISS)
    context = EvaluationContext(cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices)
    results = {}
    for method in methods:
        results[method] = summarize(METHODS[method](context), context.kappas)
    title = f"{cfg.EVAL.DATASET}: {len(query_rows)} queries, {len(database_store)} database images"
    print(format_table(results, title), flush=True)
    write_json(os.path.join(cfg.OUT_DIR, "results.json"), results)
    return results
