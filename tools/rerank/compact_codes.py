"""Compact database codes for the learned re-ranker: the top N_DATABASE local features of each
database image (by attention), in float16 and as binary codes, stored beside the store as derived
data (NumPy arrays and JSON, no pickles).

    codes = float16_codes(store, count)  # CompactCodes, built once per store content
    bits = binary_codes(codes, model.database_codes, weights_sha256)  # packed sign bits
    batch = codes.take(rows)  # {"descriptors", "scales", "locations", "padding"}
    sizes = bytes_per_image(count, dim, bits=128)  # what one database image costs on disk

Layout of a code folder (``<store>.compact/float16-<key>/``, ``binary-<key>``):

    meta.json            the identity (the store's content digest, count, the model weights'
                         digest for binary codes), each array's shape, dtype and digest
    descriptors.npy      [N, count, d] float16, or [N, count, bits / 8] uint8 (the sign of a
                         binary model's learned projection, modeling.reranker_binary.pack_codes)
    scales.npy           [N, count] uint8, each feature's scale index
                         (modeling.reranker_inputs.scale_index)
    locations.npy        [N, count, 2] float16, (x, y) pixels
    counts.npy           [N] int32, how many of the count slots hold a feature (the rest is padding)

Derived data under the rule of datasets/derived.py: the key hashes what the codes are derived
from, so another extraction, count or model never reads stale codes; they are validated before use
and published whole. A store without local features (a +1M database) has no folder: its
shortlisted images are read through the evaluation's on-demand local features and compacted in
memory (``codes_from_reader``), the same selection and the same arrays.
"""

import hashlib
import os

import numpy as np

from datasets.derived import derived_folder, load_validated, publish
from datasets.digests import full_sha256
from modeling.reranker_binary import pack_codes, unpack_codes
from modeling.reranker_inputs import top_locals

FORMAT_VERSION = 1
SUFFIX = ".compact"
FIELDS = ("descriptors", "scales", "locations", "counts")


# ---------------------------------------------------------------------------------------- selection
def empty_arrays(num_images, count, dim):
    return {
        "descriptors": np.zeros((num_images, count, dim), np.float16),
        "scales": np.zeros((num_images, count), np.uint8),
        "locations": np.zeros((num_images, count, 2), np.float16),
        "counts": np.zeros(num_images, np.int32),
    }


def fill(arrays, slot, features, count):
    """Write one image's first ``count`` local features by attention (the re-ranker's selection,
    modeling.reranker_inputs.top_locals) into slot ``slot`` of the padded arrays."""
    selected = top_locals(features, count)
    kept = len(selected["descriptors"])
    arrays["descriptors"][slot, :kept] = selected["descriptors"]
    arrays["scales"][slot, :kept] = selected["scales"]
    arrays["locations"][slot, :kept] = selected["locations"]
    arrays["counts"][slot] = kept


def codes_from_reader(local_at, rows, count, dim):
    """In-memory CompactCodes of some rows of a store read through ``local_at(row)`` (on-demand
    features of a global-only database); ``take`` then reads them by those rows."""
    rows = np.asarray(rows, dtype=np.int64)
    arrays = empty_arrays(len(rows), count, dim)
    for slot, row in enumerate(rows):
        fill(arrays, slot, local_at(int(row)), count)
    return CompactCodes(arrays, {"count": count, "kind": "float16"}, rows=rows)


