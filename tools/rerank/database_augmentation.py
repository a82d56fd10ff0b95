"""alpha database-side augmentation (alpha-DBA): every database descriptor becomes a weighted sum of
its k nearest database descriptors, itself included, once and offline.

    y = normalise( x + sum_{j=1..k-1} w(x . x_j) x_j ),   w as in query_expansion.alpha_weights

x is always its own first neighbour (weight 1); x_1..x_{k-1} are the k - 1 most similar other
database items in the framework's ranking order (score descending, ties at the last place keep the
lowest database indices: tools/knn/global_search.first_k). k = 1 leaves the database as it is.

The k-NN search of the database against itself runs in square blocks of ``chunk_size`` rows on CPU
or CUDA and uses the symmetry of the score matrix: the block pair (i, j), j > i, is multiplied
once and feeds the top-k of block i (its rows) and of block j (its columns), which halves the
matrix products of a plain search. Once a row's running top-k is full, a block's scores are not
sorted but read once for the maxima of their segments of SEGMENT consecutive scores, and only the
few segments that reach the row's k-th best score are merged (_merge_segments): the products, not
the selection, then take the time. Memory stays bounded: two blocks of rows, one block of scores
and the running top-k of the rows still to do ([n, k - 1] scores and indices).

``augment_blocks`` yields the augmented rows block by block and can skip blocks finished earlier
(``done``): that is what makes the cached augmentation resumable (dba_cache.py). A block's result
does not depend on ``chunk_size``, on the blocks being of equal size (``blocks``) or on which
blocks were skipped: the neighbours are an exact top-k and the weights are recomputed per pair.
"""

import numpy as np
import torch
from tqdm import tqdm

from tools.knn.global_search import TopK, as_float32_rows, first_k, resolve_device
from tools.rerank.query_expansion import expand, gather_rows

SEGMENT = 64  # scores per segment of the candidate filter (_merge_segments)


def block_ranges(num_rows, chunk_size):
    """[(start, stop)] of consecutive blocks of chunk_size rows."""
    if chunk_size < 1:
        raise ValueError(f"alpha-DBA: chunk_size must be positive, got {chunk_size}")
    return [(start, min(start + chunk_size, num_rows)) for start in range(0, num_rows, chunk_size)]


def _check(database, k):
    if database.ndim != 2 or database.shape[0] == 0:
        raise ValueError(
            f"alpha-DBA: database must be a non-empty [n, d] array, got {database.shape}"
        )
    if k < 1:
        raise ValueError(f"alpha-DBA: k counts the image itself and must be >= 1, got {k}")
    return min(int(k), database.shape[0])


def augment_blocks(
    database,
    k,
    alpha=3.0,
    negative="clamp",
    chunk_size=4096,
    device="cpu",
    done=(),
    progress=False,
    blocks=None,
):
    """Yield (start, stop, augmented rows [stop - start, d] float32) for every block of
    ``chunk_size`` database rows (or of ``blocks``: [(start, stop)] covering the rows in order)
    whose start is not in ``done``, in ascending order."""
    k = _check(database, k)
    device = torch.device(resolve_device(device))
    blocks = blocks or block_ranges(database.shape[0], chunk_size)
    done = set(done)
    todo = [(start, stop) for start, stop in blocks if start not in done]
    todo_starts = {start for start, _ in todo}
    pending = {start: TopK(stop - start, k - 1) for start, stop in todo}
    with tqdm(
        total=sum(stop - start for start, stop in todo),
        desc="alpha-DBA",
        unit="rows",
        disable=not progress,
    ) as bar:
        for start, stop in todo:
            rows = as_float32_rows(database, start, stop, device)
            if k == 1:
                alone = rows.new_zeros((len(rows), 0, rows.shape[1]))
                yield start, stop, expand(rows, alone, alpha, negative).cpu().numpy()
            else:
                _score_block(database, blocks, pending, todo_starts, start, rows, device)
                _, indices = pending.pop(start).result()
                neighbours = gather_rows(database, indices, device)
                yield start, stop, expand(rows, neighbours, alpha, negative).cpu().numpy()
            bar.update(stop - start)


