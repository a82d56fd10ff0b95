"""The ``asmk`` and ``asmk_rerank`` evaluation methods (ASMK over local features,
tools/rerank/asmk_search.py).

    asmk          ranks the whole database by ASMK similarity to each query (local features only)
    asmk_rerank   re-orders each query's global shortlist (the first SV.SHORTLIST images, junk of
                  the protocol left out: the shortlist spatial verification re-ranks) by ASMK
                  similarity; ties keep the global order

One AsmkIndex per evaluation serves both: whichever runs first builds it from the database store's
local features and the ASMK.* keys (codebook and inverted file read from ASMK.CACHE_DIR when an
earlier run left them), scores the queries against the database once, in batches of queries, and
leaves both results in ``context.cache``. The methods register themselves
(the package tools/evaluation/methods imports this module) and need only the context interface of
tools.retrieval.methods (cfg, database_store, query_rows, local, shortlists, ranking_depth,
results_from_ranking, results_with_reranked, cache).
"""

import logging
import time

import numpy as np

from tools.rerank.asmk_search import flatten_local, index_from_cfg
from tools.retrieval.methods import register_method

logger = logging.getLogger(__name__)

# query x database ASMK scores held in memory at a time (256 MB of float32)
SCORES_AT_ONCE = 1 << 26


def shared_index(context):
    """The evaluation's AsmkIndex, built (or read from the cache) on first use."""
    if "asmk_index" not in context.cache:
        cfg, store = context.cfg, context.database_store
        if not store.has_local:
            raise ValueError(
                f"{store.folder} holds no local features, and ASMK needs those of every database "
                "image (EXTRACT.LOCAL True); a global-only database such as +1M distractors can be "
                "re-ranked with 'sv', which extracts the shortlisted images' local features on "
                "demand"
            )
        context.cache["asmk_index"] = index_from_cfg(cfg, store)
    return context.cache["asmk_index"]


def _ranking(scores, depth):
    """Database indices [n, depth] by score descending, ties by index (the framework's ranking
    order)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :depth]


def asmk_pass(context):
    """(ASMK ranking [n_q, depth], {protocol: per query the shortlist re-ordered by ASMK}), computed
    once."""
    if "asmk_pass" not in context.cache:
        index = shared_index(context)
        start_time = time.perf_counter()
        shortlists = context.shortlists(context.cfg.SV.SHORTLIST)
        num_queries = len(context.query_rows)
        # a query store without local features: all queries extracted in one go
        context.local.prepare_queries()
        depth = min(context.ranking_depth or index.num_images, index.num_images)
        ranking = np.zeros((num_queries, depth), dtype=np.int64)
        reranked = {protocol: [None] * num_queries for protocol in shortlists}
        batch = max(1, SCORES_AT_ONCE // max(index.num_images, 1))
        for start in range(0, num_queries, batch):
            queries = range(start, min(start + batch, num_queries))
            descriptors, image_ids, count = flatten_local(
                [context.local.query(query)[1] for query in queries]
            )
            scores = index.score_matrix(descriptors, image_ids, num_queries=count)
            ranking[start : start + count] = _ranking(scores, depth)
            for protocol, per_query in shortlists.items():
                for row, query in enumerate(queries):
                    ids = np.asarray(per_query[query], dtype=np.int64)
                    reranked[protocol][query] = ids[np.argsort(-scores[row, ids], kind="stable")]
        logger.info(
            "ASMK: %d queries scored against %d database images in %.1f s",
            num_queries,
            index.num_images,
            time.perf_counter() - start_time,
        )
        context.cache["asmk_pass"] = ranking, reranked
    return context.cache["asmk_pass"]


def evaluate_asmk(context):
    ranking, _ = asmk_pass(context)
    return context.results_from_ranking(ranking)


def evaluate_asmk_rerank(context):
    _, reranked = asmk_pass(context)
    return context.results_with_reranked(reranked)


ASMK_METHODS = {"asmk": evaluate_asmk, "asmk_rerank": evaluate_asmk_rerank}
for _name, _function in ASMK_METHODS.items():
    register_method(_name, _function)
