"""Putative local-feature matches between one query image and many index images, as matrix products.

The official DELG release builds a KD-tree per index image and queries it once per pair. Here the
nearest neighbours of a query's descriptors in a batch of index images come from matrix products,
using
    ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x,   so   argmin_x ||q - x|| = argmax_x a(q, x),  a = q.x
    - ||x||^2 / 2.
Appending 1 to q and -||x||^2 / 2 to x makes a(q, x) one dot product. Norms stay in the formula, so
descriptors need not be exactly unit length (float16 storage rounds them).

Two stages keep the result that of float32 matching while the bulk of the work may run in a faster
precision (bfloat16 on AMX, AVX512_BF16 or tensor cores; int8 on CPUs without native bfloat16):
1. one product of the query with every index image of the batch, in the candidate precision
   (``core.hardware.matmul_precision``: the fastest on the device; ``SV.MATCH_PRECISION`` forces
   one), gives each query descriptor's approximate best affinity per image. Its error is bounded
   (``_bfloat16_error``, ``_float32_error``, ``_int8_best``), so a descriptor whose approximate best
   lies below the match threshold by more than the bound cannot match and is dropped. In bfloat16
   the affinities are shifted to be positive, so that the maximum can be taken on the bit patterns
   as int16. In int8 the descriptors are rounded to multiples of one scale per operand, at most 63
   in magnitude (exact int32 sums: AVX2's 8-bit products saturate 16-bit pair sums beyond that).
2. the remaining descriptors (true matches and near misses, usually a small part) are matched again
   in float32 against their image: nearest neighbour, distance bound, ratio test, mutual check.
Whatever the candidate precision, the matches are those of stage 2 (tests force each one).
A match is kept when the nearest index descriptor is closer than ``max_distance`` (official 1.0),
optionally when it passes Lowe's ratio test (d1 < ratio * d2) and when it is a mutual nearest
neighbour.
"""

from dataclasses import dataclass

import numpy as np
import torch

from core.hardware import matmul_precision

MAX_BATCH_ELEMENTS = 1 << 23  # entries of the [m, B, n] candidate product computed at once
_PADDING_AFFINITY = -1e30  # affinity of a padding row: never anyone's nearest neighbour
# the inner dimension is padded with zeros to a multiple of this (fast bfloat16 kernels)
_ALIGN = 32
_UNIT_ROUNDOFF = 2.0**-9  # bfloat16
_FLOAT32_ROUNDOFF = 2.0**-24
_FLOAT32_ALIGN = 8  # float32 products read only the first dim + 1 columns, rounded up to this
_INT8_LEVELS = 63  # int8 codes lie in [-63, 63]


