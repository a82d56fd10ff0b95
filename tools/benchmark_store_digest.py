"""Benchmark: what the array digests of a feature store cost (datasets/digests.py), at write and at
open, on a +1M-size global-only store.

A store of --rows x --dim float32 global descriptors (default 1,000,000 x 2048: 8.2 GB, the size of
a revisitop +1M database) is written into --folder the way the shard merge streams it (blocks of
rows through a memory map, then flushed to disk with fsync); then its digests are recorded
(``record_digests``: the full sha256 and the sampled sha256 of global.npy, what every writer adds),
and the store is opened with the check (size and 256 sampled pages) and without it (meta.json
alone), with global.npy in the page cache and evicted from it (posix_fadvise DONTNEED). Last line:
``ratio: <digest seconds at write / seconds to write the array>``.

    python tools/benchmark_store_digest.py [--rows 1000000] [--dim 2048] [--folder DIR] [--keep]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from core.hardware import describe_machine  # noqa: E402
from core.io import write_json  # noqa: E402
from datasets.digests import digest_problem  # noqa: E402
from datasets.features import FORMAT_VERSION, open_store, record_digests  # noqa: E402

BLOCK_ROWS = 65536


def write_global(folder, rows, dim):
    """global.npy of rows x dim unit float32 rows, streamed in blocks and synced to disk."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "global.npy")
    rng = np.random.default_rng(0)
    block = rng.standard_normal((min(BLOCK_ROWS, rows), dim), dtype=np.float32)
    block /= np.linalg.norm(block, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        out[start:stop] = np.roll(block[: stop - start], start // BLOCK_ROWS, axis=1)
    out.flush()
    del out
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    write_json(
        os.path.join(folder, "meta.json"),
        {
            "format_version": FORMAT_VERSION,
            "names": [f"distractor_{index:07d}" for index in range(rows)],
            "provenance": {},
            "crop_boxes": {},
            "has_global": True,
            "has_local": False,
            "global_dim": dim,
            "local_dim": 0,
        },
    )
    return path


def evict(path):
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def open_times(folder, path, record):
    """{what: seconds} for opening the store and for the digest check alone, warm and cold."""
    times = {}
    for cache in ("cold", "warm"):
        if cache == "cold":
            evict(path)
        times[f"check {cache}"], problem = timed(digest_problem, path, record)
        assert problem is None, problem
        if cache == "cold":
            evict(path)
        times[f"open {cache}"], _ = timed(open_store, folder)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--folder", default="benchmark_store_digest")
    parser.add_argument("--keep", action="store_true", help="leave the store on disk")
    args = parser.parse_args()
    print(describe_machine("cpu"))
    folder = os.path.abspath(args.folder)
    write_seconds, path = timed(write_global, folder, args.rows, args.dim)
    size = os.path.getsize(path)
    print(f"store: {args.rows} x {args.dim} float32 global.npy, {size / 1e9:.2f} GB in {folder}")
    print(f"write global.npy (streamed, fsync): {write_seconds:.2f} s")
    digest_seconds, meta = timed(record_digests, folder)
    print(f"digest at write (full + sampled sha256): {digest_seconds:.2f} s")
    digests = meta.pop("digests")
    write_json(os.path.join(folder, "meta.json"), meta)  # for the open without a check
    evict(path)
    plain, _ = timed(open_store, folder)
    write_json(os.path.join(folder, "meta.json"), dict(meta, digests=digests))
    print(f"open without digests (meta.json and headers), cold: {plain * 1e3:.1f} ms")
    for what, seconds in open_times(folder, path, digests["global.npy"]).items():
        print(f"{what}: {seconds * 1e3:.1f} ms")
    if not args.keep:
        shutil.rmtree(folder)
    print(f"ratio: {digest_seconds / write_seconds:.3f}")


if __name__ == "__main__":
    main()
