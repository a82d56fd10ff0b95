"""The revisitop evaluation context: aligned ground truth, the stores and one pass over the
database that serves every method (tools/retrieval/methods.py describes the interface).

One chunked pass over the database keeps each query's top images (the shortlists) and counts, for
every relevant image, how many images rank above it, so the global ranking's metrics are exact over
the whole database (1M distractors included) without ever sorting it. Re-ranking methods permute a
shortlist; positives outside it keep their position (see metrics._positions_in_protocol).
"""

import logging

import numpy as np
import torch

from core.distributed import resolve_device
from datasets.features import FeatureStoreError
from datasets.revisitop import gnd_path, load_ground_truth
from tools.extraction.on_demand import LocalFeatureAccess
from tools.extraction.provenance import check_store_pair
from tools.extraction.stores import features_dir, part_store_names
from tools.knn.finite import NonFiniteDescriptors, check_finite, naming_stores, non_finite_rows
from tools.knn.global_search import TopK, locate, order_keys, score_chunks
from tools.retrieval.benchmark import BenchmarkContext, query_descriptors, register_benchmark
from tools.revisitop.metrics import (
    RelevantRankCounter,
    compute_map,
    protocol_results_from_ranks,
    relevant_items,
    summarize,
)
from tools.revisitop.protocols import protocol_gnd, protocol_gnds

logger = logging.getLogger(__name__)

DISTRACTOR_SUFFIX = "+1m"  # EVAL.DATASET X+1m: X with the revisitop 1M distractors


def split_dataset_name(name):
    """'roxford5k+1m' -> ('roxford5k', True); 'rparis6k' -> ('rparis6k', False)."""
    if name.endswith(DISTRACTOR_SUFFIX):
        return name[: -len(DISTRACTOR_SUFFIX)], True
    return name, False


# ------------------------------------------------------------------------------------------- inputs
def load_gnd(path):
    """The ground-truth dict (imlist, qimlist, gnd) of a gnd_<name>.pkl, read without running
    code."""
    return load_ground_truth(path)


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
            f"{source}; evaluate it as a '{DISTRACTOR_SUFFIX}' dataset (EVAL.DATASET)"
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
    would only score twice). A NaN or infinite descriptor raises NonFiniteDescriptors."""
    items = relevant_items(gnd_raw)
    check_finite(query_descriptors, "query")
    item_scores = []
    for query, ids in enumerate(items):
        rows = np.asarray(database_descriptors[ids], dtype=np.float32)
        if len(bad := non_finite_rows(rows)):
            raise NonFiniteDescriptors("database", ids[bad])
        item_scores.append(rows @ query_descriptors[query])
    counter = RelevantRankCounter(items, item_scores, len(database_descriptors))
    top = TopK(len(query_descriptors), min(topk, len(database_descriptors)))
    for offset, scores in score_chunks(query_descriptors, database_descriptors, chunk_size, device):
        counter.patch(offset, scores)
        counter.add(offset, scores)
        top.add(offset, scores)
    top_scores, top_indices = top.result()
    return counter.result(), top_scores, top_indices


@register_benchmark("revisitop")
class RevisitopContext(BenchmarkContext):
    """What every method may use on revisitop (tools.retrieval.methods.EvaluationContext): the
    aligned ground truth, the stores, the global pass, local features (``local``:
    LocalFeatureAccess), a cache shared between methods, and the config. The benchmark of every
    EVAL.DATASET another benchmark does not take: X reads EVAL.DATA_ROOT/gnd_X.pkl and the stores
    X_query / X_database; X+1m reads the X+1m_* stores when they exist, else those of X."""

    ranking_depth = None  # results_from_ranking needs whole rankings
    any_name = True

    @classmethod
    def accepts(cls, dataset):
        return True

    @classmethod
    def store_pairs(cls, dataset):
        base, _ = split_dataset_name(dataset)
        return tuple(part_store_names(name) for name in dict.fromkeys([dataset, base]))

    @classmethod
    def build(cls, cfg):
        return build_revisitop_context(cfg)

    def __init__(
        self, cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices
    ):
        self.cfg = cfg
        self.gnd = gnd
        self.kappas = tuple(cfg.EVAL.KAPPAS)
        self.query_store = query_store
        self.database_store = database_store
        self.query_rows = query_rows
        self.relevant = relevant
        self.top_scores = top_scores
        self.top_indices = top_indices
        self.device = torch.device(resolve_device(cfg.EVAL.DEVICE))
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

    def search_again(self, queries, database):
        """A context whose global ranking is that of ``queries`` in ``database``: the exact ranks
        of every relevant image over the whole database again, the top images as deep."""
        cfg, derived = self.cfg, self.derived()
        derived.relevant, derived.top_scores, derived.top_indices = global_pass(
            queries,
            database,
            self.gnd,
            self.top_indices.shape[1],
            cfg.EVAL.CHUNK_SIZE,
            cfg.EVAL.DEVICE,
        )
        return derived


def build_revisitop_context(cfg):
    """The RevisitopContext of EVAL.DATASET (a revisitop-format set, '+1m' for distractors)."""
    base, with_distractors = split_dataset_name(cfg.EVAL.DATASET)
    gnd_file = gnd_path(cfg.EVAL.DATA_ROOT, base)
    ground_truth = load_gnd(gnd_file)
    query_store, database_store = RevisitopContext.open_stores(features_dir(cfg), cfg.EVAL.DATASET)
    check_store_pair(query_store, database_store)
    query_rows, gnd = align_ground_truth(
        ground_truth, query_store, database_store, with_distractors, gnd_file
    )
    queries = query_descriptors(query_store, query_rows)
    # deep enough that every protocol's shortlist is full after its junk is taken out
    depth = max(
        cfg.EVAL.SEARCH_TOPK,
        cfg.SV.SHORTLIST
        + max(len(entry["junk"]) + len(entry["easy"]) + len(entry["hard"]) for entry in gnd),
    )
    database, e = database_store.global_descriptors(), cfg.EVAL
    with naming_stores(query_store, query_rows, database_store):
        relevant, top_scores, top_indices = global_pass(
            queries, database, gnd, depth, e.CHUNK_SIZE, e.DEVICE
        )
    return RevisitopContext(
        cfg, gnd, query_store, database_store, query_rows, relevant, top_scores, top_indices
    )
