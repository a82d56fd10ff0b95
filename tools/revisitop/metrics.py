"""revisitop metrics: the benchmark's ``compute_map`` and a fast path from scores that never sorts
the database.

``compute_map(ranks, gnd, kappas)`` keeps the benchmark's signature and semantics (revisitop
python/evaluate.py): ranks [n_db, n_queries], 0-based; junk images are removed from the ranking
before AP; AP accumulates trapezoids; mP@k uses kq = min(max(1-based positive positions), k);
queries without positives get NaN and are left out of the means. One difference: the benchmark
crashes on a query whose ranking (a truncated ``ranks``) holds none of its positives; here such a
query scores AP 0 and P@k 0.

The fast path needs only the position of every *relevant* image (easy, hard or junk for some
protocol) in the ranking. ``RelevantRankCounter`` gets those positions from score chunks in O(n_db)
per query: each score falls into one of B uniform buckets spanning the query's relevant scores; a
histogram counts the images above each bucket, and only images that share a bucket with a relevant
image are compared exactly (by ``order_keys``). Ties are broken as in the whole framework: by
database index ascending, i.e. exactly like a stable argsort of -scores.
"""

import numpy as np
import torch

from tools.knn.global_search import locate, order_keys
from tools.revisitop.protocols import PROTOCOLS, protocol_gnds

DEFAULT_BUCKETS = 8192


# ------------------------------------------------------------------------------- the benchmark's AP
def compute_ap(ranks, nres):
    """AP from the sorted 0-based positions of the positives (junk removed) and the number of
    positives."""
    ranks = np.asarray(ranks, dtype=np.float64)
    found = np.arange(len(ranks), dtype=np.float64)
    precision_0 = np.divide(found, ranks, out=np.ones_like(ranks), where=ranks > 0)
    precision_1 = (found + 1.0) / (ranks + 1.0)
    return float(np.sum((precision_0 + precision_1) * (1.0 / nres) / 2.0))


def _precisions_at(positions, kappas):
    """P@k per kappa, positions 0-based sorted; kq = min(max(position) + 1, k) as in the
    benchmark."""
    if len(positions) == 0:
        return np.zeros(len(kappas))
    one_based = np.asarray(positions) + 1
    limits = np.minimum(one_based.max(), np.asarray(kappas))
    return np.array(
        [np.count_nonzero(one_based <= limit) / limit for limit in limits], dtype=np.float64
    )


def _mean_over_nonempty(aps, prs):
    nonempty = ~np.isnan(aps)
    if not nonempty.any():
        return float("nan"), np.full(prs.shape[1], np.nan)
    return float(aps[nonempty].mean()), prs[nonempty].mean(axis=0)


def _query_ap_and_precisions(positions, nres, kappas):
    positions = np.sort(np.asarray(positions, dtype=np.int64))
    return compute_ap(positions, nres), _precisions_at(positions, kappas)


