"""Benchmark: E/M/H mAP and mP@k of a 1,005,000 x 70 score matrix (ROxford + 1M distractors,
synthetic scores).

Ours: protocol_results_from_scores (no sorting of the database). Baseline: argsort every column
(stable, the tie rule both share), then the benchmark's per-query loop for each protocol. Both run
in this process on the same matrix; the numbers must be identical. The time of numpy's default
(unstable) argsort is printed for reference. Last line: ``ratio: <baseline time / our time>``.

    python tools/benchmark_eval.py [--rows 1005000] [--gnd PATH]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from core.hardware import describe_machine  # noqa: E402
from tools.revisitop.context import load_gnd  # noqa: E402
from tools.revisitop.metrics import protocol_results_from_scores  # noqa: E402
from tools.revisitop.protocols import PROTOCOLS, protocol_gnds  # noqa: E402

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_GND = REPOSITORY.parent / "shared" / "data" / "revisitop" / "gnd_roxford5k.pkl"


def synthetic_scores(gnd_raw, rows, seed=0):
    """Noise for every image, lifted for easy (+4) and hard (+3) images so that the ranking means
    something."""
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((rows, len(gnd_raw)), dtype=np.float32)
    for query, entry in enumerate(gnd_raw):
        scores[np.asarray(entry["easy"], dtype=np.int64), query] += 4.0
        scores[np.asarray(entry["hard"], dtype=np.int64), query] += 3.0
    return scores


def benchmark_loop_map(ranks, gnd, kappas):
    """The benchmark's compute_map as its per-query loop: positions by membership, junk shift,
    trapezoid AP."""
    aps, prs = [], []
    for query, entry in enumerate(gnd):
        if len(entry["ok"]) == 0:
            continue
        column = ranks[:, query]
        positions = np.arange(len(column))[np.isin(column, entry["ok"])]
        junk = np.arange(len(column))[np.isin(column, entry["junk"])]
        shift, next_junk = 0, 0
        for i in range(len(positions)):
            while next_junk < len(junk) and positions[i] > junk[next_junk]:
                shift += 1
                next_junk += 1
            positions[i] -= shift
        ap = 0.0
        for found, rank in enumerate(positions):
            precision_0 = 1.0 if rank == 0 else found / rank
            ap += (precision_0 + (found + 1) / (rank + 1)) * (1.0 / len(entry["ok"])) / 2.0
        aps.append(ap)
        one_based = positions + 1
        prs.append(
            [(one_based <= min(one_based.max(), k)).sum() / min(one_based.max(), k) for k in kappas]
        )
    return float(np.mean(aps)), np.mean(prs, axis=0)


def main():
    args, gnd_raw = parse_args()
    kappas = (1, 5, 10)
    scores = synthetic_scores(gnd_raw, args.rows)
    print(f"score matrix {scores.shape[0]:,} x {scores.shape[1]} float32")

    # warm-up: thread pools, first allocations
    protocol_results_from_scores(scores[:20000], gnd_raw, kappas)
    start = time.perf_counter()
    ours = protocol_results_from_scores(scores, gnd_raw, kappas)
    our_time = time.perf_counter() - start
    print(f"ours (bucket counting, no sort): {our_time:.2f} s")

    start = time.perf_counter()
    ranks = np.argsort(-scores, axis=0, kind="stable")
    sort_time = time.perf_counter() - start
    baseline = {
        protocol: benchmark_loop_map(ranks, gnd, kappas)
        for protocol, gnd in protocol_gnds(gnd_raw).items()
    }
    baseline_time = time.perf_counter() - start
    print(f"baseline (stable argsort {sort_time:.2f} s + per-query loop): {baseline_time:.2f} s")

    worst = largest_difference(ours, baseline)
    print(f"largest difference to the baseline: {worst:.3g}")
    if worst > 1e-9:
        raise SystemExit("the fast path and the baseline disagree")
    start = time.perf_counter()
    np.argsort(-scores, axis=0)
    quick_sort = time.perf_counter() - start
    print(
        f"for reference: numpy's default (unstable, SIMD) argsort takes {quick_sort:.2f} s, "
        f"a baseline with it {quick_sort + baseline_time - sort_time:.2f} s "
        "(ties then fall in no defined order)"
    )
    print(describe_machine())
    print(f"ratio: {baseline_time / our_time:.2f}")


def parse_args():
    """(the arguments, the ground truth's gnd list)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=1005000, help="database size (ROxford + distractors)"
    )
    parser.add_argument("--gnd", default=str(DEFAULT_GND), help="gnd_roxford5k.pkl")
    args = parser.parse_args()
    ground_truth = load_gnd(args.gnd)
    if args.rows < len(ground_truth["imlist"]):
        parser.error(
            f"--rows {args.rows}: at least the {len(ground_truth['imlist'])} "
            f"database images of {args.gnd}"
        )
    return args, ground_truth["gnd"]


def largest_difference(ours, baseline):
    """The largest difference of mAP and mP@k between the two, each protocol printed."""
    worst = 0.0
    for protocol in PROTOCOLS:
        mean_ap, mean_pr = baseline[protocol]
        pr_difference = float(np.max(np.abs(mean_pr - ours[protocol][2])))
        worst = max(worst, abs(mean_ap - ours[protocol][0]), pr_difference)
        print(
            f"{protocol}: mAP {100 * ours[protocol][0]:.4f} (baseline {100 * mean_ap:.4f}), mP@k "
            + " ".join(f"{100 * value:.2f}" for value in ours[protocol][2])
        )
    return worst


if __name__ == "__main__":
    main()
