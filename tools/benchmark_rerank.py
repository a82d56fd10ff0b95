"""Benchmark: spatial-verification pairs/s of our re-ranker against a KD-tree matching baseline, one
process.

Pairs: one query and many index images, 1000 x 128-d L2-normalised features each, like a shortlist:
every fifth index image is a positive that shares 300 descriptors with the query (200 placed by a
homography, 100 at random places), the others share 30 descriptors at random places (chance
matches); the rest match nothing. A second set, positives only, is timed as well (DEGENSAC on 300
matches dominates there).
Ours: verify_pairs (a query's pairs matched in batched matrix products) + DEGENSAC. Baseline: one
scipy cKDTree query per pair with distance bound 1.0 (the official release's matching), then the
same DEGENSAC call. The two must agree on every inlier count. Last line: ``ratio: <our pairs/s /
baseline pairs/s>`` (shortlist mix).

    python tools/benchmark_rerank.py [--pairs 100] [--baseline-pairs 25] [--full-roxford
    [--workers 1]] [--precision auto|float32|bfloat16]

--full-roxford also times a whole ROxford re-ranking: 70 queries x top 100 per protocol (junk
excluded, the union of the three protocols verified once), 1000 features per image (the same mix),
SV.NUM_WORKERS geometry processes. --precision forces the matcher's candidate product
(SV.MATCH_PRECISION; auto picks by the hardware, core/hardware.py). The line before the last names
the machine and the precision used.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from core.hardware import PRECISIONS, describe_machine, matmul_precision  # noqa: E402
from tools.benchmark_eval import DEFAULT_GND  # noqa: E402
from tools.rerank.spatial_verification import (  # noqa: E402
    VerificationOptions,
    count_inliers,
    rerank_with_spatial_verification,
    verify_pairs,
)
from tools.revisitop.context import load_gnd  # noqa: E402
from tools.revisitop.protocols import protocol_gnds  # noqa: E402

FEATURES, DIM = 1000, 128
POSITIVE_SHARED, POSITIVE_PLACED, NEGATIVE_SHARED = 300, 200, 30


def _unit(rows):
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def synthetic_pairs(count, seed=0, positive_every=5):
    """(query (locations, descriptors), [index (locations, descriptors)] * count), float16
    descriptors; index image i is a positive when i % positive_every == 0 (positive_every=1:
    positives only)."""
    rng = np.random.default_rng(seed)
    query_locations = rng.uniform(0, 1024, (FEATURES, 2)).astype(np.float32)
    query_descriptors = _unit(rng.standard_normal((FEATURES, DIM)))
    index = []
    for image in range(count):
        shared_count, placed = (
            (POSITIVE_SHARED, POSITIVE_PLACED)
            if image % positive_every == 0
            else (NEGATIVE_SHARED, 0)
        )
        descriptors = _unit(rng.standard_normal((FEATURES, DIM)))
        locations = rng.uniform(0, 1024, (FEATURES, 2)).astype(np.float32)
        shared = rng.choice(FEATURES, shared_count, replace=False)
        descriptors[:shared_count] = _unit(
            query_descriptors[shared] + 0.04 * rng.standard_normal((shared_count, DIM))
        )
        homography = np.array(
            [
                [1 + rng.normal(0, 0.1), rng.normal(0, 0.1), rng.uniform(-50, 50)],
                [rng.normal(0, 0.1), 1 + rng.normal(0, 0.1), rng.uniform(-50, 50)],
                [rng.normal(0, 1e-4), rng.normal(0, 1e-4), 1.0],
            ]
        )
        moved = (
            np.concatenate([query_locations[shared[:placed]], np.ones((placed, 1))], axis=1)
            @ homography.T
        )
        locations[:placed] = moved[:, :2] / moved[:, 2:] + rng.normal(0, 1.0, (placed, 2))
        index.append((locations, descriptors.astype(np.float16)))
    return (query_locations, query_descriptors.astype(np.float16)), index


def kd_tree_inliers(query, index, options):
    """The baseline: a KD-tree over the index image's descriptors, one bounded query, then the same
    geometry."""
    tree = cKDTree(index[1].astype(np.float32))
    _, nearest = tree.query(query[1].astype(np.float32), distance_upper_bound=options.max_distance)
    rows = np.flatnonzero(nearest < len(index[1]))
    return count_inliers(query[0][rows], index[0][nearest[rows]], options)


def _cpu_seconds():
    """(CPU seconds of this process, of its finished child processes)."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def full_roxford(gnd_path, workers, options, seed=0):
    """(wall seconds, distinct pairs, main-process CPU seconds, worker CPU seconds) of a whole
    ROxford SV re-ranking with synthetic features (pool of 256 feature sets)."""
    gnd_raw = load_gnd(gnd_path)["gnd"]
    num_database = 1 + max(
        int(np.max(np.concatenate([e["easy"], e["hard"], e["junk"]]), initial=0)) for e in gnd_raw
    )
    query, pool = synthetic_pairs(256, seed)
    rng = np.random.default_rng(seed)
    rankings = []  # one global ranking per query: noise, positives lifted
    for entry in gnd_raw:
        scores = rng.random(num_database)
        scores[np.concatenate([entry["easy"], entry["hard"]]).astype(np.int64)] += 0.5
        rankings.append(np.argsort(-scores, kind="stable"))
    shortlists = {
        protocol: [
            ranked[~np.isin(ranked, entry["junk"])][:100] for ranked, entry in zip(rankings, gnd)
        ]
        for protocol, gnd in protocol_gnds(gnd_raw).items()
    }
    pairs = len(
        {(q, int(i)) for lists in shortlists.values() for q, ids in enumerate(lists) for i in ids}
    )
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    rerank_with_spatial_verification(
        shortlists,
        lambda _: query,
        lambda image: pool[image % len(pool)],
        options,
        num_workers=workers,
        progress=True,
    )
    own, children = (end - begin for end, begin in zip(_cpu_seconds(), cpu_start))
    return time.perf_counter() - start, pairs, own, children


