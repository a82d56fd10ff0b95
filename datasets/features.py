"""The feature store: global and local features of one image set, as a folder of NumPy arrays.

No pickles: every array is a ``.npy`` file opened memory-mapped, so reading one image's local
features touches only its rows, and the layout is documented in docs/architecture.md. ``meta.json``
is written last, so a folder without it is an incomplete store.

meta.json records a digest of every array (datasets/digests.py: the full sha256 at write); opening a
store checks each array's size and sampled sha256 against it, so an array swapped in from another
store of the same shape is refused, naming the store and the file. A store written before digests
were recorded opens with one warning line; ``record_digests(folder)`` records them.
"""

import logging
import os

import numpy as np

from core.io import atomic_path, check_free_space, read_json, write_json, write_npy
from datasets.digests import digest_problem, file_digest, full_sha256

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCAL_FIELDS = ("locations", "scales", "scores", "descriptors")
_LOCAL_DTYPES = {"locations": np.float32, "scales": np.float32, "scores": np.float32}


_WARNED = set()  # folders of stores without digests already warned about in this process


class FeatureStoreError(ValueError):
    """A store that is missing, incomplete or inconsistent; the message names the folder."""


def write_store(
    folder,
    names,
    global_descriptors=None,
    local_features=None,
    provenance=None,
    crop_boxes=None,
    float16=True,
):
    """Write a store atomically file by file (meta.json last).

    local_features: a list (one entry per name) of dicts with the LOCAL_FIELDS arrays; descriptors
    are stored as float16 when float16 is True.
    """
    names = [str(name) for name in names]
    if global_descriptors is None and local_features is None:
        raise FeatureStoreError(f"{folder}: nothing to write (no global and no local features)")
    check_free_space(folder, _bytes_of(global_descriptors, local_features), f"the store {folder}")
    meta_path = os.path.join(folder, "meta.json")
    # rewriting a store: it must not open while old and new arrays are mixed
    if os.path.isfile(meta_path):
        os.remove(meta_path)
    meta = {
        "format_version": FORMAT_VERSION,
        "names": names,
        "provenance": provenance or {},
        "crop_boxes": crop_boxes or {},
        "has_global": global_descriptors is not None,
        "has_local": local_features is not None,
        "global_dim": 0,
        "local_dim": 0,
    }
    if global_descriptors is not None:
        global_descriptors = np.asarray(global_descriptors, dtype=np.float32)
        _check_rows(folder, "global descriptors", len(global_descriptors), len(names))
        write_npy(os.path.join(folder, "global.npy"), global_descriptors)
        meta["global_dim"] = int(global_descriptors.shape[1])
    if local_features is not None:
        _check_rows(folder, "local feature sets", len(local_features), len(names))
        meta["local_dim"] = _write_local(folder, local_features, float16)
    meta["digests"] = _digests(folder, meta)
    write_json(meta_path, meta)
    return meta


def _array_files(meta):
    """The .npy files a store with this meta.json holds."""
    files = ["global.npy"] if meta["has_global"] else []
    if meta["has_local"]:
        files += ["local_offsets.npy"] + [f"local_{field}.npy" for field in LOCAL_FIELDS]
    return files


def _digests(folder, meta):
    return {name: file_digest(os.path.join(folder, name)) for name in _array_files(meta)}


def record_digests(folder):
    """Record the digests of a store written without them (the arrays as they are now: check them
    first, e.g. by evaluating); returns the new meta.json content."""
    meta_path = os.path.join(folder, "meta.json")
    meta = read_json(meta_path)
    meta["digests"] = _digests(folder, meta)
    write_json(meta_path, meta)
    return meta


def _bytes_of(global_descriptors, local_features):
    """Bytes the arrays will take on disk (float32 at most), plus 64 KiB for headers and meta."""
    total = 4 * np.size(global_descriptors) if global_descriptors is not None else 0
    for features in local_features or ():
        total += sum(4 * np.size(features[field]) + 8 for field in LOCAL_FIELDS)
    return int(total) + 2**16


def _check_rows(folder, what, count, expected):
    if count != expected:
        raise FeatureStoreError(f"{folder}: {count} {what} for {expected} image names")