# ------------------------------------------------------------------------------------------- codes
class CompactCodes:
    """Padded per-image code arrays (memory-mapped from a code folder or in memory)."""

    def __init__(self, arrays, meta, folder=None, rows=None):
        self.arrays = arrays
        self.meta = meta
        self.folder = folder
        # in-memory codes of some store rows: store row -> slot
        self._slot = None if rows is None else {int(row): i for i, row in enumerate(rows)}

    @property
    def binary(self):
        return self.meta.get("kind") == "binary"

    @property
    def count(self):
        return int(self.arrays["descriptors"].shape[1])

    def slots(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if self._slot is None:
            return rows
        missing = [int(row) for row in rows if int(row) not in self._slot]
        if missing:
            raise KeyError(f"compact codes hold no database row {missing[0]}")
        return np.array([self._slot[int(row)] for row in rows], dtype=np.int64)

    def take(self, rows):
        """{"descriptors" [B, count, d] float32 (binary: +-1 of the unpacked bits), "scales" [B,
        count] int64, "locations" [B, count, 2] float32, "padding" [B, count] bool (True = an empty
        slot)}"""
        slots = self.slots(rows)
        order = np.argsort(slots, kind="stable")  # memory maps read fastest in file order
        picked = {field: np.asarray(self.arrays[field][slots[order]]) for field in FIELDS}
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        picked = {field: array[back] for field, array in picked.items()}
        if self.binary:
            descriptors = unpack_codes(picked["descriptors"]).numpy()
        else:
            descriptors = picked["descriptors"].astype(np.float32)
        padding = np.arange(self.count)[None, :] >= picked["counts"][:, None]
        return {
            "descriptors": descriptors,
            "scales": picked["scales"].astype(np.int64),
            "locations": picked["locations"].astype(np.float32),
            "padding": padding,
        }


def binarize(codes, coder, chunk_rows=4096):
    """Binary arrays of float16 codes: ``coder(descriptors [B, count, d] float32) -> +-1 [B, count,
    bits]`` (a binary model's sign of its learned projection) packed to bits; padding zeroed."""
    arrays = {field: codes.arrays[field] for field in ("scales", "locations", "counts")}
    blocks = []
    for start in range(0, len(arrays["counts"]), chunk_rows):
        block = np.asarray(codes.arrays["descriptors"][start : start + chunk_rows], np.float32)
        counts = np.asarray(arrays["counts"][start : start + chunk_rows])
        kept = np.arange(codes.count)[None, :] < counts[:, None]
        blocks.append(pack_codes(coder(block)) * kept[..., None])
    if not blocks:
        return dict(arrays, descriptors=np.zeros((0, codes.count, 0), np.uint8))
    return dict(arrays, descriptors=np.concatenate(blocks))


# ------------------------------------------------------------------------------------ derived data
def file_digest(path):
    """sha256 of a file's content (a model's weights)."""
    return full_sha256(path)


def store_digest(store):
    """sha256 over the content digests of the store's local arrays (what float16 codes derive
    from)."""
    stems = [
        "local_offsets",
        "local_scores",
        "local_scales",
        "local_locations",
        "local_descriptors",
    ]
    text = " ".join(store.array_sha256(stem) for stem in stems)
    return hashlib.sha256(text.encode()).hexdigest()


def publish_derived(root, name, identity, write):
    """(folder, {field: array}) of derived data under datasets/derived.py's rule (keyed by the
    identity, validated before use, published whole by one rename, a concurrent writer uses the
    winner's); ``write(folder)`` writes the arrays when they are not there yet."""
    folder = derived_folder(root, name, identity)
    arrays = load_validated(folder, identity)
    if arrays is None:
        arrays = publish(folder, identity, write)
    return folder, arrays


def codes_root(store, root=""):
    """Where a store's codes live: ``root`` when given, else beside the store (<store>.compact)."""
    return root or os.path.normpath(str(store.folder)) + SUFFIX


def _writer(arrays_of):
    def write(folder):
        for field, array in arrays_of().items():
            np.save(os.path.join(folder, f"{field}.npy"), np.ascontiguousarray(array))

    return write


def float16_codes(store, count, root=""):
    """CompactCodes (float16) of every image of a store with local features, built once per store
    content and count."""
    identity = {
        "format_version": FORMAT_VERSION,
        "kind": "float16",
        "count": int(count),
        "source_sha256": store_digest(store),
    }

    def arrays():
        out = empty_arrays(len(store), count, int(store.meta["local_dim"]))
        for row in range(len(store)):
            fill(out, row, store.local_at(row), count)
        return out

    folder, stored = publish_derived(codes_root(store, root), "float16", identity, _writer(arrays))
    return CompactCodes(stored, identity, folder=folder)


def binary_codes(codes, coder, coder_sha256, root=""):
    """CompactCodes (binary) of float16 codes under a binary model's ``coder`` (see binarize),
    identified by ``coder_sha256`` (its weights file's digest): on disk beside the float16 codes
    when those are on disk, else in memory."""
    identity = {
        "format_version": FORMAT_VERSION,
        "kind": "binary",
        "count": codes.count,
        "float16_codes": codes.meta.get("source_sha256", ""),
        "coder_sha256": coder_sha256,
    }
    if codes.folder is None:
        rows = None if codes._slot is None else sorted(codes._slot, key=codes._slot.get)
        return CompactCodes(binarize(codes, coder), identity, rows=rows)
    root = root or os.path.dirname(codes.folder)
    write = _writer(lambda: binarize(codes, coder))
    folder, stored = publish_derived(root, "binary", identity, write)
    return CompactCodes(stored, identity, folder=folder)


# ------------------------------------------------------------------------------------------- sizes
def bytes_per_image(count, dim, bits=128):
    """Bytes one database image costs: descriptors alone and with the side arrays (scale index 1 B,
    (x, y) float16 4 B per feature, the count 4 B), float16 and binary."""
    side = count * (1 + 4) + 4
    float16, binary = count * dim * 2, count * bits // 8
    return {
        "float16": float16,
        "binary": binary,
        "float16_with_side": float16 + side,
        "binary_with_side": binary + side,
    }
