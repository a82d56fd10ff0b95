"""Extract DELG global and local features of an image set into feature stores.

    python tools/extractor.py --cfg configs/synthetic/delg_tiny_cpu.yaml [KEY VALUE ...]
    # G processes share the images
    torchrun --nproc_per_node=G tools/extractor.py --cfg FILE [KEY VALUE ...]
    python tools/extractor.py --merge STORE_FOLDER [...]  # merge finished shards by hand

The dataset, its root and the output folder are EXTRACT.* keys; TEST.WEIGHTS names the checkpoint. A
run started again with the same arguments continues where it stopped. Exit codes: 1 when an image
could not be read, 2 for a mistake in the arguments or inputs (one line names it), 5 when a shard or
store did not fit on the disk (one line names the folder, the space needed and free).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import os  # noqa: E402

from core.cli import load_cfg_or_exit, parse_args, run_reporting_errors  # noqa: E402
from core.distributed import place_from_environment  # noqa: E402
from core.logging import setup_logging  # noqa: E402
from tools.extraction import runner, shards  # noqa: E402


def _extra_arguments(parser):
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="STORE",
        help="merge the shards of these store folders and exit",
    )


def main(argv=None):
    args = parse_args(__doc__.split("\n\n")[0], _extra_arguments, argv)
    return run_reporting_errors("extractor", _run, args)


def _run(args):
    if args.merge:
        setup_logging("", is_main=True)
        for folder in args.merge:
            count, failures = shards.merge_shards(folder)
            print(f"{folder}: {count} images, {len(failures)} failed")
        return 0
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    # a copy: under srun it fills in RANK itself
    place = place_from_environment(dict(os.environ), cfg.PORT)
    setup_logging(cfg.OUT_DIR, is_main=place is None or place.rank == 0)
    exit_code, _ = runner.run_extraction(cfg)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
