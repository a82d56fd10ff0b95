r"""Search a feature store with one image: global top-k, optionally re-ranked by spatial
verification.

    python tools/search.py --cfg FILE IMAGE [--store DIR] [--topk K] [--sv] [--draw PNG] \
        [KEY VALUE ...]

The image is extracted with the extractor's code (model from the config and TEST.WEIGHTS, EXTRACT.*
settings); the store defaults to the EVAL.DATASET database store under the features folder. Prints
the top-k with global scores; with --sv, the SV.SHORTLIST first re-ranked by inlier counts. --draw
writes the ranking picture. See docs/search.md.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import os  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from core.config import load_cfg  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from datasets.features import open_store  # noqa: E402
from tools.evaluation.benchmarks import database_store_folder  # noqa: E402
from tools.retrieval.one_image import extract_query, format_result, search_store  # noqa: E402
from tools.vis.search_result import draw_result  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    parser.add_argument("image", help="the query image file")
    parser.add_argument(
        "--store", default="", help="feature store folder (default: the EVAL.DATASET database)"
    )
    parser.add_argument("--topk", type=int, default=10, help="how many images to list")
    parser.add_argument(
        "--sv", action="store_true", help="re-rank the global shortlist by spatial verification"
    )
    parser.add_argument("--draw", default="", help="write the ranking picture to this PNG")
    # KEY VALUE overrides may come before or after the options
    args, overrides = parser.parse_known_args(argv)
    unknown = [word for word in overrides if word.startswith("--")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    return args, overrides


def main(argv=None):
    args, overrides = parse_args(argv)
    return run_reporting_errors("search", _search, args, overrides)


def _search(args, overrides):
    cfg = load_cfg(args.cfg_file, overrides)
    # the inputs first, the model (seconds to minutes) after
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"{args.image}: no such image file")
    setup_logging(cfg.OUT_DIR, is_main=True)
    store = open_store(args.store or database_store_folder(cfg))
    query = extract_query(cfg, args.image, with_local=args.sv)
    result = search_store(cfg, query, store, args.topk, verify=args.sv)
    print(format_result(result, store, query), flush=True)
    if args.draw:
        print(f"ranking picture: {draw_result(args.draw, cfg, query, result, store)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
