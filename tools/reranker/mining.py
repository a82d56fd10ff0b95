"""Mining a training-split store for the re-ranker with the exact blocked k-NN of
tools/knn/global_search.py.

Landmarks are split (by a seeded hash) into training and held-out ones. Training: every image of a
training landmark is searched among the images of the training landmarks; its top-K (itself
excluded) gives the positives (same landmark) and the hard negatives; only anchors with at least
MIN_POSITIVES positives in their top-K (and one negative) are kept. Held out: queries of the
held-out landmarks searched among all images; their shortlists choose the checkpoint and lambda /
gamma, never the test benchmark. Results are cached as .npy files with a JSON key beside them.
"""

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from core.io import make_folder, read_json, write_json, write_npy
from datasets.gldv2 import read_gldv2_csv
from tools.knn.global_search import exact_search

QUERY_BLOCK = 4096  # queries searched at a time: bounds the score block to 4096 x SEARCH_CHUNK


@dataclass
class Mined:
    """anchors [A] store rows; neighbours [A, K] store rows (ranking order, self excluded);
    positive [A, K] bool."""

    anchors: np.ndarray
    neighbours: np.ndarray
    positive: np.ndarray


@dataclass
class HeldOut:
    """queries [Q] store rows; shortlist [Q, S] store rows; scores [Q, S] global similarities;
    positive [Q, S] bool; total_positives [Q] same-landmark images in the whole store (self
    excluded)."""

    queries: np.ndarray
    shortlist: np.ndarray
    scores: np.ndarray
    positive: np.ndarray
    total_positives: np.ndarray


def store_labels(names, labels_csv):
    """[N] int64 landmark id of each store image, from the split's CSV; every image must be
    listed."""
    label_of = {image: int(landmark) for landmark, images in read_gldv2_csv(labels_csv).items()
                for image in images}  # fmt: skip
    missing = [name for name in names if name not in label_of]
    if missing:
        raise ValueError(
            f"RERANKER.TRAIN.LABELS {labels_csv}: {len(missing)} images of the store are not "
            f"listed (e.g. {missing[0]!r}); the store must be extracted from this split"
        )
    return np.array([label_of[name] for name in names], dtype=np.int64)


def held_out_landmarks(labels, fraction, seed):
    """The sorted landmark ids held out: round(fraction * landmarks) chosen by a seeded hash."""
    landmarks = np.unique(labels)
    count = int(round(fraction * len(landmarks)))
    key = [hashlib.blake2b(f"{seed}/{int(x)}".encode(), digest_size=8).digest() for x in landmarks]
    return np.sort(landmarks[np.argsort(np.array(key, dtype=object), kind="stable")[:count]])


def top_k_without_self(queries, rows, descriptors, k, chunk, device):
    """For store rows `queries`, the top-k store rows among `rows` (itself excluded): (scores,
    neighbours) [n, k] in ranking order, searched in blocks of QUERY_BLOCK queries."""
    database = descriptors[rows] if len(rows) < len(descriptors) else descriptors
    k = min(k, len(rows) - 1)
    scores, found = [], []
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK]
        s, i = exact_search(descriptors[block], database, k + 1, chunk, device)
        i = np.asarray(rows)[i]
        keep = i != block[:, None]
        keep[keep.all(1), -1] = False  # self not among the k + 1: drop the last
        scores.append(s[keep].reshape(len(block), k))
        found.append(i[keep].reshape(len(block), k))
    return np.concatenate(scores), np.concatenate(found)


def mine(descriptors, labels, rows, top_k, min_positives, chunk=65536, device="cpu"):
    """Anchors among `rows` with >= min_positives same-landmark images (and a negative) in their
    top-K among `rows`."""
    rows = np.asarray(rows, dtype=np.int64)
    _, neighbours = top_k_without_self(rows, rows, descriptors, top_k, chunk, device)
    positive = labels[neighbours] == labels[rows][:, None]
    keep = (positive.sum(1) >= min_positives) & (~positive).any(1)
    return Mined(rows[keep], neighbours[keep], positive[keep])


def held_out_set(descriptors, labels, val_landmarks, shortlist, max_queries, seed, chunk, device):
    """Shortlists of (at most max_queries, seeded choice) images of the held-out landmarks among all
    images."""
    candidates = np.flatnonzero(np.isin(labels, val_landmarks))
    if len(candidates) > max_queries:
        chosen = np.random.default_rng(seed).choice(len(candidates), max_queries, replace=False)
        candidates = candidates[np.sort(chosen)]
    everything = np.arange(len(labels))
    scores, shortlists = top_k_without_self(
        candidates, everything, descriptors, shortlist, chunk, device
    )
    same = labels[shortlists] == labels[candidates][:, None]
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return HeldOut(candidates, shortlists, scores, same, counts[inverse[candidates]] - 1)


# --------------------------------------------------------------------------------------- the cache
def save_mined(folder, key, mined, held_out):
    """Arrays first, the key last: a folder with a key is complete."""
    make_folder(folder)
    for prefix, record in (("train", mined), ("val", held_out)):
        for name, array in vars(record).items():
            write_npy(os.path.join(folder, f"{prefix}_{name}.npy"), np.asarray(array))
    write_json(os.path.join(folder, "key.json"), key)


def load_mined(folder, key):
    """(Mined, HeldOut) cached in folder under this key, or None."""
    path = os.path.join(folder, "key.json")
    if not os.path.isfile(path) or read_json(path) != key:
        return None

    def arrays(prefix, kind):
        names = kind.__dataclass_fields__
        return kind(**{n: np.load(os.path.join(folder, f"{prefix}_{n}.npy")) for n in names})

    return arrays("train", Mined), arrays("val", HeldOut)
