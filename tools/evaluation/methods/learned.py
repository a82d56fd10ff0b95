"""Evaluation methods of the learned re-ranker (modeling/reranker.py; docs/reranking.md).

    learned          re-ranks the first RERANKER.SHORTLIST images of each protocol's global
                     ranking (junk left out: the shortlists of sv) with the model RERANKER.WEIGHTS
                     over the query's first RERANKER.N_QUERY local features and each database
                     image's float16 compact codes (its first RERANKER.N_DATABASE)
    learned_binary   the same with a binary model (RERANKER.BINARY_WEIGHTS, else RERANKER.WEIGHTS):
                     the database side is the packed sign codes of the model's projection
    E+learned        an expansion (qe, dba, dba_qe) first, e.g. dba_qe+learned

The final score is lam * global + (1 - lam) * sigmoid(gamma * logit), lam and gamma from
RERANKER.LAMBDA / GAMMA, or (when negative) the values recorded in the weights, chosen on held-out
training landmarks. The weights record the provenance of the features the model was trained on;
stores of another extraction are refused, naming the setting. Database images are read only as
compact codes (tools/rerank/compact_codes.py): built once beside a store with local features, and
compacted in memory from the on-demand local features of a global-only (+1M) database.
"""

import logging

import numpy as np
import torch

from core.distributed import resolve_device
from modeling.reranker_weights import load_reranker
from tools.evaluation.methods.expansion import EXPANSIONS, expansion_method, record_settings
from tools.extraction.provenance import GLOBAL_ONLY_KEYS, LOCAL_ONLY_KEYS, RUN_KEYS, require_same
from tools.knn.global_search import locate
from tools.rerank.compact_codes import (
    binary_codes,
    codes_from_reader,
    file_digest,
    float16_codes,
)
from tools.rerank.learned import pair_logits, query_batches, rerank_shortlists, shortlist_pairs
from tools.retrieval.methods import register_method

logger = logging.getLogger(__name__)

LEARNED = ("learned", "learned_binary")


def weights_path(cfg, binary):
    path = (cfg.RERANKER.BINARY_WEIGHTS or cfg.RERANKER.WEIGHTS) if binary else cfg.RERANKER.WEIGHTS
    if not path:
        key = "RERANKER.BINARY_WEIGHTS or RERANKER.WEIGHTS" if binary else "RERANKER.WEIGHTS"
        raise ValueError(f"{key}: empty; name a trained re-ranker (tools/train_reranker.py)")
    return path


def check_provenance(info, path, context):
    """Refuse stores whose features come from another extraction than the training features: local
    settings where a store holds local features (a global-only database's on-demand features are
    checked against the queries), global ones when the model has a global token."""
    uses_global = bool(info["config"].get("GLOBAL_TOKEN"))
    for store in (context.query_store, context.database_store):
        if store.has_local:
            ignoring = RUN_KEYS if uses_global else RUN_KEYS + GLOBAL_ONLY_KEYS
        elif uses_global:
            ignoring = RUN_KEYS + LOCAL_ONLY_KEYS
        else:
            continue
        require_same(
            info["provenance"],
            store.provenance,
            f"the re-ranker's training features ({path})",
            f"the store {store.folder}",
            ignoring=ignoring,
            hint="evaluate stores extracted like the training store, or train on them",
        )


def load_checked(context, binary):
    """(model on the evaluation device, info, weights path, device)."""
    cfg = context.cfg
    path = weights_path(cfg, binary)
    device = torch.device(resolve_device(cfg.RERANKER.DEVICE))
    model, info = load_reranker(path, device=device)
    if binary != bool(info["config"].get("BINARY")):
        raise ValueError(
            f"{path}: a {'binary' if info['config'].get('BINARY') else 'float'} re-ranker, but "
            f"{'learned_binary' if binary else 'learned'} needs a "
            f"{'binary' if binary else 'float'} one (RERANKER.BINARY in its training)"
        )
    check_provenance(info, path, context)
    return model, info, path, device


def database_codes(context, rows, count, dim):
    """Float16 compact codes of the database: the whole store's, on disk, when it holds local
    features; else those of ``rows`` from the on-demand local features (as sv reads them)."""
    store = context.database_store
    if store.has_local:
        return float16_codes(store, count, root=context.cfg.RERANKER.CODES_DIR)
    context.local.prepare_database(rows)
    return codes_from_reader(context.local.reader("database").local_at, rows, count, dim)


def shortlist_scores(context):
    """global_scores(query, rows) -> the global scores of those rows of the query's shortlist."""

    def scores(query, rows):
        at, found = locate(context.top_indices[query], rows)
        if not found.all():
            raise ValueError(f"query {query}: a shortlisted image is not in the global top images")
        return context.top_scores[query][at]

    return scores


def combination(cfg, info):
    lam = cfg.RERANKER.LAMBDA if cfg.RERANKER.LAMBDA >= 0 else info["lambda"]
    gamma = cfg.RERANKER.GAMMA if cfg.RERANKER.GAMMA >= 0 else info["gamma"]
    return float(lam), float(gamma)


def rerank_learned(context, binary):
    """{protocol: per query, the re-ranked shortlist} and the settings used."""
    cfg = context.cfg.RERANKER
    model, info, path, device = load_checked(context, binary)
    shortlists = context.shortlists(cfg.SHORTLIST)
    pairs = shortlist_pairs(shortlists)
    rows = np.unique(pairs[:, 1])
    codes = database_codes(context, rows, cfg.N_DATABASE, int(info["local_dim"]))
    if binary:
        codes = binary_codes(codes, coder(model, device), file_digest(path))
    uses_global = bool(info["config"].get("GLOBAL_TOKEN"))
    context.local.prepare_queries()
    query_reader = context.local.reader("query")
    queries = query_batches(
        lambda query: query_reader.local_at(context.query_rows[query]),
        len(context.query_rows),
        cfg.N_QUERY,
        torch.from_numpy(context.query_descriptors) if uses_global else None,
    )
    logits = pair_logits(
        model,
        queries,
        codes,
        pairs,
        cfg.BATCH_SIZE,
        device,
        coded=binary,
        database_globals=context.database_descriptors if uses_global else None,
    )
    lam, gamma = combination(context.cfg, info)
    settings = {
        "weights": path,
        "shortlist": cfg.SHORTLIST,
        "n_query": cfg.N_QUERY,
        "n_database": cfg.N_DATABASE,
        "lambda": lam,
        "gamma": gamma,
        "pairs": len(pairs),
        "codes": codes.folder or "in memory (on-demand local features)",
    }
    return rerank_shortlists(shortlists, shortlist_scores(context), logits, lam, gamma), settings


def coder(model, device):
    """descriptors [B, n, d] float32 numpy -> the binary model's +-1 codes, numpy."""

    @torch.no_grad()
    def code(descriptors):
        return model.database_codes(torch.from_numpy(descriptors).to(device)).cpu().numpy()

    return code


def learned_method(name, binary):
    def method(context):
        reranked, settings = rerank_learned(context, binary)
        record_settings(context, name, settings)
        return context.results_with_reranked(reranked)

    method.__name__ = f"evaluate_{name}"
    return method


for _name in LEARNED:
    register_method(_name, learned_method(_name, _name == "learned_binary"))
    for _expansion in EXPANSIONS:
        register_method(f"{_expansion}+{_name}", expansion_method(_expansion, _name))
