"""Export one pyramid level of the DELG extraction network to ONNX and check it with onnxruntime.

    python tools/export_onnx.py --cfg FILE --out model.onnx [--sizes 256x256,321x187] TEST.WEIGHTS W

The graph maps a normalised image [1, 3, H, W] (H and W dynamic) to the global embedding, the
attention map and the local descriptor map (tools/interop/onnx_export.py); the pyramid, selection
and geometry stay in tools/extraction and run around any runtime. The check runs the exported model
with onnxruntime at each size and prints the max abs difference from PyTorch per output, beside
the output's largest magnitude. --tolerance bounds the difference on the output's scale: absolute
for outputs within 1, relative to the largest value beyond (scaled_difference in
tools/interop/onnx_export.py). The model is written under a temporary name and renamed, so a failed
write leaves what was at --out; an existing --out is replaced only with --overwrite. Exit codes: 0
exported and within --tolerance, 1 a difference above it, 2 a mistake in the arguments or inputs
(an existing --out included), 5 the model did not fit on the disk.
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import torch  # noqa: E402

from core.cli import load_cfg_or_exit, parse_args, run_reporting_errors  # noqa: E402
from core.io import check_writable, refuse_existing_file  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from tools.extraction.runner import build_extraction_model  # noqa: E402
from tools.interop.onnx_export import (  # noqa: E402
    export_onnx,
    open_session,
    parity,
    worst_difference,
)


def _extra_arguments(parser):
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--sizes",
        default="256x256,321x187",
        help="image sizes HxW of the onnxruntime check, comma-separated (default 256x256,321x187)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest accepted difference: absolute, or relative for outputs beyond 1",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def parse_sizes(text):
    try:
        sizes = [tuple(int(side) for side in item.lower().split("x")) for item in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(size) != 2 or min(size) < 1 for size in sizes):
        raise ValueError(f"--sizes {text!r}: expected HxW[,HxW...], e.g. 256x256,321x187")
    return sizes


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], _extra_arguments, argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    setup_logging("", is_main=True)
    return run_reporting_errors("export_onnx", _export, cfg, args)


def _export(cfg, args):
    sizes = parse_sizes(args.sizes)
    refuse_existing_file(args.out, args.overwrite)
    check_writable(os.path.dirname(os.path.abspath(args.out)))  # before the model is built
    model = build_extraction_model(cfg, torch.device("cpu"))
    try:
        export_onnx(model, args.out)
    except torch.onnx.errors.UnsupportedOperatorError as error:  # e.g. a ViT's resampled positions
        raise ValueError(
            f"MODEL.TYPE {cfg.MODEL.TYPE}: this backbone cannot be exported to ONNX "
            f"({str(error).splitlines()[0]}); extract with tools/extractor.py instead"
        ) from None
    report = parity(model, open_session(args.out), sizes)
    for (height, width), differences in report.items():
        line = " ".join(
            f"{name}={difference:.2e} (of {magnitude:.2e})"
            for name, (difference, magnitude) in differences.items()
        )
        print(f"{height}x{width}: max abs difference (max abs value) {line}")
    worst = worst_difference(report)
    print(
        f"{args.out}: written; largest difference on the outputs' scale {worst:.2e} "
        f"(tolerance {args.tolerance:.0e})"
    )
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