def _write_local(folder, local_features, float16):
    counts = np.array([len(features["scores"]) for features in local_features], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    write_npy(os.path.join(folder, "local_offsets.npy"), offsets)
    dim = 0
    for field in LOCAL_FIELDS:
        parts = [np.asarray(features[field]) for features in local_features]
        if field == "descriptors":
            dtype = np.float16 if float16 else np.float32
            dim = max((part.shape[1] for part in parts if part.ndim == 2 and len(part)), default=0)
            parts = [part.reshape(-1, dim) if dim else part.reshape(0, 0) for part in parts]
        else:
            dtype = _LOCAL_DTYPES[field]
        column = np.concatenate(parts).astype(dtype) if parts else np.zeros((0,), dtype)
        if field == "locations":
            column = column.reshape(-1, 2)
        write_npy(os.path.join(folder, f"local_{field}.npy"), column)
    return int(dim)


def concatenate_stores(folder, stores, provenance=None, crop_boxes=None):
    """Join opened stores, in order, into a new store in folder, array by array through memory maps.

    Memory stays at one chunk whatever the size (a million global descriptors, local features of
    many shards).
    """
    if not stores:
        raise FeatureStoreError(f"{folder}: no stores to join")
    kinds = {(store.has_global, store.has_local) for store in stores}
    if len(kinds) > 1:
        raise FeatureStoreError(
            f"{folder}: cannot join stores with and without global or local features"
        )
    has_global, has_local = kinds.pop()
    os.makedirs(folder, exist_ok=True)
    names = [name for store in stores for name in store.names]
    meta = {
        "format_version": FORMAT_VERSION,
        "names": names,
        "provenance": provenance or {},
        "crop_boxes": crop_boxes or {},
        "has_global": has_global,
        "has_local": has_local,
        "global_dim": max(store.meta["global_dim"] for store in stores),
        "local_dim": max(store.meta["local_dim"] for store in stores),
    }
    if has_global:
        _concatenate_arrays(
            os.path.join(folder, "global.npy"), [store._array("global") for store in stores]
        )
    if has_local:
        counts = np.concatenate(
            [np.diff(np.asarray(store._array("local_offsets"))) for store in stores]
        )
        write_npy(
            os.path.join(folder, "local_offsets.npy"),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )
        for field in LOCAL_FIELDS:
            _concatenate_arrays(
                os.path.join(folder, f"local_{field}.npy"),
                [store._array(f"local_{field}") for store in stores],
            )
    meta["digests"] = _digests(folder, meta)
    write_json(os.path.join(folder, "meta.json"), meta)
    return meta


def _concatenate_arrays(path, arrays, chunk_rows=65536):
    filled = [array for array in arrays if len(array)] or arrays[:1]
    shape = (sum(len(array) for array in filled),) + filled[0].shape[1:]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=filled[0].dtype, shape=shape)
        row = 0
        for array in filled:
            for start in range(0, len(array), chunk_rows):
                block = array[start : start + chunk_rows]
                out[row : row + len(block)] = block
                row += len(block)
        out.flush()
        del out


