"""Benchmark: the learned re-ranker against spatial verification on the same shortlist, milliseconds
per query, plus the bytes per database image of its compact codes.

One query and a shortlist of --shortlist database images with 1000 local features of 128 dimensions
each (tools/benchmark_rerank.py's mix: every fifth image a positive sharing 300 descriptors with
the query, 200 of them placed by a homography), attention scores and scales at random. sv:
matching and DEGENSAC (SV.* defaults) of every pair, as the `sv` method runs it. learned: the
re-ranker of the RERANKER.* defaults (or RERANKER.WEIGHTS; its weights do not change the time)
over the query's first RERANKER.N_QUERY features and each image's first RERANKER.N_DATABASE as
compact codes, RERANKER.BATCH_SIZE pairs per forward, float16 and binary codes. The codes are
built before the clock starts (at evaluation they are read from disk). The line before the last
names the machine (core/hardware.py); the last: ``ratio: <sv ms per query / learned ms per
query>``, or with --no-sv ``ms_per_query: <learned>``.

    python tools/benchmark_learned.py [--shortlist 100] [--device cpu] [--threads 2] [--no-sv]
        [KEY VALUE ...]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.config import load_cfg  # noqa: E402
from core.hardware import describe_machine  # noqa: E402
from modeling.reranker import build_reranker  # noqa: E402
from modeling.reranker_weights import load_reranker  # noqa: E402
from tools.benchmark_rerank import DIM, FEATURES, synthetic_pairs  # noqa: E402
from tools.rerank.compact_codes import binary_codes, bytes_per_image, codes_from_reader  # noqa: E402
from tools.rerank.learned import pair_logits, query_batches  # noqa: E402
from tools.rerank.spatial_verification import VerificationOptions, verify_pairs  # noqa: E402

COUNTS = (25, 50, 100)
SCALES = np.array([0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0], np.float32)


def with_scores(features, rng):
    """Store-like local features of (locations, descriptors): random attention scores and
    scales."""
    locations, descriptors = features
    return {
        "locations": locations,
        "descriptors": descriptors,
        "scores": rng.random(len(locations)).astype(np.float32),
        "scales": rng.choice(SCALES, len(locations)),
    }


def time_sv(query, index, repeats):
    """ms per query of matching + DEGENSAC over the whole shortlist."""
    pairs = {0: list(range(len(index)))}

    def run():
        verify_pairs(
            pairs, lambda _: query, lambda i: index[i], VerificationOptions(), progress=False
        )

    return best_ms(run, repeats)


def best_ms(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def model_of(cfg, binary, device):
    if cfg.RERANKER.WEIGHTS:
        return load_reranker(cfg.RERANKER.WEIGHTS, device=device)[0]
    model_cfg = cfg.clone()
    model_cfg.RERANKER.BINARY = binary
    torch.manual_seed(0)
    return build_reranker(model_cfg, DIM).to(device).eval()


def time_learned(cfg, query, index, device, binary, repeats):
    """ms per query of scoring the whole shortlist (float16 or binary database codes)."""
    model = model_of(cfg, binary, device)
    rows = np.arange(len(index))
    codes = codes_from_reader(lambda row: index[row], rows, cfg.RERANKER.N_DATABASE, DIM)
    if binary:
        codes = binary_codes(
            codes,
            lambda x: model.database_codes(torch.from_numpy(x).to(device)).cpu().numpy(),
            "benchmark",
        )
    pairs = np.stack([np.zeros(len(rows), np.int64), rows], axis=1)

    def run():
        queries = query_batches(lambda _: query, 1, cfg.RERANKER.N_QUERY)
        pair_logits(model, queries, codes, pairs, cfg.RERANKER.BATCH_SIZE, device, coded=binary)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return best_ms(run, repeats)


def print_bytes():
    print(f"bytes per database image ({DIM}-d descriptors, 128-bit codes):")
    for count in COUNTS:
        size = bytes_per_image(count, DIM)
        print(
            f"  N_DATABASE {count:>3}: float16 {size['float16']:>6} B ({size['float16_with_side']}"
            f" with scale index, x y, count), binary {size['binary']:>5} B "
            f"({size['binary_with_side']}); 1M images: float16 {size['float16'] / 1e3:.1f} GB, "
            f"binary {size['binary'] / 1e3:.2f} GB"
        )


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shortlist", type=int, default=100, help="database images per query")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the learned re-ranker)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best is kept")
    parser.add_argument("--no-sv", action="store_true", help="time the learned re-ranker only")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return parser.parse_args()


def main():
    args = parse_args()
    cfg = load_cfg("", args.opts)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    query, index = synthetic_pairs(args.shortlist)
    query, index = with_scores(query, rng), [with_scores(image, rng) for image in index]
    print(
        f"one query, {args.shortlist} database images, {FEATURES} features x {DIM}-d; learned: "
        f"N_QUERY {cfg.RERANKER.N_QUERY}, N_DATABASE {cfg.RERANKER.N_DATABASE}, batch "
        f"{cfg.RERANKER.BATCH_SIZE} pairs on {device.type}, {torch.get_num_threads()} threads"
    )
    learned = time_learned(cfg, query, index, device, False, args.repeats)
    binary = time_learned(cfg, query, index, device, True, args.repeats)
    print(f"learned: {learned:.1f} ms per query; learned_binary: {binary:.1f} ms per query")
    print_bytes()
    if args.no_sv:
        print(describe_machine(device))
        print(f"ms_per_query: {learned:.2f}")
        return
    sv = time_sv(
        (query["locations"], query["descriptors"]),
        [(image["locations"], image["descriptors"]) for image in index],
        args.repeats,
    )
    print(f"sv: {sv:.1f} ms per query (DEGENSAC on the CPU)")
    print(describe_machine(device))
    print(f"ratio: {sv / learned:.2f}")


if __name__ == "__main__":
    main()
