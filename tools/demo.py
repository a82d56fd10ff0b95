"""The whole method on a CPU in minutes: train a small DELG on the synthetic landmarks, search,
re-rank, evaluate.

    python tools/demo.py [--out output/demo] [--iters N] [--seed S] [--threads T] [KEY VALUE ...]

Generates the synthetic landmarks if absent (data/synthetic), trains configs/synthetic/demo.yaml for
its fixed number of iterations (800: about 7 minutes on 2 idle cores), extracts the test set's
features with the trained and the untrained model, and prints mAP and mP@k (Easy / Medium / Hard) of
global search, spatial verification and ASMK beside the untrained model's global search. Writes
OUT/results.json, OUT/training_curves.png, attention and match pictures, and says where
(docs/demo.md explains the numbers).

Stopped by SIGTERM or SIGUSR1 (the training checkpoints first), it prints one line saying that the
same command continues and exits with 75 (EXIT_PREEMPTED); exit 2 is a mistake in the arguments or
inputs, 3 and 4 the training's stops (train_delg.py), 5 a full disk.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from datasets.synthetic import SIZES  # noqa: E402
from tools.demo_runs import DemoStopped  # noqa: E402
from tools.pipeline import DEFAULT_CONFIG, DemoOptions, report, run_demo  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="output/demo", help="output folder (default: output/demo)")
    parser.add_argument(
        "--iters",
        type=int,
        default=0,
        help="training iterations (default: the config's OPTIM.MAX_ITER, 800 in demo.yaml)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the synthetic world and of the training"
    )
    parser.add_argument(
        "--data", default="", help="synthetic world folder (default: data/synthetic[_seed<S>])"
    )
    parser.add_argument(
        "--size", default="default", choices=sorted(SIZES), help="synthetic world size preset"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: the available cores)"
    )
    parser.add_argument(
        "--cfg",
        dest="config",
        default=DEFAULT_CONFIG,
        help="config (default: configs/synthetic/demo.yaml)",
    )
    parser.add_argument(
        "--no-reranker",
        dest="reranker",
        action="store_false",
        help="skip the learned re-ranker (its training set extraction, training and rows)",
    )
    parser.add_argument(
        "--reranker-cfg",
        dest="reranker_config",
        default="",
        help="the re-ranker's config (default: configs/reranker/synthetic_demo.yaml)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.iters < 0 or args.threads < 0 or args.seed < 0:
        parser.error("--iters, --threads and --seed must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    options = DemoOptions(
        out_dir=args.out,
        config=args.config,
        iters=args.iters,
        seed=args.seed,
        data_dir=args.data,
        data_size=args.size,
        threads=args.threads,
        opts=tuple(args.opts),
        reranker=args.reranker,
        reranker_config=args.reranker_config,
    )
    return run_reporting_errors("demo", _demo, options)


def _demo(options):
    try:
        summary = run_demo(options)
    except DemoStopped as stop:  # preempted (one line: how to continue) or the training's mistake
        if str(stop):
            print(f"demo: {stop}", file=sys.stderr, flush=True)
        return stop.code
    print(report(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
