"""The alpha-DBA database, computed once and kept beside its store as derived data
(datasets/derived.py: keyed, validated, published by one rename, safe for concurrent runs).

    <root>/dba-<key>/augmented.npy        [n, d] float32, the augmented database (memory-mapped)
    <root>/dba-<key>/meta.json            its identity (the sha256 of the store's global.npy as the
                                          store records it, the shape, k, alpha, the negative rule),
                                          the arrays' shapes, dtypes and digests
    <root>/dba-<key>.partial/             while it is computed: rows_<start>_<stop>.npy, one file
                                          per finished block of database rows
    <root>/dba-<key>.lock                 the lock of the partial state (an empty file)

The key hashes the identity, so another extraction (or another k) never reads a stale cache. The
block size (RERANK.DBA_CHUNK) is not part of it: a block's rows do not depend on it
(database_augmentation.augment_blocks), so a resumed run keeps every finished block, whatever block
size either run used, and its result equals an uninterrupted one bit for bit. Blocks are written
atomically as they finish (core/io.py), so a killed run leaves only whole blocks; one that fails
its check (shape, dtype, finite unit rows) is computed again.
"""

import logging
import os
import re

import numpy as np

from core.io import atomic_path, write_npy
from datasets.derived import PartialState, derived_folder, load_validated, publish
from tools.rerank.database_augmentation import augment_blocks
from tools.rerank.query_expansion import NEGATIVE_RULES

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
_BLOCK = re.compile(r"rows_(\d{12})_(\d{12})\.npy")


def check_settings(k, alpha, negative, chunk_size):
    """Refuse settings that cannot give an augmented database, before anything is written."""
    problems = []
    if not isinstance(k, (int, np.integer)) or k < 1:
        problems.append(f"k (RERANK.DBA_K) must be a whole number >= 1, got {k!r}")
    if not np.isfinite(alpha) or alpha < 0:
        problems.append(f"alpha (RERANK.DBA_ALPHA) must be a finite number >= 0, got {alpha!r}")
    if negative not in NEGATIVE_RULES:
        problems.append(
            f"negative (RERANK.NEGATIVE) must be one of {NEGATIVE_RULES}, got {negative!r}"
        )
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        problems.append(
            f"chunk_size (RERANK.DBA_CHUNK) must be a whole number >= 1, got {chunk_size!r}"
        )
    if problems:
        raise ValueError("alpha-DBA: " + "; ".join(problems))


def cache_identity(source_sha256, shape, k, alpha, negative):
    """What decides an augmented database."""
    return {
        "format": FORMAT_VERSION,
        "source_sha256": source_sha256,
        "shape": [int(size) for size in shape],
        "k": int(k),
        "alpha": float(alpha),
        "negative": negative,
    }


def cached_augmentation(
    database,
    source_sha256,
    cache_root,
    k,
    alpha=3.0,
    negative="clamp",
    chunk_size=4096,
    device="cpu",
):
    """(augmented database [n, d] float32 memory-mapped, its cache folder). database: the rows the
    store's global.npy holds; source_sha256: its content identity (FeatureStore.array_sha256)."""
    check_settings(k, alpha, negative, chunk_size)
    identity = cache_identity(source_sha256, database.shape, k, alpha, negative)
    folder = derived_folder(cache_root, "dba", identity)
    shapes = {"augmented": (database.shape, np.float32)}
    arrays = load_validated(folder, identity, shapes)
    if arrays is None:
        with PartialState(folder) as partial:
            arrays = load_validated(folder, identity, shapes)  # published while we waited
            if arrays is None:
                arrays = _compute(
                    database, folder, identity, partial.path, k, alpha, negative, chunk_size, device
                )
    else:
        logger.info("DBA cache reused: %s", folder)
    return arrays["augmented"], folder


def _compute(database, folder, identity, partial, k, alpha, negative, chunk_size, device):
    """Compute the missing blocks into the partial state, then publish the assembled database
    (or take another process's, published while this one was computing)."""
    shapes = {"augmented": (database.shape, np.float32)}
    blocks, done = resume_plan(partial, database.shape, chunk_size)
    if done:
        finished_rows = sum(stop - start for start, stop in blocks if start in done)
        logger.info(
            "DBA resumed: %d blocks (%d of %d rows) already in %s",
            len(done),
            finished_rows,
            database.shape[0],
            partial,
        )
    for start, stop, rows in augment_blocks(
        database, k, alpha, negative, chunk_size, device, done=done, progress=True, blocks=blocks
    ):
        if os.path.isdir(folder):
            arrays = load_validated(folder, identity, shapes)
            if arrays is not None:
                logger.info("DBA cache published by another process meanwhile: %s", folder)
                return arrays
        write_npy(block_path(partial, start, stop), rows)
    arrays = publish(
        folder,
        identity,
        lambda tmp: _assemble(partial, os.path.join(tmp, "augmented.npy"), database.shape, blocks),
        shapes=shapes,
    )
    logger.info("DBA cache written: %s", folder)
    return arrays


def block_path(partial, start, stop):
    return os.path.join(partial, f"rows_{start:012d}_{stop:012d}.npy")


def resume_plan(partial, shape, chunk_size):
    """(blocks [(start, stop)] covering the rows in order, starts of those already finished): the
    whole blocks an earlier run left (of any size), and the gaps between them cut into blocks of
    chunk_size rows."""
    finished, end = [], 0
    for start, stop in sorted(_blocks_found(partial, shape)):
        if start >= end:  # blocks of runs with other block sizes may overlap: keep the first
            finished.append((start, stop))
            end = stop
    blocks, position = [], 0
    for start, stop in finished + [(shape[0], shape[0])]:
        blocks += [
            (first, min(first + chunk_size, start)) for first in range(position, start, chunk_size)
        ]
        if stop > start:
            blocks.append((start, stop))
        position = stop
    return blocks, {start for start, _ in finished}


def _blocks_found(partial, shape):
    entries = sorted(os.listdir(partial)) if os.path.isdir(partial) else []
    for entry in entries:
        match = _BLOCK.fullmatch(entry)
        if match:
            start, stop = int(match[1]), int(match[2])
            if 0 <= start < stop <= shape[0] and _whole(
                os.path.join(partial, entry), stop - start, shape[1]
            ):
                yield start, stop


def _whole(path, rows, dim):
    """A block file of the right shape and dtype holding unit rows (else it is recomputed)."""
    try:
        block = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    if block.shape != (rows, dim) or block.dtype != np.float32:
        return False
    norms = np.linalg.norm(np.asarray(block, dtype=np.float64), axis=1)
    # unit rows; a zero row stays zero (an image without features has a zero descriptor)
    return bool(np.all((np.abs(norms - 1) < 1e-3) | (norms == 0)))


def _assemble(partial, array_path, shape, blocks):
    """augmented.npy from the blocks, streamed."""
    with atomic_path(array_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=tuple(shape))
        for start, stop in blocks:
            out[start:stop] = np.load(block_path(partial, start, stop))
        out.flush()
        del out