def _width(dim, align=_ALIGN):
    return -(-(dim + 1) // align) * align


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


def _float32_error(query_norms, largest_index_norm, width):
    """Bound on the difference between a float32 affinity of stage 1 and the one stage 2 compares
    (products of the same float32 values, summed in any order over `width` terms): each errs by at
    most gamma |q'||x'| with gamma = width u / (1 - width u), |q'|^2 = |q|^2 + 1 and
    |x'|^2 = X^2 + X^4 / 4 (the augmented rows); twice that, plus the rounding of the threshold's
    own arithmetic."""
    u, largest = _FLOAT32_ROUNDOFF, float(largest_index_norm)
    gamma = width * u / (1 - width * u)
    augmented_index = np.sqrt(largest**2 + 0.25 * largest**4)
    return 2 * gamma * np.sqrt(query_norms + 1.0) * augmented_index + 4 * u * (query_norms + 1.0)


def _largest_norm(augmented, counts, dim):
    """Largest index descriptor norm of the batch, read from the -||x||^2 / 2 column."""
    real = np.arange(augmented.shape[1])[None, :] < np.asarray(counts)[:, None]
    if not real.any():
        return real, 0.0
    return real, float(np.sqrt(max(-2.0 * augmented[:, :, dim][real].min(), 0.0)))


def _candidate_rows(query, query_norms, augmented, counts, dim, max_distance):
    """[m, B] bool: the query rows whose best affinity in image b may pass the distance bound;
    query: the query in the candidate precision (_candidate_query)."""
    threshold = 0.5 * (query_norms - max_distance**2)  # a > threshold  <=>  distance < max_distance
    best_of = {"float32": _float32_best, "bfloat16": _bfloat16_best, "int8": _int8_best}
    best, error = best_of[query[0]](query[1], query_norms, augmented, counts, dim)
    return best >= (threshold - error)[:, None]


def _quantized(values):
    """(int8 codes, scale) of a float32 tensor: values ~ scale * codes, each within scale / 2."""
    scale = max(float(values.abs().max()), 1e-30) / _INT8_LEVELS
    codes = values.mul(1.0 / scale).round_().clamp_(-_INT8_LEVELS, _INT8_LEVELS)
    return codes.to(torch.int8), scale


def _candidate_query(precision, query, dim):
    """(precision, the query's operand for the candidate product)."""
    if precision == "bfloat16":
        return precision, query.to(torch.bfloat16)
    if precision == "int8":
        codes, scale = _quantized(query[:, :dim])
        residual = (query[:, :dim].double() - codes.double() * scale).norm(dim=1)
        return precision, (codes, scale, residual.cpu().numpy())
    return precision, query


def _int8_best(query, query_norms, augmented, counts, dim):
    """([m, B] upper estimate of the best affinity per image, [m] error bound).

    q.x = s_q s_x Q.X + e_q.x + s_q Q.e_x (residuals e), so |q.x - s_q s_x Q.X| <= |e_q| X + (|q| +
    |e_q|) |e_x|, with |e_x| <= sqrt(d) s_x / 2; the int32 sums are exact. The norm term is bounded
    by the image's smallest -||x||^2 / 2, and padding rows (codes 0) can only raise the maximum:
    both err on the safe side."""
    codes, query_scale, query_residual = query
    device = codes.device
    real, largest = _largest_norm(augmented, counts, dim)
    index, index_scale = _quantized(torch.from_numpy(augmented[:, :, :dim]))
    products = torch._int_mm(codes, index.to(device).view(-1, dim).T)
    best = products.view(len(query_norms), len(augmented), -1).amax(dim=2).cpu().numpy()
    norm_term = np.where(real, augmented[:, :, dim], -np.inf).max(axis=1)  # [B], -inf if empty
    largest_residual = 0.5 * np.sqrt(dim) * index_scale
    error = query_residual * largest + (np.sqrt(query_norms) + query_residual) * largest_residual
    rounding = _float32_error(query_norms, largest, _width(dim, _FLOAT32_ALIGN))
    return best * (query_scale * index_scale) + norm_term, 1.001 * error + rounding


def _float32_best(query, query_norms, augmented, counts, dim):
    """([m, B] best float32 affinity per image, [m] error bound)."""
    _, largest = _largest_norm(augmented, counts, dim)
    width = _width(dim, _FLOAT32_ALIGN)  # the columns after dim are zero
    index = torch.from_numpy(augmented).to(query.device)[:, :, :width]
    approximate = torch.mm(query[:, :width], index.reshape(-1, width).T)
    best = approximate.view(len(query_norms), len(augmented), -1).amax(dim=2).cpu().numpy()
    return best, _float32_error(query_norms, largest, width)


def _bfloat16_best(query_bf16, query_norms, augmented, counts, dim):
    """([m, B] best bfloat16 affinity per image, [m] error bound)."""
    real, largest = _largest_norm(augmented, counts, dim)
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
    return best, _bfloat16_error(query_norms, largest, shift)


@dataclass(frozen=True)
class _Rule:
    """When a nearest neighbour is a match: closer than max_distance, Lowe's ratio test (0: off),
    mutual nearest neighbours."""

    max_distance: float
    ratio_test: float
    mutual: bool


@dataclass(frozen=True)
class _Query:
    """The query's augmented rows [m, width] (float32, on the device), their squared norms [m]
    (of the first dim columns), dim, and its operand of the candidate product (_candidate_query)."""

    rows: torch.Tensor
    norms: np.ndarray
    dim: int
    candidate: tuple


def _prepared_query(query_descriptors, dim, device, precision):
    query = np.zeros((len(query_descriptors), _width(dim)), dtype=np.float32)
    query[:, :dim] = query_descriptors
    query[:, dim] = 1.0
    norms = np.einsum("ij,ij->i", query[:, :dim], query[:, :dim])
    query = torch.from_numpy(query).to(device)
    return _Query(query, norms, dim, _candidate_query(precision, query, dim))


def _no_matches():
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def _match_batch(query, batch, rule, device):
    """(query rows, index rows) of each image of the batch: candidates first (stage 1), then exact
    float32 matching of the candidate rows (stage 2)."""
    counts = [len(descriptors) for descriptors in batch]
    augmented = _augmented_index(batch, query.dim)
    candidates = _candidate_rows(query.candidate, query.norms, augmented, counts, query.dim,
                                 rule.max_distance)  # fmt: skip
    index = torch.from_numpy(augmented).to(device)
    matches = []
    for image, count in enumerate(counts):
        rows = np.flatnonzero(candidates[:, image])
        found = count and len(rows)
        matches.append(_match_image(query, rows, index[image, :count], rule) if found else
                       _no_matches())  # fmt: skip
    return matches


def _match_image(query, rows, index, rule):
    """Exact float32 matching of query rows `rows` against one image's augmented descriptors
    [n, width]."""
    dim, norms = query.dim, query.norms
    # [r, n], no alignment zeros
    affinity = torch.mm(query.rows[rows, : dim + 1], index[:, : dim + 1].T).cpu().numpy()
    nearest = affinity.argmax(axis=1)
    best = affinity[np.arange(len(rows)), nearest]
    distance_sq = norms[rows] - 2.0 * best
    keep = distance_sq < rule.max_distance**2
    if rule.ratio_test > 0 and affinity.shape[1] > 1:
        affinity[np.arange(len(rows)), nearest] = -np.inf
        keep &= distance_sq < rule.ratio_test**2 * (norms[rows] - 2.0 * affinity.max(axis=1))
    rows, nearest = rows[keep], nearest[keep]
    # nearest query descriptor of each matched index descriptor: argmax_q q.x - ||q||^2/2
    if rule.mutual and len(rows):
        backward = torch.mm(query.rows[:, :dim], index[nearest, :dim].T).cpu().numpy()
        is_mutual = (backward - 0.5 * norms[:, None]).argmax(axis=0) == rows
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


def putative_matches(query_descriptors, index_descriptor_list, max_distance=1.0, ratio_test=0.0,
                     mutual=False, device="cpu", precision="auto"):  # fmt: skip
    """For each index image, (query rows, index rows) of its putative matches, ordered by query row.

    query_descriptors [m, d]; index_descriptor_list: one [n_i, d] array per index image (float16 or
    float32). precision: the candidate product's, auto (core.hardware.matmul_precision), float32,
    bfloat16 or int8 (CPU); the matches are the same for each.
    """
    device = torch.device(device)
    precision = matmul_precision(device, precision)
    dim = np.shape(query_descriptors)[1] if np.ndim(query_descriptors) == 2 else 0
    if len(query_descriptors) == 0 or dim == 0:
        return [_no_matches() for _ in index_descriptor_list]
    for position, descriptors in enumerate(index_descriptor_list):
        if len(descriptors) and np.shape(descriptors)[1] != dim:
            raise ValueError(
                f"index image {position}: descriptor dimension {np.shape(descriptors)[1]} differs "
                f"from the query's {dim}"
            )
    query = _prepared_query(query_descriptors, dim, device, precision)
    rule = _Rule(max_distance, ratio_test, mutual)
    matches = []
    with torch.no_grad():
        for start, stop in _batches(index_descriptor_list, len(query.rows)):
            matches += _match_batch(query, index_descriptor_list[start:stop], rule, device)
    return matches