def compute_map(ranks, gnd, kappas=(1, 5, 10)):
    """(mAP, per-query AP, mP@k, per-query P@k), fractions; see the module docstring."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(f"ranks must be [n_db, n_queries={len(gnd)}], got shape {ranks.shape}")
    num_queries = len(gnd)
    aps = np.zeros(num_queries)
    prs = np.zeros((num_queries, len(kappas)))
    for query in range(num_queries):
        ok = np.asarray(gnd[query]["ok"]).reshape(-1)
        if ok.shape[0] == 0:
            aps[query], prs[query] = np.nan, np.nan
            continue
        junk = np.asarray(gnd[query].get("junk", []), dtype=np.int64).reshape(-1)
        positions = np.flatnonzero(np.isin(ranks[:, query], ok))
        junk_positions = np.flatnonzero(np.isin(ranks[:, query], junk))
        positions = positions - np.searchsorted(junk_positions, positions, side="left")
        aps[query], prs[query] = _query_ap_and_precisions(positions, ok.shape[0], kappas)
    mean_ap, mean_pr = _mean_over_nonempty(aps, prs)
    return mean_ap, aps, mean_pr, prs


# ----------------------------------------------------------------- positions of the relevant images
def relevant_items(gnd_raw):
    """Per query, the sorted unique database indices that are easy, hard or junk."""
    return [
        np.unique(
            np.concatenate(
                [
                    np.asarray(entry[key], dtype=np.int64).reshape(-1)
                    for key in ("easy", "hard", "junk")
                ]
            )
        )
        for entry in gnd_raw
    ]


def _buckets(scores, low, scale, num_buckets):
    """Bucket 0: below every relevant score; 1..B+1 uniform buckets, monotone (non-decreasing) in
    the score.

    The same elementwise float32 operations (no fused multiply-add) bucket the relevant scores and
    the chunks, so a relevant image always lands in its own bucket. The result is a contiguous
    [n_queries, rows] int32 array.
    """
    values = torch.empty(scores.shape, dtype=torch.float32, device=scores.device)
    torch.sub(scores, low, out=values)
    # after the clamp and the shift everything is >= 0, where the int conversion's truncation is a
    # floor
    return values.mul_(scale).clamp_(-1, num_buckets).add_(1).to(torch.int32)


class RelevantRankCounter:
    """0-based ranking positions of each query's relevant images, accumulated over score chunks.

    items: per query, database indices (unique, any order); item_scores: their scores, the reference
    values that
    both sides of every comparison use. Feed every database row once through ``add`` (scores
    [n_queries, rows], any strides, numpy or torch, CPU or GPU), then read ``result()``.
    """

    def __init__(self, items, item_scores, num_database, num_buckets=DEFAULT_BUCKETS):
        self.num_database = int(num_database)
        self.num_buckets = int(num_buckets)
        self.items = []
        self.scores = []
        for ids, values in zip(items, item_scores):  # sorted by index, so that lookups can bisect
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            values = np.asarray(values, np.float32).reshape(-1)
            order = np.argsort(ids, kind="stable")
            self.items.append(ids[order])
            self.scores.append(values[order] if len(values) == len(ids) else values)
        self.keys = []
        self._sorted_keys = []
        low, scale = np.zeros(len(items), np.float32), np.zeros(len(items), np.float32)
        for query, (ids, values) in enumerate(zip(self.items, self.scores)):
            if len(ids) != len(values) or (
                len(ids) and (ids[0] < 0 or ids[-1] >= self.num_database)
            ):
                raise ValueError(
                    f"query {query}: relevant indices must lie in [0, {self.num_database}) and "
                    f"match their scores ({len(ids)} indices, {len(values)} scores)"
                )
            if len(ids) and np.any(ids[1:] == ids[:-1]):
                raise ValueError(f"query {query}: relevant indices must be unique")
            _check_finite(values, f"scores of query {query}'s relevant images")
            self.keys.append(order_keys(values, ids))
            self._sorted_keys.append(np.sort(self.keys[-1]))
            if len(ids):
                low[query] = values.min()
                spread = np.float32(values.max() - low[query])
                scale[query] = (
                    np.float32(self.num_buckets) / spread if spread > 0 else np.float32(1.0)
                )
        self._low = torch.from_numpy(low)[:, None]
        self._scale = torch.from_numpy(scale)[:, None]
        self._hot = np.zeros((len(items), self.num_buckets + 2), dtype=bool)
        self._item_buckets = []
        for query, values in enumerate(self.scores):
            buckets = _buckets(
                torch.from_numpy(values)[None],
                self._low[query : query + 1],
                self._scale[query : query + 1],
                self.num_buckets,
            )[0].numpy()
            self._item_buckets.append(buckets)
            self._hot[query, buckets] = True
        self._histogram = np.zeros((len(items), self.num_buckets + 2), dtype=np.int64)
        self._exact = [np.zeros(len(ids) + 1, dtype=np.int64) for ids in self.items]
        self._rows_seen = 0
        self._patch = _flatten_by_index(self.items, self.scores)

    def patch(self, offset, scores):
        """Overwrite the relevant images' entries of a [n_queries, rows] tensor with their reference
        scores.

        A chunked matrix product may round a score differently from the product that gave the
        reference value; patching makes every consumer of the chunk (this counter, top-k) see one
        consistent value per image.
        """
        ids, queries, values = self._patch
        start, stop = np.searchsorted(ids, [offset, offset + scores.shape[1]])
        if stop > start:
            rows = torch.from_numpy(queries[start:stop]).to(scores.device)
            cols = torch.from_numpy(ids[start:stop] - offset).to(scores.device)
            scores[rows, cols] = torch.from_numpy(values[start:stop]).to(
                scores.device, scores.dtype
            )
        return scores

    def add(self, offset, scores):
        """Count the database rows offset : offset + scores.shape[1] (scores [n_queries, rows])."""
        scores = torch.as_tensor(scores)
        if scores.ndim != 2 or scores.shape[0] != len(self.items):
            raise ValueError(
                f"score chunk must be [n_queries={len(self.items)}, rows], got "
                f"{tuple(scores.shape)}"
            )
        scores = scores.to(torch.float32)
        if scores.stride(1) != 1:
            scores = scores.contiguous()  # one transposing copy is cheaper than strided arithmetic
        if not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
            raise ValueError(
                f"database rows {offset}..{offset + scores.shape[1]}: scores must be finite"
            )
        buckets = _buckets(
            scores, self._low.to(scores.device), self._scale.to(scores.device), self.num_buckets
        )
        buckets, scores = buckets.cpu().numpy(), scores.cpu().numpy()
        for query, sorted_keys in enumerate(self._sorted_keys):
            if len(sorted_keys) == 0:
                continue
            row = buckets[query]
            self._histogram[query] += np.bincount(row, minlength=self.num_buckets + 2)
            # np.take: 3x faster than fancy indexing
            hot = np.flatnonzero(np.take(self._hot[query], row))
            keys = order_keys(scores[query, hot], hot + offset)
            self._exact[query] += np.bincount(
                np.searchsorted(sorted_keys, keys), minlength=len(sorted_keys) + 1
            )
        self._rows_seen += scores.shape[1]

    def result(self):
        """RelevantRanks with per-query items, their 0-based ranking positions and their order
        keys."""
        if self._rows_seen != self.num_database:
            raise ValueError(
                f"the counter saw {self._rows_seen} database rows, expected {self.num_database}"
            )
        ranks = []
        for query, sorted_keys in enumerate(self._sorted_keys):
            order = np.argsort(self.keys[query], kind="stable")  # item order -> ascending key order
            cold = np.where(self._hot[query], 0, self._histogram[query])
            # rows in buckets > b
            cold_above = np.concatenate([np.cumsum(cold[::-1])[::-1][1:], [0]])
            # keys > k
            exact_above = np.concatenate([np.cumsum(self._exact[query][::-1])[::-1][1:], [0]])[:-1]
            query_ranks = np.empty(len(sorted_keys), dtype=np.int64)
            query_ranks[order] = cold_above[self._item_buckets[query][order]] + exact_above
            ranks.append(query_ranks)
        return RelevantRanks(self.items, ranks, self.keys)


def _flatten_by_index(items, scores):
    """(database indices, query of each, score of each) over all queries, sorted by database
    index."""
    ids = np.concatenate([np.zeros(0, np.int64)] + list(items))
    queries = np.concatenate(
        [np.zeros(0, np.int64)] + [np.full(len(part), q) for q, part in enumerate(items)]
    )
    values = np.concatenate([np.zeros(0, np.float32)] + list(scores))
    order = np.argsort(ids, kind="stable")
    return ids[order], queries[order], values[order]


def _check_finite(values, what):
    if not np.isfinite(values).all():
        raise ValueError(f"{what} must be finite")


class RelevantRanks:
    """Per query: ``items`` (database indices), ``ranks`` (0-based positions) and ``keys`` (order
    keys)."""

    def __init__(self, items, ranks, keys):
        self.items = items
        self.ranks = ranks
        self.keys = keys

    def lookup(self, query, ids):
        """(ranks, keys) of the given database indices, which must be relevant images of the
        query."""
        where = np.searchsorted(self.items[query], ids)
        return self.ranks[query][where], self.keys[query][where]


# ------------------------------------------------------------------------- protocols from positions
def _positions_in_protocol(relevant, query, ok, junk, shortlist):
    """0-based positions of the positives after junk removal, optionally with a re-ranked shortlist
    on top.

    shortlist: (indices in the new order, their order keys) of the re-ranked top of the ranking.
    Re-ranking only
    permutes the shortlist, so a positive outside it keeps its position among the non-junk images
    counted from the shortlist's end: K + (non-junk images ranked before it) - (shortlisted images
    ranked before it).
    """
    ok_ranks, ok_keys = relevant.lookup(query, ok)
    junk_ranks = np.sort(relevant.lookup(query, junk)[0])
    positions = ok_ranks - np.searchsorted(junk_ranks, ok_ranks, side="left")
    if shortlist is None:
        return positions
    ids, keys = (np.asarray(part) for part in shortlist)
    non_junk = ~np.isin(ids, junk)
    ids, keys = ids[non_junk], np.sort(keys[non_junk])
    above = len(keys) - np.searchsorted(keys, ok_keys, side="right")
    moved = positions + len(ids) - above
    # a shortlisted positive takes its new place
    slot, shortlisted = locate(ids, np.asarray(ok, dtype=np.int64))
    return np.where(shortlisted, slot, moved).astype(np.int64)


def protocol_results_from_ranks(relevant, gnd_raw, kappas=(1, 5, 10), shortlists=None):
    """{protocol: (mAP, aps, mP@k, P@k)} as compute_map returns them, from the relevant images'
    positions.

    shortlists: optional {protocol: per query (re-ranked indices, their order keys)} (see
    _positions_in_protocol).
    """
    results = {}
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        aps = np.zeros(len(gnd))
        prs = np.zeros((len(gnd), len(kappas)))
        for query, entry in enumerate(gnd):
            if entry["ok"].shape[0] == 0:
                aps[query], prs[query] = np.nan, np.nan
                continue
            shortlist = None if shortlists is None else shortlists[protocol][query]
            positions = _positions_in_protocol(
                relevant, query, np.unique(entry["ok"]), np.unique(entry["junk"]), shortlist
            )
            aps[query], prs[query] = _query_ap_and_precisions(
                positions, entry["ok"].shape[0], kappas
            )
        mean_ap, mean_pr = _mean_over_nonempty(aps, prs)
        results[protocol] = (mean_ap, aps, mean_pr, prs)
    return results


def protocol_results_from_scores(
    scores, gnd_raw, kappas=(1, 5, 10), chunk_size=65536, num_buckets=DEFAULT_BUCKETS
):
    """E/M/H results (as protocol_results_from_ranks) straight from a score matrix, without sorting
    it.

    scores: [n_db, n_queries] (the benchmark's layout) or [n_queries, n_db]; float32 (float64 is
    compared after
    rounding to float32). The layout is told apart by n_queries = len(gnd_raw); a square matrix is
    read as
    [n_db, n_queries].
    """
    num_queries = len(gnd_raw)
    if scores.ndim != 2 or num_queries not in scores.shape:
        raise ValueError(
            f"scores must be [n_db, {num_queries}] or [{num_queries}, n_db], got {scores.shape}"
        )
    database_major = scores.shape[1] == num_queries
    num_database = scores.shape[0] if database_major else scores.shape[1]
    items = relevant_items(gnd_raw)
    if database_major:
        item_scores = [scores[ids, query] for query, ids in enumerate(items)]
    else:
        item_scores = [scores[query, ids] for query, ids in enumerate(items)]
    counter = RelevantRankCounter(items, item_scores, num_database, num_buckets)
    for offset in range(0, num_database, chunk_size):
        chunk = (
            scores[offset : offset + chunk_size].T
            if database_major
            else scores[:, offset : offset + chunk_size]
        )
        counter.add(offset, torch.as_tensor(chunk))
    return protocol_results_from_ranks(counter.result(), gnd_raw, kappas)


def summarize(results, kappas=(1, 5, 10)):
    """{protocol: {"mAP": %, "mP@k": %}} from {protocol: (mAP, aps, mP@k, P@k)}."""
    table = {}
    for protocol in PROTOCOLS:
        mean_ap, _, mean_pr, _ = results[protocol]
        row = {"mAP": 100.0 * mean_ap}
        row.update({f"mP@{k}": 100.0 * float(value) for k, value in zip(kappas, mean_pr)})
        table[protocol] = row
    return table
