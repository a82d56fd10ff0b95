"""Evaluation methods that re-rank with global descriptors only (tools/rerank, docs/reranking.md).

    qe            alpha-QE: the queries expanded from their RERANK.QE_K first database images,
                  then a second search of the whole database
    dba           alpha-DBA: the whole database augmented from its RERANK.DBA_K nearest database
                  descriptors (once; cached beside the store), searched with the plain queries
    dba_qe        both: queries expanded on the augmented database, then searched in it
    superglobal   SuperGlobal re-ranking of the first RERANK.SG_SHORTLIST images of the global
                  ranking (per protocol with junk left out, or shared: RERANK.SG_CONVENTION)
    E+R           an expansion E (qe, dba, dba_qe) and then the shortlist re-ranker R (sv,
                  asmk_rerank) on the expanded global ranking, e.g. dba_qe+sv

The rule for compositions is the one above: an expansion first, then one shortlist re-ranker;
EVAL.METHODS refuses other names and lists the valid ones. An expansion's methods share one
expanded ranking (context.cache): dba_qe and dba_qe+sv search once. The expanded ranking is the
benchmark's ``context.search_again(queries, database)`` (revisitop: the exact ranks of every
relevant image over the whole database, +1M distractors included; GLDv2: the new top-k), so sv and
asmk_rerank run on it unchanged. Each method records the settings it used in
``context.cache["runs"][name]["settings"]``; results.json holds them under "runs" with the timings.
"""

import logging
import os

import numpy as np

from tools.rerank.dba_cache import cached_augmentation
from tools.rerank.query_expansion import alpha_query_expansion
from tools.rerank.superglobal import reranked_order, superglobal_rerank
from tools.retrieval.methods import METHODS, register_method

logger = logging.getLogger(__name__)

EXPANSIONS = ("qe", "dba", "dba_qe")
SHORTLIST_RERANKERS = ("sv", "asmk_rerank")
CONVENTIONS = ("protocol", "shared")


def record_settings(context, name, settings):
    context.cache.setdefault("runs", {}).setdefault(name, {})["settings"] = settings


def dba_cache_root(cfg, store):
    """RERANK.DBA_CACHE_DIR, else the folder beside the store: <store>.dba."""
    return cfg.RERANK.DBA_CACHE_DIR or os.path.normpath(store.folder) + ".dba"


def augmented_database(context):
    """The alpha-DBA database (memory-mapped), computed once per store content and parameters."""
    if "dba_database" not in context.cache:
        cfg, store = context.cfg, context.database_store
        context.cache["dba_database"], _ = cached_augmentation(
            context.database_descriptors,
            store.array_sha256("global"),
            dba_cache_root(cfg, store),
            cfg.RERANK.DBA_K,
            cfg.RERANK.DBA_ALPHA,
            cfg.RERANK.NEGATIVE,
            cfg.RERANK.DBA_CHUNK,
            context.device,
        )
    return context.cache["dba_database"]


def expanded_queries(context, database):
    cfg = context.cfg
    return alpha_query_expansion(
        context.query_descriptors,
        database,
        cfg.RERANK.QE_K,
        cfg.RERANK.QE_ALPHA,
        cfg.RERANK.NEGATIVE,
        cfg.EVAL.CHUNK_SIZE,
        context.device,
    )


def expansion_settings(cfg, expansion):
    settings = {"negative": cfg.RERANK.NEGATIVE}
    if expansion in ("qe", "dba_qe"):
        settings.update(qe_k=cfg.RERANK.QE_K, qe_alpha=cfg.RERANK.QE_ALPHA)
    if expansion in ("dba", "dba_qe"):
        settings.update(dba_k=cfg.RERANK.DBA_K, dba_alpha=cfg.RERANK.DBA_ALPHA)
    return settings


def expanded_context(context, expansion):
    """The context of an expansion's ranking (qe, dba or dba_qe), built once per evaluation."""
    key = f"expanded:{expansion}"
    if key not in context.cache:
        if expansion == "qe":
            database = context.database_descriptors
            queries = expanded_queries(context, database)
        else:
            database = augmented_database(context)
            queries = context.query_descriptors
            if expansion == "dba_qe":
                queries = expanded_queries(context, database)
        logger.info("%s: searching the database again with the expanded descriptors", expansion)
        context.cache[key] = context.search_again(queries, database)
    return context.cache[key]


def expansion_method(expansion, reranker=None):
    """method(context) for an expansion alone or followed by a shortlist re-ranker."""
    name = expansion if reranker is None else f"{expansion}+{reranker}"

    def method(context):
        settings = expansion_settings(context.cfg, expansion)
        if reranker is not None:
            settings["then"] = reranker
        record_settings(context, name, settings)
        derived = expanded_context(context, expansion)
        if reranker is None:
            return derived.global_results()
        return METHODS[reranker](derived)

    method.__name__ = f"evaluate_{name.replace('+', '_then_')}"
    return method


# -------------------------------------------------------------------------------------- SuperGlobal
def superglobal_shortlists(context, size, convention):
    """{protocol: per query, the rows SuperGlobal re-ranks}: protocol = the first `size` non-junk
    images of each protocol (like sv); shared = the first `size` of the global ranking for every
    protocol, junk kept (the public code's convention)."""
    if convention == "protocol":
        return context.shortlists(size)
    if convention == "shared":
        first = [np.asarray(ranked[:size], dtype=np.int64) for ranked in context.top_indices]
        return {protocol: first for protocol in context.shortlists(1)}
    raise ValueError(
        f"RERANK.SG_CONVENTION is {convention!r}; expected one of {', '.join(CONVENTIONS)}"
    )


def evaluate_superglobal(context):
    cfg = context.cfg.RERANK
    record_settings(
        context,
        "superglobal",
        {"M": cfg.SG_SHORTLIST, "K": cfg.SG_K, "beta": cfg.SG_BETA, "shortlist": cfg.SG_CONVENTION},
    )
    shortlists = superglobal_shortlists(context, cfg.SG_SHORTLIST, cfg.SG_CONVENTION)
    queries, database = context.query_descriptors, context.database_descriptors
    reranked, done = {}, {}
    for protocol, per_query in shortlists.items():
        if id(per_query) not in done:  # the shared convention re-ranks one list for all
            scores = superglobal_rerank(
                queries, database, per_query, cfg.SG_K, cfg.SG_BETA, context.device
            )
            done[id(per_query)] = [reranked_order(*pair) for pair in zip(per_query, scores)]
        reranked[protocol] = done[id(per_query)]
    return context.results_with_reranked(reranked)


def method_names():
    """Every name this module registers, in order."""
    names = [*EXPANSIONS, "superglobal"]
    names += [
        f"{expansion}+{reranker}" for expansion in EXPANSIONS for reranker in SHORTLIST_RERANKERS
    ]
    return names


for _expansion in EXPANSIONS:
    register_method(_expansion, expansion_method(_expansion))
register_method("superglobal", evaluate_superglobal)
for _expansion in EXPANSIONS:
    for _reranker in SHORTLIST_RERANKERS:
        register_method(f"{_expansion}+{_reranker}", expansion_method(_expansion, _reranker))