def compare(name, query, index, pairs, baseline_pairs, options):
    """Time both on the same pairs, check that they agree; return (our pairs/s, baseline
    pairs/s)."""
    verify_pairs({0: [0]}, lambda _: query, lambda i: index[i], options, progress=False)  # warm-up
    start = time.perf_counter()
    ours = verify_pairs(
        {0: list(range(pairs))}, lambda _: query, lambda i: index[i], options, progress=False
    )
    our_rate = pairs / (time.perf_counter() - start)
    start = time.perf_counter()
    baseline = [kd_tree_inliers(query, index[i], options) for i in range(baseline_pairs)]
    baseline_rate = baseline_pairs / (time.perf_counter() - start)
    disagree = [i for i in range(baseline_pairs) if ours[(0, i)] != baseline[i]]
    print(
        f"{name}: ours {our_rate:.1f} pairs/s, baseline {baseline_rate:.1f} pairs/s, ratio "
        f"{our_rate / baseline_rate:.2f}; inlier counts agree on {baseline_pairs - len(disagree)} "
        f"/ {baseline_pairs} pairs"
    )
    if disagree:
        raise SystemExit(f"{name}: inlier counts differ for pairs {disagree[:10]}")
    return our_rate, baseline_rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100, help="pairs timed for our re-ranker")
    parser.add_argument(
        "--baseline-pairs", type=int, default=25, help="pairs timed for the KD-tree baseline"
    )
    parser.add_argument(
        "--full-roxford", action="store_true", help="also time a whole ROxford re-ranking"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="geometry processes for --full-roxford"
    )
    parser.add_argument(
        "--gnd", default=str(DEFAULT_GND), help="gnd_roxford5k.pkl for --full-roxford"
    )
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="the matcher's candidate product"
    )
    args = parser.parse_args()
    # NN under 1.0, DEGENSAC 20 px, confidence 1.0, 1000 iterations
    options = VerificationOptions(match_precision=args.precision)
    count = max(args.pairs, args.baseline_pairs)
    print(
        f"{FEATURES} features x {DIM}-d per image, float16; "
        "DEGENSAC 20 px, confidence 1.0, 1000 iterations"
    )
    compare(
        "positives only",
        *synthetic_pairs(count, positive_every=1),
        args.pairs,
        args.baseline_pairs,
        options,
    )
    ours, baseline = compare(
        "shortlist mix", *synthetic_pairs(count), args.pairs, args.baseline_pairs, options
    )
    if args.full_roxford:
        seconds, pairs, own, children = full_roxford(args.gnd, args.workers, options)
        print(
            f"full ROxford re-ranking ({pairs} distinct pairs, {args.workers} geometry workers): "
            f"{seconds:.1f} s ({pairs / seconds:.0f} pairs/s); CPU: main process {own:.1f} s, "
            f"workers {children:.1f} s (on an otherwise idle machine the wall time is about the "
            "larger, plus the workers' start)"
        )
    # verify_pairs matches with one thread; `auto` was decided (and cached) there
    print(f"{describe_machine()}; candidate precision {matmul_precision('cpu', args.precision)}")
    print(f"ratio: {ours / baseline:.2f}")


if __name__ == "__main__":
    main()