def _score_block(database, blocks, pending, todo_starts, start, rows, device):
    """Complete the top-k of block ``start``: score it against every block whose pair with it was
    not scored yet, and hand the scores, read by column, to the later blocks still to do."""
    buffer = rows.new_empty(len(rows) * max(stop - first for first, stop in blocks))
    for other_start, other_stop in blocks:
        if other_start < start and other_start in todo_starts:
            continue  # this pair was scored from the other block's side
        scores = buffer[: len(rows) * (other_stop - other_start)].view(len(rows), -1)
        if other_start == start:
            torch.matmul(rows, rows.T, out=scores)
            scores.fill_diagonal_(float("-inf"))  # the image itself is added with weight 1
        else:
            columns = as_float32_rows(database, other_start, other_stop, device)
            torch.matmul(rows, columns.T, out=scores)
        _add_rows(pending[start], other_start, scores)
        if other_start > start and other_start in todo_starts:
            _add_columns(pending[other_start], start, scores)


def _is_full(top):
    return top.scores.shape[1] == top.k


def _add_rows(top, offset, scores):
    """top.add(offset, scores), through the segment filter once ``top`` is full."""
    num_rows, num_columns = scores.shape
    if not _is_full(top) or num_columns % SEGMENT:
        top.add(offset, scores)
        return
    segments = scores.view(num_rows, num_columns // SEGMENT, SEGMENT)
    _merge_segments(top, offset, segments.amax(dim=2), lambda items, at: segments[items, at])


def _add_columns(top, offset, scores):
    """top.add(offset, scores.T) without transposing the block once ``top`` is full."""
    num_rows, num_columns = scores.shape
    if not _is_full(top) or num_rows % SEGMENT:
        top.add(offset, scores.T.contiguous())
        return
    segments = scores.view(num_rows // SEGMENT, SEGMENT, num_columns)
    _merge_segments(top, offset, segments.amax(dim=1).T, lambda items, at: segments[at, :, items])


def _merge_segments(top, offset, maxima, values_of):
    """Merge into the full top-k ``top`` the scores that reach their item's current k-th best score,
    found through the segments (SEGMENT consecutive scores of one item, maxima [items, segments])
    whose maximum reaches it. No other score can enter a top-k (one equal to the k-th can, by the
    tie rule, and is kept), and after the first blocks they are few: the block is read once for its
    segment maxima instead of being sorted. values_of(items, segments) -> the segments' scores
    [hits, SEGMENT]."""
    threshold = top.scores.min(dim=1).values.to(maxima.device)
    items, at = (maxima >= threshold.unsqueeze(1)).nonzero(as_tuple=True)  # items ascending
    values = values_of(items, at)
    hits, place = (values >= threshold[items].unsqueeze(1)).nonzero(as_tuple=True)
    if len(hits) == 0:
        return
    items, scores, indices = items[hits], values[hits, place], offset + at[hits] * SEGMENT + place
    counts = torch.bincount(items, minlength=len(threshold))
    touched = counts.nonzero().squeeze(1)
    rows = (counts > 0).cumsum(0)[items] - 1  # the item's row among the touched ones
    slots = torch.arange(len(items), device=items.device) - (counts.cumsum(0) - counts)[items]
    shape = (len(touched), int(counts.max()))
    candidates = torch.full(shape, float("-inf"), device=maxima.device)
    candidate_indices = torch.zeros(shape, dtype=torch.int64, device=maxima.device)
    candidates[rows, slots], candidate_indices[rows, slots] = scores, indices
    touched = touched.cpu()
    merged_scores = torch.cat([top.scores[touched], candidates.cpu()], dim=1)
    merged_indices = torch.cat([top.indices[touched], candidate_indices.cpu()], dim=1)
    top.scores[touched], top.indices[touched] = first_k(merged_scores, merged_indices, top.k)


def database_augmentation(
    database, k, alpha=3.0, negative="clamp", chunk_size=4096, device="cpu", progress=False
):
    """The augmented database [n, d] float32, L2-normalised; database [n, d] L2-normalised (a NumPy
    array, memory-mapped or not)."""
    augmented = np.empty(database.shape, dtype=np.float32)
    for start, stop, rows in augment_blocks(
        database, k, alpha, negative, chunk_size, device, progress=progress
    ):
        augmented[start:stop] = rows
    return augmented
