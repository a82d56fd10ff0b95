"""What the learned re-ranker reads: per image its local features cut to the highest attention
scores, and batches of them padded to one length with a key padding mask.

NumPy and torch only (no config): the training data (tools/reranker), the compact database codes
and the evaluation build their batches with these functions.
"""

from typing import NamedTuple

import numpy as np
import torch

NUM_PYRAMID_SCALES = 7  # DELG's pyramid 0.25 ... 2.0 in steps of sqrt(2)


class LocalBatch(NamedTuple):
    """B images' local features, padded to N: descriptors [B, N, d] (float, or +-1 codes of a
    binary model's database side), scales [B, N] int64 scale index, padding [B, N] bool (True =
    padded slot), locations [B, N, 2] float32 pixels or None, global_descriptor [B, D] or None."""

    descriptors: torch.Tensor
    scales: torch.Tensor
    padding: torch.Tensor
    locations: torch.Tensor = None
    global_descriptor: torch.Tensor = None


def scale_index(scales, num_scales=NUM_PYRAMID_SCALES):
    """Pyramid scale -> index round(2 log2 s) + 4, clipped to [0, num_scales - 1]: 0.25 -> 0,
    0.7071 -> 3, 1.0 -> 4, 2.0 -> 6 (the same index whatever scales a store extracted)."""
    scales = np.asarray(scales, dtype=np.float64)
    index = np.rint(2.0 * np.log2(np.maximum(scales, 1e-6))) + 4
    return np.clip(index, 0, num_scales - 1).astype(np.int64)


def top_locals(local, n):
    """The n local features with the highest attention scores (ties: the store's order), best first:
    {"descriptors" [n', d] (dtype kept), "scales" [n'] int64 scale index, "locations" [n', 2]
    float32, "scores" [n'] float32} with n' = min(n, count)."""
    scores = np.asarray(local["scores"], dtype=np.float32)
    order = np.argsort(-scores, kind="stable")[:n]
    return {
        "descriptors": np.asarray(local["descriptors"])[order],
        "scales": scale_index(np.asarray(local["scales"])[order]),
        "locations": np.asarray(local["locations"], dtype=np.float32)[order],
        "scores": scores[order],
    }


def collate_locals(items, n=None, global_descriptors=None, dtype=torch.float32):
    """A LocalBatch of top_locals dicts, each cut to n (None: kept whole) and padded to the longest;
    global_descriptors: [B, D] array or None."""
    counts = [len(item["scales"]) if n is None else min(n, len(item["scales"])) for item in items]
    length = max(max(counts, default=0), 1)
    dim = items[0]["descriptors"].shape[1]
    descriptors = np.zeros((len(items), length, dim), np.float32)
    scales = np.zeros((len(items), length), np.int64)
    locations = np.zeros((len(items), length, 2), np.float32)
    padding = np.ones((len(items), length), bool)
    for row, (item, count) in enumerate(zip(items, counts, strict=True)):
        descriptors[row, :count] = item["descriptors"][:count]
        scales[row, :count] = item["scales"][:count]
        locations[row, :count] = item["locations"][:count]
        padding[row, :count] = False
    glob = None if global_descriptors is None else torch.as_tensor(np.asarray(global_descriptors))
    return LocalBatch(
        torch.from_numpy(descriptors).to(dtype),
        torch.from_numpy(scales),
        torch.from_numpy(padding),
        torch.from_numpy(locations),
        None if glob is None else glob.to(dtype),
    )


def take(batch, index):
    """The rows `index` (tensor or list) of a LocalBatch (None fields kept)."""
    return LocalBatch(*(None if field is None else field[index] for field in batch))
