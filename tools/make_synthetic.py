"""Write the embedded synthetic landmark world: a GLDv2-layout training set and a revisitop-layout
test set.

python tools/make_synthetic.py [--out data/synthetic] [--seed 0] [--size default|tiny] [--classes N]
...
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import time  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from datasets.synthetic import SIZES, generate  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default="data/synthetic", help="output folder (default: data/synthetic)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; the same seed gives the same files"
    )
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="preset sizes")
    parser.add_argument("--classes", type=int, help="training landmarks")
    parser.add_argument("--train-per-class", type=int, help="training images per landmark")
    parser.add_argument("--queries", type=int, help="test queries")
    parser.add_argument("--database", type=int, help="test database images")
    parser.add_argument("--image-size", type=int, help="long side of every image, pixels")
    parser.add_argument(
        "--workers", type=int, help="processes (default: the CPUs available, at most 8)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )
    return parser.parse_args(argv)


def main(argv=None):
    return run_reporting_errors("make_synthetic", _generate, parse_args(argv))


def _generate(args):
    start = time.perf_counter()
    summary = generate(
        args.out,
        seed=args.seed,
        size=args.size,
        workers=args.workers,
        overwrite=args.overwrite,
        classes=args.classes,
        train_per_class=args.train_per_class,
        queries=args.queries,
        database=args.database,
        image_size=args.image_size,
    )
    train, test = summary["train"], summary["test"]
    verb = "already holds the world of these settings, kept" if summary.get("reused") else "written"
    print(
        f"{summary['out_dir']} {verb} (seed {summary['seed']}, {summary['spec']['image_size']} px):"
    )
    print(
        f"  train: {train['classes']} landmarks x {summary['spec']['train_per_class']} = "
        f"{train['images']} images, {train['csv']}"
    )
    print(
        f"  test:  {test['queries']} queries of {test['test_landmarks']} landmarks, "
        f"{test['database']} database images ({test['distractor_landmarks']} look-alike distractor "
        f"landmarks), labels {test['labels']}, {test['gnd']}"
    )
    print(f"  time:  {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
