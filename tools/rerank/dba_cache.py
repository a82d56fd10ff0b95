"""The alpha-DBA database, computed once and cached beside its store: NumPy arrays and JSON, no
pickles.

    <root>/<key>/augmented.npy   [n, d] float32, the augmented database (memory-mapped on reading)
    <root>/<key>/meta.json       what it was computed from: the sha256 of the store's global.npy,
                                 k, alpha, the negative-similarity rule, the shape
    <root>/<key>/partial/        while it is being computed: progress.json (the block size) and one
                                 rows_<start>.npy per finished block of database rows

The key hashes the content of global.npy and the parameters, so another extraction (or another k)
never reads a stale cache. Blocks are written atomically as they finish (core/io.py); an interrupted
run continues with the blocks still missing, and its result equals an uninterrupted one
(database_augmentation.augment_blocks). meta.json is written last: a folder without it is never
read as a finished cache.
"""

import hashlib
import logging
import os
import shutil

import numpy as np
import simplejson

from core.io import atomic_path, read_json, write_json, write_npy
from tools.rerank.database_augmentation import augment_blocks, block_ranges

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
READ_BYTES = 1 << 24


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_meta(global_path, shape, k, alpha, negative):
    """What identifies an augmented database (meta.json without the key)."""
    return {
        "format_version": FORMAT_VERSION,
        "source": os.path.abspath(global_path),
        "source_sha256": file_sha256(global_path),
        "shape": [int(size) for size in shape],
        "k": int(k),
        "alpha": float(alpha),
        "negative": negative,
    }


def cache_key(meta):
    """16 hex digits over everything in meta but the source's path (a moved store stays cached)."""
    identity = {key: value for key, value in meta.items() if key != "source"}
    return hashlib.sha256(simplejson.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def cached_augmentation(
    database,
    global_path,
    cache_root,
    k,
    alpha=3.0,
    negative="clamp",
    chunk_size=4096,
    device="cpu",
):
    """(augmented database [n, d] float32 memory-mapped, its cache folder). database: the rows of
    ``global_path`` (the store's global.npy, hashed for the key)."""
    meta = cache_meta(global_path, database.shape, k, alpha, negative)
    folder = os.path.join(cache_root, cache_key(meta))
    array_path, meta_path = (os.path.join(folder, name) for name in ("augmented.npy", "meta.json"))
    if os.path.isfile(meta_path):
        _check_meta(meta_path, meta)
        logger.info("DBA cache reused: %s", folder)
        return np.load(array_path, mmap_mode="r"), folder
    partial = os.path.join(folder, "partial")
    chunk_size = _block_size(partial, chunk_size)
    done = _finished_blocks(partial, database.shape, chunk_size)
    if done:
        logger.info(
            "DBA resumed: %d of %d blocks already in %s",
            len(done),
            len(block_ranges(database.shape[0], chunk_size)),
            partial,
        )
    for start, _, rows in augment_blocks(
        database, k, alpha, negative, chunk_size, device, done=done, progress=True
    ):
        write_npy(_block_path(partial, start), rows)
    _assemble(partial, array_path, database.shape, chunk_size)
    write_json(meta_path, dict(meta, key=os.path.basename(folder), chunk_size=chunk_size))
    shutil.rmtree(partial)
    logger.info("DBA cache written: %s", folder)
    return np.load(array_path, mmap_mode="r"), folder


def _check_meta(meta_path, expected):
    found = read_json(meta_path)
    for key, value in expected.items():
        if key != "source" and found.get(key) != value:
            raise ValueError(
                f"{meta_path}: {key} is {found.get(key)!r} but this run expects {value!r}; "
                f"remove the folder to recompute it"
            )


def _block_size(partial, chunk_size):
    """The block size of an interrupted run (its blocks are reused), else chunk_size, recorded."""
    progress = os.path.join(partial, "progress.json")
    if os.path.isfile(progress):
        return int(read_json(progress)["chunk_size"])
    write_json(progress, {"chunk_size": int(chunk_size)})
    return int(chunk_size)


def _block_path(partial, start):
    return os.path.join(partial, f"rows_{start:012d}.npy")


def _finished_blocks(partial, shape, chunk_size):
    """Starts of the blocks an earlier run wrote whole (right shape); others are recomputed."""
    done = set()
    for start, stop in block_ranges(shape[0], chunk_size):
        path = _block_path(partial, start)
        if os.path.isfile(path):
            rows = np.load(path, mmap_mode="r")
            if rows.shape == (stop - start, shape[1]) and rows.dtype == np.float32:
                done.add(start)
    return done


def _assemble(partial, array_path, shape, chunk_size):
    """augmented.npy from the blocks, streamed (written atomically)."""
    with atomic_path(array_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(shape))
        for start, stop in block_ranges(shape[0], chunk_size):
            out[start:stop] = np.load(_block_path(partial, start))
        out.flush()
        del out
