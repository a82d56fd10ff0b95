"""Benchmark: alpha-DBA of a random database with our database_augmentation against the obvious
faiss solution, one process.

Database: --rows x --dim random L2-normalised float32 rows (seed 0). Ours: database_augmentation
(exact blocked k-NN of the database against itself on the symmetric score matrix, then the alpha
weighted sums; tools/rerank/database_augmentation.py). Baseline: a faiss IndexFlatIP k-NN search of
the database against itself (k neighbours, the image itself first), then a NumPy weighted sum
normalise(sum_j max(s_j, 0)^alpha x_j) in blocks of rows. The two results must agree (largest
absolute difference printed; neighbour sets compared). Peak memory (ru_maxrss) must stay under
--max-memory-gb. Last line: ``ratio: <faiss baseline seconds / our seconds>``, by wall-clock time
or, with ``--clock cpu``, by this process's CPU time (the work done, whatever else runs on a shared
machine; both clocks are always printed).

    python tools/benchmark_dba.py [--rows 200000] [--dim 512] [--k 10] [--chunk 4096]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.hardware import describe_machine  # noqa: E402
from tools.rerank.database_augmentation import database_augmentation  # noqa: E402

ALPHA = 3.0
TOLERANCE = 1e-4  # float32 sums in another order; the self weight is 1 in ours, (x . x)^3 in faiss
NEAR_TIE = 1e-5  # k-th and (k + 1)-th faiss scores closer than this: either choice is exact


def random_database(rows, dim, seed=0):
    rng = np.random.default_rng(seed)
    database = rng.standard_normal((rows, dim), dtype=np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    return database


def faiss_baseline(database, k, alpha, rows_at_once=8192):
    """(augmented database, neighbour indices [n, k], score gap between the k-th and the next
    neighbour) through faiss and NumPy."""
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    scores, neighbours = index.search(database, k + 1)  # one more: the gap at the k-th place
    gaps = scores[:, k - 1] - scores[:, k]
    scores, neighbours = scores[:, :k], neighbours[:, :k]
    augmented = np.empty_like(database)
    for start in range(0, len(database), rows_at_once):
        stop = start + rows_at_once
        weights = np.maximum(scores[start:stop], 0.0) ** alpha
        block = np.einsum("nk,nkd->nd", weights, database[neighbours[start:stop]])
        augmented[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return augmented, neighbours, gaps


def timed(name, function, *args, rows):
    """(function(*args), (wall seconds, process CPU seconds)), printed."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{name}: {wall:.2f} s wall ({rows / wall:.0f} rows/s), {cpu:.2f} s CPU", flush=True)
    return result, (wall, cpu)


def peak_memory_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: kilobytes


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10, help="neighbours, the image itself included")
    parser.add_argument("--chunk", type=int, default=4096, help="rows per block (ours)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-memory-gb", type=float, default=4.0)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="of the ratio")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    database = random_database(args.rows, args.dim)
    print(
        f"database: {args.rows} x {args.dim} float32, k = {args.k}, alpha = {ALPHA}, "
        f"{torch.get_num_threads()} CPU threads",
        flush=True,
    )

    def ours_of(database):
        return database_augmentation(database, args.k, ALPHA, "clamp", args.chunk, args.device)

    ours, ours_s = timed("ours ", ours_of, database, rows=args.rows)
    (baseline, neighbours, gaps), baseline_s = timed(
        "faiss", faiss_baseline, database, args.k, ALPHA, rows=args.rows
    )
    difference = largest_difference(ours, baseline, neighbours, gaps)
    memory = peak_memory_gb()
    print(f"peak memory: {memory:.2f} GB (limit {args.max_memory_gb} GB)")
    if difference > TOLERANCE:
        print(f"error: the results differ by {difference} > {TOLERANCE}", file=sys.stderr)
        return 1
    if memory > args.max_memory_gb:
        print(f"error: peak memory {memory:.2f} GB > {args.max_memory_gb} GB", file=sys.stderr)
        return 1
    clock = 0 if args.clock == "wall" else 1
    wall_ratio, cpu_ratio = (baseline_s[i] / ours_s[i] for i in (0, 1))
    print(f"wall ratio: {wall_ratio:.2f}; CPU-time ratio: {cpu_ratio:.2f}")
    print(describe_machine(args.device))
    print(f"ratio: {(wall_ratio, cpu_ratio)[clock]:.2f}")
    return 0


def largest_difference(ours, baseline, neighbours, gaps):
    """The largest difference of a row away from a near-tie at the k-th place, printed with the
    near-ties and how often faiss ranks the image itself first."""
    row_difference = np.abs(ours - baseline).max(axis=1)
    # a row may differ where the k-th and the next neighbour are closer than float32 rounding of
    # two differently computed products: there the two exact searches may choose differently
    near_tie = gaps < NEAR_TIE
    difference = float(row_difference[~near_tie].max(initial=0.0))
    print(
        f"near-ties at the k-th place: {int(near_tie.sum())} rows, of which "
        f"{int((row_difference[near_tie] > TOLERANCE).sum())} differ"
    )
    self_first = float(np.mean(neighbours[:, 0] == np.arange(len(neighbours))))
    print(
        f"largest difference: {difference:.2e}; faiss ranks the image itself first for "
        f"{100 * self_first:.2f}% of the rows"
    )
    return difference


if __name__ == "__main__":
    sys.exit(main())
