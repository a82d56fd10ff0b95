"""Convert an official DELG TensorFlow model (SavedModel or training checkpoint) for this framework.

    python tools/convert_official.py SAVED_MODEL_DIR OUT_PREFIX [--release NAME] [--overwrite]

Writes OUT_PREFIX.pth (our checkpoint, for TEST.WEIGHTS or TRAIN.WEIGHTS) and OUT_PREFIX.yaml (the
config that reproduces the model and the official extraction), and prints which layout it found
and which archive variable went where. Needs TensorFlow (pip install -r requirements-convert.txt).
A folder that is missing, not a DELG model or unreadable gives one line and exit status 2, and
nothing is written. Both files are written under temporary names and renamed after both were
written: a failed write leaves neither (exit 5 for a full disk). An existing OUT_PREFIX.pth or
OUT_PREFIX.yaml is refused before the conversion unless --overwrite. See docs/official_weights.md.
"""

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

from core.cli import run_reporting_errors  # noqa: E402
from core.io import atomic_paths, check_writable, refuse_existing_file  # noqa: E402
from tools.interop.official_tf.convert import LAYOUTS, RELEASES, convert_archive  # noqa: E402
from tools.interop.official_tf.official_yaml import official_yaml  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="SavedModel folder, checkpoint folder or prefix")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX.pth and OUT_PREFIX.yaml")
    parser.add_argument(
        "--release",
        default=None,
        help=f"release name (default: from the folder name): {', '.join(RELEASES)}",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing OUT_PREFIX.pth / .yaml"
    )
    return parser.parse_args(argv)


def main(argv=None):
    return run_reporting_errors("convert_official", _convert, parse(argv))


def _convert(args):
    paths = (args.out_prefix + ".pth", args.out_prefix + ".yaml")
    for path in paths:
        refuse_existing_file(path, args.overwrite)
    check_writable(os.path.dirname(os.path.abspath(args.out_prefix)))  # before the conversion
    converted = convert_archive(args.saved_model, args.release)
    for line in converted.lines:
        print(line)
    text = official_yaml(converted.settings, converted.release, LAYOUTS[converted.layout])
    weights = {"model": converted.state, "source": f"official DELG {converted.release}"}
    write_both(weights, text, *paths)
    print(f"wrote {args.out_prefix}.pth and {args.out_prefix}.yaml")
    return 0


def write_both(weights, text, weights_path, config_path):
    """The checkpoint and its config, both or neither (core/io.py atomic_paths)."""
    import torch

    with atomic_paths(weights_path, config_path) as (weights_tmp, config_tmp):
        torch.save(weights, weights_tmp)
        with open(config_tmp, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    sys.exit(main())
