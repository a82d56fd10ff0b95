"""SuperGlobal re-ranking of a global shortlist (Shao et al., ICCV 2023), global descriptors only.

For one query q and its shortlist x_1..x_M (L2-normalised, in the initial order):
  1. refine every x_i from itself (weight 1) and its k nearest other shortlisted descriptors
     x_j (weight beta * s_ij, s_ij = x_i . x_j): d_i = sum_j w_j x_j / sum_j w_j (no
     re-normalisation); s_i = q . d_i;
  2. expand the query: q_e = the element-wise max of the k + 1 d_i with the best s_i (q itself not
     included); s'_i = q_e . d_i;
  3. the new score of x_i is (s_i + s'_i) / 2.
Ties (neighbours inside the shortlist, the k + 1 best d_i) keep the earliest shortlist positions,
like the framework's ranking order. Sorting the shortlist by the new score (ties by initial
position) gives the re-ranked order; images below the shortlist keep their order below it.

k = 0 and beta = 0 make the refinement the identity (d_i = x_i, s_i = q . x_i); the expansion
still adds the best image's similarity, s'_i = x_1 . x_i.
"""

import numpy as np
import torch

from tools.knn.global_search import first_k, resolve_device
from tools.rerank.query_expansion import gather_rows


def refine(shortlisted, k, beta):
    """d [M, d]: each row refined from itself and its k nearest other rows (weights 1, beta s)."""
    count = shortlisted.shape[0]
    k = min(int(k), count - 1)
    if k <= 0:
        return shortlisted.clone()
    similarities = shortlisted @ shortlisted.T
    similarities.fill_diagonal_(float("-inf"))
    positions = torch.arange(count, device=shortlisted.device).unsqueeze(0)
    values, neighbours = first_k(similarities, positions, k)
    weights = beta * values
    total = shortlisted.clone()
    for place in range(k):
        total += weights[:, place : place + 1] * shortlisted[neighbours[:, place]]
    return total / (1.0 + weights.sum(dim=1, keepdim=True))


def rerank_one(query, shortlisted, k, beta):
    """New scores [M] of one query's shortlisted descriptors [M, d] (tensors on one device)."""
    refined = refine(shortlisted, k, beta)
    scores = refined @ query
    count = min(int(k) + 1, refined.shape[0])
    positions = torch.arange(len(scores), device=scores.device).unsqueeze(0)
    _, best = first_k(scores.unsqueeze(0), positions, count)
    expanded = refined[best[0]].max(dim=0).values
    return (scores + refined @ expanded) / 2.0


def superglobal_rerank(queries, database, shortlist, k=9, beta=0.15, device="cpu"):
    """Re-ranked scores [n_q, M] float32 of each query's shortlist.

    queries [n_q, d] and database [n, d] L2-normalised NumPy arrays (the database may be
    memory-mapped; only the shortlisted rows are read); shortlist [n_q, M] database indices in the
    initial order (rows may be shorter lists when given as a list of arrays). k is the number of
    neighbours besides the image itself (K of the paper), beta the neighbours' weight factor."""
    if k < 0 or beta < 0:
        raise ValueError(f"SuperGlobal: k and beta must be >= 0, got k={k}, beta={beta}")
    device = torch.device(resolve_device(device))
    queries = torch.from_numpy(np.array(queries, dtype=np.float32)).to(device)
    results = []
    for query, ids in zip(queries, shortlist):
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            results.append(np.zeros(0, np.float32))
            continue
        shortlisted = gather_rows(database, ids[None], device)[0]
        results.append(rerank_one(query, shortlisted, k, beta).cpu().numpy())
    if results and len({len(row) for row in results}) == 1:
        return np.stack(results)
    return results


def reranked_order(shortlist, scores):
    """The shortlist sorted by the new scores, descending; ties keep the initial order."""
    ids = np.asarray(shortlist, dtype=np.int64)
    return ids[np.argsort(-np.asarray(scores), kind="stable")]
