"""Putative local-feature matches between one query image and many index images, as matrix products.

The official DELG release builds a KD-tree per index image and queries it once per pair. Here the
nearest neighbours of a query's descriptors in a batch of index images come from matrix products,
using
    ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x,   so   argmin_x ||q - x|| = argmax_x a(q, x),  a = q.x
    - ||x||^2 / 2.
Appending 1 to q and -||x||^2 / 2 to x makes a(q, x) one dot product. Norms stay in the formula, so
descriptors need not be exactly unit length (float16 storage rounds them).

Two stages keep the result that of float32 matching while most of the work runs in bfloat16 (AMX,
tensor cores):
1. one bfloat16 product of the query with every index image of the batch gives each query
   descriptor's
   approximate best affinity per image. Its error is bounded (``_bfloat16_error``), so a descriptor
   whose approximate best lies below the match threshold by more than the bound cannot match and is
   dropped. The affinities are shifted to be positive, so that the maximum can be taken on the
   bfloat16 bit patterns as int16.
2. the remaining descriptors (true matches and near misses, usually a small part) are matched again
   in float32 against their image: nearest neighbour, distance bound, ratio test, mutual check.
A match is kept when the nearest index descriptor is closer than ``max_distance`` (official 1.0),
optionally when it passes Lowe's ratio test (d1 < ratio * d2) and when it is a mutual nearest
neighbour.
"""

import numpy as np
import torch

MAX_BATCH_ELEMENTS = 1 << 23  # entries of the [m, B, n] bfloat16 product computed at once
_PADDING_AFFINITY = -1e30  # affinity of a padding row: never anyone's nearest neighbour
# the inner dimension is padded with zeros to a multiple of this (fast bfloat16 kernels)
_ALIGN = 32
_UNIT_ROUNDOFF = 2.0**-9  # bfloat16


