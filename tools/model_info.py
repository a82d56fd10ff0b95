r"""What a config builds: parameters of each part, extraction FLOPs at an image size, and the
geometry of the local features (receptive field, stride, padding), computed on PyTorch's meta device
(no weights, no arithmetic).

    python tools/model_info.py --cfg configs/delg/r50_delg_gldv2clean_8gpu.yaml [--size 1024] \
        [KEY VALUE ...]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

from core.cli import load_cfg_or_exit, parse_args  # noqa: E402
from modeling.complexity import describe_model  # noqa: E402


def _extra_arguments(parser):
    parser.add_argument(
        "--size",
        type=int,
        default=0,
        help="square input side for the FLOPs (default: EXTRACT.MAX_IMAGE_SIZE)",
    )


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], _extra_arguments, argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    if args.size < 0:
        print("error: --size must be positive", file=sys.stderr)
        return 2
    print(describe_model(cfg, args.size or cfg.EXTRACT.MAX_IMAGE_SIZE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