class FeatureStore:
    """Read access to one store; arrays are memory-mapped and loaded lazily."""

    def __init__(self, folder):
        self.folder = folder
        meta_path = os.path.join(folder, "meta.json")
        if not os.path.isfile(meta_path):
            raise FeatureStoreError(
                f"{folder}: not a feature store (no meta.json; extraction incomplete?)"
            )
        self.meta = read_json(meta_path)
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise FeatureStoreError(
                f"{folder}: format version {self.meta.get('format_version')} is not "
                f"{FORMAT_VERSION}"
            )
        self.names = list(self.meta["names"])
        self._index = {name: i for i, name in enumerate(self.names)}
        self._arrays, self._sha256 = {}, {}
        self._check_sizes()
        self._check_digests()

    def _check_sizes(self):
        """Check every array against meta.json (rows per image, dimensions, offsets), so a truncated
        or mismatched file is named on open instead of failing somewhere in a search."""
        count = len(self.names)
        if self.has_global:
            rows, dim = self._shape("global")[:1], self._shape("global")[1:]
            self._expect("global", rows == (count,), f"{count} rows (one per image in meta.json)")
            self._expect(
                "global", dim == (self.meta["global_dim"],), f"{self.meta['global_dim']} columns"
            )
        if self.has_local:
            self._expect(
                "local_offsets",
                self._shape("local_offsets") == (count + 1,),
                f"{count + 1} offsets",
            )
            offsets = self._array("local_offsets")
            total = int(offsets[-1])
            self._expect(
                "local_offsets",
                int(offsets[0]) == 0 and bool(np.all(np.diff(offsets) >= 0)),
                "offsets rising from 0",
            )
            for field in LOCAL_FIELDS:
                rows = self._shape(f"local_{field}")[0]
                self._expect(
                    f"local_{field}",
                    rows == total,
                    f"{total} rows (local_offsets.npy ends at {total})",
                )

    def _check_digests(self):
        """Each array against the digest meta.json recorded at write: size and sampled sha256."""
        digests = self.meta.get("digests")
        if digests is None:
            if self.folder not in _WARNED:
                _WARNED.add(self.folder)
                logger.warning(
                    "%s: meta.json records no digests of the arrays (written by an earlier "
                    "version), so a replaced array would go unnoticed; "
                    "datasets.features.record_digests(folder) records them",
                    self.folder,
                )
            return
        for name in _array_files(self.meta):
            path = os.path.join(self.folder, name)
            problem = digest_problem(path, digests.get(name))
            if problem:
                raise FeatureStoreError(
                    f"{path}: {problem}, so it is not the {name} the store {self.folder} was "
                    f"written with (swapped in from another store, or damaged); put its own "
                    f"{name} back or extract the store again"
                )

    def array_sha256(self, stem):
        """The content identity of one array (derived data are keyed by it): the sha256 recorded
        at write, or for a store without digests the file's sha256, computed once."""
        name = f"{stem}.npy"
        if name not in self._sha256:
            recorded = (self.meta.get("digests") or {}).get(name, {}).get("sha256")
            self._sha256[name] = recorded or full_sha256(os.path.join(self.folder, name))
        return self._sha256[name]

    def _shape(self, stem):
        return tuple(self._array(stem).shape)

    def _expect(self, stem, ok, expected):
        if not ok:
            raise FeatureStoreError(
                f"{os.path.join(self.folder, stem + '.npy')}: shape {self._shape(stem)} does not "
                f"match meta.json, expected {expected}; the store is damaged, extract it again"
            )

    def __len__(self):
        return len(self.names)

    @property
    def has_global(self):
        return bool(self.meta["has_global"])

    @property
    def has_local(self):
        return bool(self.meta["has_local"])

    @property
    def provenance(self):
        return self.meta.get("provenance", {})

    @property
    def crop_boxes(self):
        return self.meta.get("crop_boxes", {})

    def _array(self, stem):
        if stem not in self._arrays:
            path = os.path.join(self.folder, f"{stem}.npy")
            if not os.path.isfile(path):
                raise FeatureStoreError(f"{self.folder}: {stem}.npy is missing")
            try:
                self._arrays[stem] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as error:  # truncated: "mmap length is greater than ..."
                raise FeatureStoreError(
                    f"{path}: unreadable ({error}); the store is damaged, extract it again"
                ) from None
        return self._arrays[stem]

    def global_descriptors(self):
        """[N, D] float32, L2-normalised, memory-mapped."""
        if not self.has_global:
            raise FeatureStoreError(f"{self.folder}: store has no global descriptors")
        return self._array("global")

    def index_of(self, name):
        try:
            return self._index[name]
        except KeyError:
            raise FeatureStoreError(f"{self.folder}: no image named {name!r}") from None

    def local(self, name):
        """One image's local features: locations [n, 2] (x, y), scales [n], scores [n], descriptors
        [n, d]."""
        return self.local_at(self.index_of(name))

    def local_at(self, index):
        if not self.has_local:
            raise FeatureStoreError(
                f"{self.folder}: store has no local features (extracted global-only)"
            )
        offsets = self._array("local_offsets")
        start, end = int(offsets[index]), int(offsets[index + 1])
        return {
            field: np.asarray(self._array(f"local_{field}")[start:end]) for field in LOCAL_FIELDS
        }

    def local_rows(self):
        """All local features at once, memory-mapped: (dict of LOCAL_FIELDS arrays [M, ...], offsets
        [N + 1])."""
        if not self.has_local:
            raise FeatureStoreError(
                f"{self.folder}: store has no local features (extracted global-only)"
            )
        return {field: self._array(f"local_{field}") for field in LOCAL_FIELDS}, self._array(
            "local_offsets"
        )

    def num_local(self, index):
        offsets = self._array("local_offsets")
        return int(offsets[index + 1] - offsets[index])

    def bytes_per_image(self):
        """Average bytes on disk per image, over all arrays of the store."""
        total = sum(
            os.path.getsize(os.path.join(self.folder, entry))
            for entry in os.listdir(self.folder)
            if entry.endswith(".npy")
        )
        return total / max(len(self.names), 1)


def open_store(folder):
    """Open the store in folder (see FeatureStore)."""
    return FeatureStore(folder)
