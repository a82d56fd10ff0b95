"""Exact inner-product search over a database of global descriptors, one chunk of rows at a time.

The database may be a memory-mapped float16 or float32 array of any size: only ``chunk_size`` rows
are turned into a float32 tensor at once, so a 1M x 2048 database never sits in memory whole and the
[n_queries, n_db] score matrix is never formed. Scores go to consumers chunk by chunk (``TopK``
here, the rank counter of the evaluation).

Ranking order everywhere in the framework: score descending, ties by database index ascending, which
is what a stable argsort of the negated scores gives. ``order_keys`` turns (score, index) into one
int64 per item that sorts in exactly that order, so comparisons never have to special-case ties.
"""

import numpy as np
import torch

from core.distributed import resolve_device
from tools.knn.finite import check_finite, check_scores

_LOW_BITS = 0xFFFFFFFF


def order_keys(scores, indices):
    """int64 keys, larger = ranked earlier: (score descending, index ascending). scores float32,
    indices < 2**32.

    The float32 bit pattern is made order-preserving (negative floats have their magnitude bits
    flipped); -0.0 is folded into +0.0 first because the two compare equal. NaN has no place in a
    ranking and is rejected.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32) + np.float32(0.0)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a ranking needs comparable scores")
    bits = scores.view(np.int32)
    ordered = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits).astype(np.int64)
    return (ordered << 32) | (_LOW_BITS - np.asarray(indices, dtype=np.int64))


def torch_order_keys(scores, indices):
    """order_keys of a score tensor and the database indices of its items (a tensor broadcastable to
    it)."""
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 folds -0.0 into +0.0
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return (ordered << 32) | (_LOW_BITS - indices.to(torch.int64))


def locate(values, wanted):
    """(index in ``values`` of each wanted item, whether it is there at all) for a 1-D array of
    distinct values in any order; the index of an absent item is meaningless."""
    values, wanted = np.asarray(values), np.asarray(wanted)
    if not len(values):
        return np.zeros(len(wanted), dtype=np.int64), np.zeros(len(wanted), dtype=bool)
    order = np.argsort(values, kind="stable")
    at = order[np.minimum(np.searchsorted(values, wanted, sorter=order), len(values) - 1)]
    return at, values[at] == wanted


def first_k(scores, indices, k):
    """(scores, indices) of the k first items of each row in the ranking order, in no particular
    order.

    torch.topk alone keeps an arbitrary subset of the items tied at the k-th place; the rows where
    it had to choose (rare: exact duplicates) are selected again on order keys, which break ties by
    database index. Such a row is one whose (k + 1)-th best score equals its k-th: one topk of
    k + 1 finds them without another pass over the scores."""
    indices = indices.expand_as(scores)
    if k >= scores.shape[1]:
        values, best = torch.topk(scores, k, dim=1)
        return values, torch.gather(indices, 1, best)
    values, best = torch.topk(scores, k + 1, dim=1)
    cut = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1) if k else values[:0, 0]
    values, best = values[:, :k].contiguous(), best[:, :k].contiguous()
    if len(cut):
        _, best[cut] = torch.topk(torch_order_keys(scores[cut], indices[cut]), k, dim=1)
        values[cut] = torch.gather(scores[cut], 1, best[cut])
    return values, torch.gather(indices, 1, best)


def as_float32_rows(array, start, stop, device):
    """Rows start:stop of a (memory-mapped) array as a float32 tensor on device."""
    # a writable copy (memory maps are read-only)
    rows = np.array(array[start:stop], dtype=np.float32)
    return torch.from_numpy(rows).to(device, non_blocking=True)


def score_chunks(queries, database, chunk_size=65536, device="cpu"):
    """Yield (offset, scores [n_queries, rows] float32 tensor on device) over consecutive database
    chunks; a NaN or infinite descriptor raises NonFiniteDescriptors (tools/knn/finite.py)."""
    device = torch.device(resolve_device(device))
    queries = torch.from_numpy(np.array(queries, dtype=np.float32)).to(device)
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries {tuple(queries.shape)} and database {tuple(database.shape)} must be 2-D with "
            f"the same descriptor dimension"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    check_finite(queries, "query")
    for offset in range(0, database.shape[0], chunk_size):
        rows = as_float32_rows(database, offset, offset + chunk_size, device)
        scores = queries @ rows.T
        check_scores(scores, rows, offset)  # NonFiniteDescriptors naming the rows at fault
        yield offset, scores


class TopK:
    """Keeps the k first database items per query in the ranking order over chunks (ties at the k-th
    place included); ``result`` orders them."""

    def __init__(self, num_queries, k):
        self.k = int(k)
        self.scores = torch.zeros((num_queries, 0), dtype=torch.float32)
        self.indices = torch.zeros((num_queries, 0), dtype=torch.int64)

    def add(self, offset, scores):
        columns = torch.arange(offset, offset + scores.shape[1], device=scores.device).unsqueeze(0)
        chunk_scores, chunk_indices = first_k(scores.float(), columns, min(self.k, scores.shape[1]))
        merged_scores = torch.cat([self.scores, chunk_scores.cpu()], dim=1)
        merged_indices = torch.cat([self.indices, chunk_indices.cpu()], dim=1)
        self.scores, self.indices = first_k(
            merged_scores, merged_indices, min(self.k, merged_scores.shape[1])
        )

    def result(self):
        """(scores [n_q, k] float32, indices [n_q, k] int64), each row in ranking order."""
        scores, indices = self.scores.numpy(), self.indices.numpy()
        order = np.argsort(-order_keys(scores, indices), axis=1, kind="stable")
        return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def exact_search(queries, database, k, chunk_size=65536, device="cpu"):
    """Top-k database items per query by inner product: (scores [n_q, k], indices [n_q, k]), ranking
    order."""
    k = min(int(k), database.shape[0])
    top = TopK(len(queries), k)
    for offset, scores in score_chunks(queries, database, chunk_size, device):
        top.add(offset, scores)
    return top.result()


def faiss_search(queries, database, k, chunk_size=65536):
    """The same search through a faiss IndexFlatIP (exact; holds the database as float32 in
    memory)."""
    import faiss

    k = min(int(k), database.shape[0])
    check_finite(queries, "query")
    index = faiss.IndexFlatIP(database.shape[1])
    for offset in range(0, database.shape[0], chunk_size):
        rows = np.ascontiguousarray(database[offset : offset + chunk_size], dtype=np.float32)
        check_finite(rows, "database", offset)
        index.add(rows)
    scores, indices = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    # faiss orders by score alone, and which of the items tied at the k-th place it keeps is its own
    # choice
    order = np.argsort(-order_keys(scores, indices), axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(
        indices.astype(np.int64), order, 1
    )


def search(queries, database, k, chunk_size=65536, device="cpu", use_faiss=False):
    """Dispatch to faiss_search or exact_search."""
    if use_faiss:
        return faiss_search(queries, database, k, chunk_size)
    return exact_search(queries, database, k, chunk_size, device)
