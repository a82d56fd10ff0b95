"""Write feature stores as the official DELF/DELG per-image files (.delg_global, .delg_local).

    python tools/export_official_features.py STORE_DIR OUT_DIR [--dataset roxford5k] [--overwrite]

STORE_DIR is one store (a folder with meta.json), written to OUT_DIR/<name>.delg_*, or a folder with
a <dataset>_query / <dataset>_database pair, written in the official layout OUT_DIR/query and
OUT_DIR/index. Official conventions: locations (y, x) in pixels of the image as extracted (a
query's crop), scale 1 / pyramid scale, strength the attention score, orientation 0, descriptors as
stored (L2-normalised). tools/import_official_features.py reads the files back exactly. An output
folder that exists and is not empty is refused before anything is written unless --overwrite
(which replaces the folder whole once the new one is complete); two images whose names give one
file are refused with both names. Exit codes: 0 written, 2 a mistake in the arguments or inputs, 5
the files did not fit on the disk.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402

from core.cli import run_reporting_errors  # noqa: E402
from tools.interop.store_export import export_features  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store_dir", help="a store, or a folder with <dataset>_query/_database")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--dataset", help="which pair of stores, when STORE_DIR holds several")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    return run_reporting_errors("export", _export, args)


def _export(args):
    written = export_features(
        args.store_dir, args.out_dir, args.dataset, show_progress=True, overwrite=args.overwrite
    )
    for folder, count in written.items():
        print(f"{folder}: {count} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
