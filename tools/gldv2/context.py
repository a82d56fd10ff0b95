"""Google Landmarks v2 retrieval in the evaluation pipeline (EVAL.DATASET gldv2): mAP@100 of the
solution file's test queries.

The stores come from two extractor runs with ``EXTRACT.FORMAT gldv2``: ``EXTRACT.DATASET
gldv2_test`` over ``test.csv`` (queries) and ``EXTRACT.DATASET gldv2_index`` over ``index.csv``;
``gldv2_query`` / ``gldv2_database`` are accepted as well. ``Gldv2Context`` is the benchmark
(tools/retrieval/benchmark.py): it offers the evaluation methods the interface of
tools.retrieval.methods, like the revisitop context. Its single "protocol" is ``gldv2`` and its
metric ``mAP@100`` (in percent, like every number of results.json). The metric is the Kaggle one
(tools.gldv2.metric): the mean is over the queries of the solution, so a solution query missing from
the query store counts 0.
"""

import logging
import os

import numpy as np
import torch

from core.distributed import resolve_device
from tools.extraction.on_demand import LocalFeatureAccess
from tools.extraction.provenance import check_store_pair
from tools.extraction.stores import features_dir
from tools.gldv2.metric import (
    mean_average_precision_at_k,
    predictions_from_ranks,
    read_retrieval_solution,
)
from tools.knn.finite import naming_stores
from tools.knn.global_search import search
from tools.retrieval.benchmark import BenchmarkContext, query_descriptors, register_benchmark

logger = logging.getLogger(__name__)

GLDV2 = "gldv2"  # the EVAL.DATASET name, and the one "protocol" of the results
STORE_PAIRS = (("gldv2_test", "gldv2_index"), ("gldv2_query", "gldv2_database"))
METRIC = "mAP@100"
K = 100


def solution_queries(solution, query_store, source):
    """(query ids of the solution present in the store, their store rows); warns about the missing
    ones."""
    names = set(query_store.names)
    present = [query_id for query_id in solution if query_id in names]
    if not present:
        raise ValueError(
            f"none of the {len(solution)} queries of {source} is in {query_store.folder}; was the "
            f"query store extracted from the GLDv2 test set?"
        )
    if len(present) < len(solution):
        logger.warning(
            "%d of the %d queries of %s are not in %s: they count as AP 0",
            len(solution) - len(present),
            len(solution),
            source,
            query_store.folder,
        )
    return present, np.array(
        [query_store.index_of(query_id) for query_id in present], dtype=np.int64
    )


@register_benchmark(GLDV2)
class Gldv2Context(BenchmarkContext):
    """What the methods use on GLDv2: stores, the global top-k per query, local features, the
    metric."""

    ranking_depth = K  # the metric looks at the first K predictions only

    @classmethod
    def accepts(cls, dataset):
        return dataset == GLDV2

    @classmethod
    def store_pairs(cls, dataset):
        return STORE_PAIRS

    @classmethod
    def missing_stores(cls, folder, dataset):
        expected = " or ".join(f"{query} + {index}" for query, index in STORE_PAIRS)
        return (
            f"no GLDv2 feature stores {expected} under {folder} (EVAL.FEATURES_DIR; extract "
            f"test.csv and index.csv with EXTRACT.FORMAT gldv2 and those EXTRACT.DATASET names)"
        )

    @classmethod
    def build(cls, cfg):
        return build_gldv2_context(cfg)

    def __init__(
        self,
        cfg,
        solution,
        query_store,
        database_store,
        query_ids,
        query_rows,
        top_scores,
        top_indices,
    ):
        self.cfg = cfg
        self.solution = solution
        self.query_store = query_store
        self.database_store = database_store
        self.query_ids = list(query_ids)
        self.query_rows = np.asarray(query_rows, dtype=np.int64)
        self.top_scores = top_scores
        self.top_indices = top_indices
        self.device = torch.device(resolve_device(cfg.EVAL.DEVICE))
        self.local = LocalFeatureAccess(cfg, query_store, database_store, self.query_rows)
        self.cache = {}  # shared between methods (e.g. one ASMK index)
        self.title = (
            f"{GLDV2}: {len(self.query_ids)} queries of {len(solution)} in the solution, "
            f"{len(database_store)} index images"
        )

    def shortlists(self, size):
        """{"gldv2": per query, the first `size` images of the global ranking} (GLDv2 has no
        junk)."""
        return {GLDV2: [ranked[:size] for ranked in self.top_indices]}

    def results_from_ranking(self, ranks):
        """{"gldv2": mAP@100} of a ranking [n_queries, >= min(100, n_index)] (index rows, best
        first)."""
        predictions = predictions_from_ranks(ranks, self.query_ids, self.database_store.names, K)
        return {GLDV2: mean_average_precision_at_k(predictions, self.solution, K)}

    def global_results(self):
        return self.results_from_ranking(self.top_indices)

    def results_with_reranked(self, reranked):
        """mAP@100 when each query's shortlist was re-ordered; the global ranking continues after
        it."""
        ranks = []
        for ranked, shortlist in zip(self.top_indices, reranked[GLDV2]):
            shortlist = np.asarray(shortlist, dtype=np.int64)
            ranks.append(np.concatenate([shortlist, ranked[~np.isin(ranked, shortlist)]])[:K])
        return self.results_from_ranking(np.stack(ranks))

    def summarize(self, results):
        return {GLDV2: {METRIC: 100.0 * float(results[GLDV2])}}

    def search_again(self, queries, database):
        """A context whose global top-k is that of ``queries`` in ``database``, as deep."""
        cfg, derived = self.cfg, self.derived()
        derived.top_scores, derived.top_indices = search(
            queries,
            database,
            self.top_indices.shape[1],
            cfg.EVAL.CHUNK_SIZE,
            cfg.EVAL.DEVICE,
            cfg.EVAL.USE_FAISS,
        )
        return derived


def build_gldv2_context(cfg):
    """The Gldv2Context of the stores under features_dir(cfg) and EVAL.SOLUTION_FILE."""
    if not cfg.EVAL.SOLUTION_FILE or not os.path.isfile(cfg.EVAL.SOLUTION_FILE):
        raise FileNotFoundError(
            f"EVAL.SOLUTION_FILE {cfg.EVAL.SOLUTION_FILE!r}: no such file (EVAL.DATASET gldv2 "
            f"needs the solution file, retrieval_solution_v2.1.csv)"
        )
    solution = read_retrieval_solution(cfg.EVAL.SOLUTION_FILE)
    query_store, database_store = Gldv2Context.open_stores(features_dir(cfg), GLDV2)
    check_store_pair(query_store, database_store)
    query_ids, query_rows = solution_queries(solution, query_store, cfg.EVAL.SOLUTION_FILE)
    queries = query_descriptors(query_store, query_rows)
    depth = max(K, cfg.SV.SHORTLIST, cfg.EVAL.SEARCH_TOPK)
    database, e = database_store.global_descriptors(), cfg.EVAL
    with naming_stores(query_store, query_rows, database_store):
        top_scores, top_indices = search(
            queries, database, depth, e.CHUNK_SIZE, e.DEVICE, e.USE_FAISS
        )
    return Gldv2Context(
        cfg, solution, query_store, database_store, query_ids, query_rows, top_scores, top_indices
    )
