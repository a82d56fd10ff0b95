"""Convert an official DELG TensorFlow model (SavedModel or training checkpoint) for this framework.

    python tools/convert_official.py SAVED_MODEL_DIR OUT_PREFIX [--release NAME]

Writes OUT_PREFIX.pth (our checkpoint, for TEST.WEIGHTS or TRAIN.WEIGHTS) and OUT_PREFIX.yaml (the
config that reproduces the model and the official extraction), and prints which layout it found
and which archive variable went where. Needs TensorFlow (pip install -r requirements-convert.txt).
A folder that is missing, not a DELG model or unreadable gives one line and exit status 2, and
nothing is written. See docs/official_weights.md.
"""

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

from core.cli import run_reporting_errors  # noqa: E402
from core.io import torch_save, write_text  # noqa: E402
from core.official_convert import LAYOUTS, RELEASES, convert_archive  # noqa: E402
from core.official_yaml import official_yaml  # noqa: E402


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model", help="SavedModel folder, checkpoint folder or prefix")
    parser.add_argument("out_prefix", help="writes OUT_PREFIX.pth and OUT_PREFIX.yaml")
    parser.add_argument(
        "--release",
        default=None,
        help=f"release name (default: from the folder name): {', '.join(RELEASES)}",
    )
    return parser.parse_args(argv)


def main(argv=None):
    return run_reporting_errors("convert_official", _convert, parse(argv))


def _convert(args):
    converted = convert_archive(args.saved_model, args.release)
    for line in converted.lines:
        print(line)
    text = official_yaml(converted.settings, converted.release, LAYOUTS[converted.layout])
    weights = {"model": converted.state, "source": f"official DELG {converted.release}"}
    torch_save(weights, args.out_prefix + ".pth")
    write_text(args.out_prefix + ".yaml", text)
    print(f"wrote {args.out_prefix}.pth and {args.out_prefix}.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
