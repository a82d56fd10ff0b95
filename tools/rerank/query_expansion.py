"""alpha query expansion (alpha-QE): each query becomes a weighted sum of itself and its k nearest
database descriptors, to be searched again.

    q' = normalise( q + sum_{i=1..k} w(q . x_i) x_i ),   w(s) = s^alpha

x_1..x_k are the query's first k database items in the framework's ranking order (score descending,
ties at the k-th place keep the lowest database indices: tools/knn/global_search.py); the
query itself has weight 1 and is not one of the k. Negative similarities (``negative``): "clamp"
sets them to 0 before the power, "sign" keeps their sign (sign(s) |s|^alpha; for odd alpha this is
s^alpha itself).

The helpers ``alpha_weights`` and ``normalised_sum`` are also the weighting of database-side
augmentation (database_augmentation.py). Inputs are NumPy arrays (the database may be memory-mapped
and of any size: it is scored ``chunk_size`` rows at a time); outputs are float32 NumPy arrays.
"""

import numpy as np
import torch

from tools.knn.global_search import exact_search, resolve_device

NEGATIVE_RULES = ("clamp", "sign")


def alpha_weights(similarities, alpha, negative="clamp"):
    """w(s) = max(s, 0)^alpha ("clamp") or sign(s) |s|^alpha ("sign"), elementwise on a tensor."""
    if negative == "clamp":
        return similarities.clamp(min=0.0).pow(alpha)
    if negative == "sign":
        return similarities.sign() * similarities.abs().pow(alpha)
    raise ValueError(f"negative similarity rule {negative!r}: expected one of {NEGATIVE_RULES}")


def normalised_sum(own, neighbours, weights):
    """normalise(own + sum_j weights[:, j] neighbours[:, j]): own [n, d] (weight 1), neighbours
    [n, m, d], weights [n, m]. The neighbours are added one place at a time, in order, so a row's
    result never depends on how many rows are computed together."""
    total = own.clone()
    for place in range(neighbours.shape[1]):
        total += weights[:, place : place + 1] * neighbours[:, place]
    norms = torch.sqrt((total * total).sum(dim=1, keepdim=True))
    return total / norms.clamp(min=1e-12)


def gather_rows(database, indices, device):
    """database[indices] as a float32 tensor on device; indices [n, m] int64 (NumPy)."""
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)  # sorted reads of a memory map
    rows = torch.from_numpy(np.array(database[unique], dtype=np.float32)).to(device)
    return rows[torch.from_numpy(inverse).to(device)].reshape(*np.shape(indices), -1)


def expand(own, neighbours, alpha, negative):
    """The alpha-weighted, normalised sum of own [n, d] (weight 1) and neighbours [n, m, d]; the
    weights come from own . neighbour, recomputed per pair."""
    similarities = (neighbours * own.unsqueeze(1)).sum(dim=2)
    return normalised_sum(own, neighbours, alpha_weights(similarities, alpha, negative))


def alpha_query_expansion(
    queries, database, k, alpha=3.0, negative="clamp", chunk_size=65536, device="cpu"
):
    """Expanded queries [n_q, d] float32, L2-normalised; queries [n_q, d] and database [n, d]
    L2-normalised. k = 0 returns the queries (normalised)."""
    device = torch.device(resolve_device(device))
    own = torch.from_numpy(np.array(queries, dtype=np.float32)).to(device)
    k = min(int(k), database.shape[0])
    if k < 0:
        raise ValueError(f"alpha-QE: k must be >= 0, got {k}")
    if k == 0:
        return (
            expand(own, own.new_zeros((len(own), 0, own.shape[1])), alpha, negative).cpu().numpy()
        )
    _, indices = exact_search(queries, database, k, chunk_size, device)
    neighbours = gather_rows(database, indices, device)
    return expand(own, neighbours, alpha, negative).cpu().numpy()