def _width(dim):
    return -(-(dim + 1) // _ALIGN) * _ALIGN


def _augmented_index(descriptor_list, dim):
    """[B, n_max, width] float32 rows [x, -||x||^2 / 2, 0...]; padding rows [0, ..., 0, -1e30,
    0...]."""
    n_max = max(1, max(len(descriptors) for descriptors in descriptor_list))
    augmented = np.zeros((len(descriptor_list), n_max, _width(dim)), dtype=np.float32)
    augmented[:, :, dim] = _PADDING_AFFINITY
    for image, descriptors in enumerate(descriptor_list):
        count = len(descriptors)
        if count:
            values = augmented[image, :count, :dim]
            values[:] = descriptors  # float16 or float32 in, float32 here
            augmented[image, :count, dim] = -0.5 * np.einsum("ij,ij->i", values, values)
    return augmented


def _bfloat16_error(query_norms, largest_index_norm, shift):
    """Bound on |a_bf16 - a| per query row. Inputs and output are rounded to bfloat16 (unit roundoff
    u), sums run in float32: the q.x terms err by (2u + u^2) |q||x|, the rounded last term
    -||x||^2/2 + shift by u of itself, the output by u |a + shift|; 4u |q| X + 3u (X^2 / 2 + shift)
    covers it (X = the largest index norm)."""
    u, largest = _UNIT_ROUNDOFF, float(largest_index_norm)
    return 4 * u * np.sqrt(query_norms) * largest + 3 * u * (0.5 * largest**2 + shift)


def _candidate_rows(query_bf16, query_norms, augmented, counts, dim, max_distance):
    """[m, B] bool: the query rows whose best affinity in image b may pass the distance bound."""
    real = np.arange(augmented.shape[1])[None, :] < np.asarray(counts)[:, None]
    largest = (
        float(np.sqrt(max(-2.0 * augmented[:, :, dim][real].min(), 0.0))) if real.any() else 0.0
    )
    # a + shift >= 1 everywhere
    shift = float(np.sqrt(query_norms.max())) * largest + 0.5 * largest**2 + 1.0
    shifted = augmented.copy()
    shifted[:, :, dim][real] += shift
    index = (
        torch.from_numpy(shifted)
        .to(query_bf16.device)
        .view(-1, shifted.shape[2])
        .to(torch.bfloat16)
    )
    approximate = torch.mm(query_bf16, index.T)  # [m, B * n_max], positive except at the padding
    # positive bfloat16 values order like their bit patterns read as int16
    best_bits = approximate.view(torch.int16).view(len(query_norms), len(augmented), -1).amax(dim=2)
    best = best_bits.view(torch.bfloat16).float().cpu().numpy() - shift
    threshold = 0.5 * (query_norms - max_distance**2)  # a > threshold  <=>  distance < max_distance
    return best >= (threshold - _bfloat16_error(query_norms, largest, shift))[:, None]


def _match_image(query, query_norms, rows, index, dim, max_distance, ratio_test, mutual):
    """Exact float32 matching of query rows `rows` against one image's augmented descriptors
    [n, width]."""
    # [r, n], no alignment zeros
    affinity = torch.mm(query[rows, : dim + 1], index[:, : dim + 1].T).cpu().numpy()
    nearest = affinity.argmax(axis=1)
    best = affinity[np.arange(len(rows)), nearest]
    distance_sq = query_norms[rows] - 2.0 * best
    keep = distance_sq < max_distance**2
    if ratio_test > 0 and affinity.shape[1] > 1:
        affinity[np.arange(len(rows)), nearest] = -np.inf
        keep &= distance_sq < ratio_test**2 * (query_norms[rows] - 2.0 * affinity.max(axis=1))
    rows, nearest = rows[keep], nearest[keep]
    # nearest query descriptor of each matched index descriptor: argmax_q q.x - ||q||^2/2
    if mutual and len(rows):
        backward = (
            torch.mm(query[:, :dim], index[nearest, :dim].T).cpu().numpy()
            - 0.5 * query_norms[:, None]
        )
        is_mutual = backward.argmax(axis=0) == rows
        rows, nearest = rows[is_mutual], nearest[is_mutual]
    return rows, nearest.astype(np.int64)


def _batches(descriptor_list, num_query):
    """Consecutive index ranges whose [m, B, n_max] products stay under MAX_BATCH_ELEMENTS."""
    start = 0
    while start < len(descriptor_list):
        stop, widest = start, 1
        while stop < len(descriptor_list):
            widest_next = max(widest, len(descriptor_list[stop]))
            if stop > start and (stop + 1 - start) * num_query * widest_next > MAX_BATCH_ELEMENTS:
                break
            widest, stop = widest_next, stop + 1
        yield start, stop
        start = stop


def putative_matches(
    query_descriptors,
    index_descriptor_list,
    max_distance=1.0,
    ratio_test=0.0,
    mutual=False,
    device="cpu",
):
    """For each index image, (query rows, index rows) of its putative matches, ordered by query row.

    query_descriptors [m, d]; index_descriptor_list: one [n_i, d] array per index image (float16 or
    float32).
    """
    device = torch.device(device)
    dim = np.shape(query_descriptors)[1] if np.ndim(query_descriptors) == 2 else 0
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if len(query_descriptors) == 0 or dim == 0:
        return [empty for _ in index_descriptor_list]
    for position, descriptors in enumerate(index_descriptor_list):
        if len(descriptors) and np.shape(descriptors)[1] != dim:
            raise ValueError(
                f"index image {position}: descriptor dimension {np.shape(descriptors)[1]} differs "
                f"from the query's {dim}"
            )
    query = np.zeros((len(query_descriptors), _width(dim)), dtype=np.float32)
    query[:, :dim] = query_descriptors
    query[:, dim] = 1.0
    query_norms = np.einsum("ij,ij->i", query[:, :dim], query[:, :dim])
    query = torch.from_numpy(query).to(device)
    query_bf16 = query.to(torch.bfloat16)
    matches = []
    with torch.no_grad():
        for start, stop in _batches(index_descriptor_list, len(query)):
            batch = index_descriptor_list[start:stop]
            counts = [len(descriptors) for descriptors in batch]
            augmented = _augmented_index(batch, dim)
            candidates = _candidate_rows(
                query_bf16, query_norms, augmented, counts, dim, max_distance
            )
            index = torch.from_numpy(augmented).to(device)
            for image, count in enumerate(counts):
                rows = np.flatnonzero(candidates[:, image])
                if count == 0 or len(rows) == 0:
                    matches.append(empty)
                    continue
                matches.append(
                    _match_image(
                        query,
                        query_norms,
                        rows,
                        index[image, :count],
                        dim,
                        max_distance,
                        ratio_test,
                        mutual,
                    )
                )
    return matches
