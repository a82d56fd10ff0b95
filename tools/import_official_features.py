"""Build our feature stores from the official DELF/DELG per-image files of a revisitop dataset.

    python tools/import_official_features.py FEATURES_DIR --dataset roxford5k \
        --data-root data/roxford5k OUT_DIR [--query-dir DIR] [--index-dir DIR] [--float16] \
        [--overwrite]

FEATURES_DIR holds the official layout: query/<name>.delg_global|.delg_local (cropped queries) and
index/<name>.delg_global|.delg_local. Names are matched to the dataset's image lists
(gnd_<dataset>.pkl under --data-root); OUT_DIR receives <dataset>_query and <dataset>_database,
which tools/revisitop/evaluate.py reads with EVAL.FEATURES_DIR OUT_DIR. Missing and corrupt files
are listed (failures.json in each store) and counted. A store already in OUT_DIR is refused before
anything is read unless --overwrite; each store appears whole or not at all. Exit codes: 0 all
imported, 1 some images missing or corrupt, 2 a mistake in the arguments or inputs (an existing
store, an image listed twice), 5 the stores did not fit on the disk.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from tools.interop.store_import import describe, import_official  # noqa: E402

SHOWN = 10  # failures printed per store (all are in failures.json)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features_dir", help="folder with query/ and index/ official files")
    parser.add_argument("out_dir", help="folder for <dataset>_query and <dataset>_database")
    parser.add_argument("--dataset", required=True, help="revisitop dataset, e.g. roxford5k")
    parser.add_argument("--data-root", required=True, help="folder with gnd_<dataset>.pkl")
    parser.add_argument("--query-dir", help="query files (default FEATURES_DIR/query)")
    parser.add_argument("--index-dir", help="database files (default FEATURES_DIR/index)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace stores already in OUT_DIR"
    )
    dtype = parser.add_mutually_exclusive_group()
    dtype.add_argument(
        "--float16",
        dest="float16",
        action="store_true",
        default=None,
        help="store local descriptors as float16",
    )
    dtype.add_argument(
        "--float32",
        dest="float16",
        action="store_false",
        help="store local descriptors as float32 (default, unless the files "
        "were exported from a float16 store)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    return run_reporting_errors("import", _import, parse_args(argv))


def _import(args):
    summary = import_official(
        args.features_dir,
        args.data_root,
        args.dataset,
        args.out_dir,
        args.float16,
        args.query_dir,
        args.index_dir,
        args.overwrite,
    )
    failed = 0
    for name, part in summary.items():
        print(f"{name}: {describe(part)}")
        for failure in (part["missing"] + part["corrupt"])[:SHOWN]:
            print(f"  {failure['name']}: {failure['path']}: {failure['reason']}")
        failed += len(part["missing"]) + len(part["corrupt"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
