"""What the command-line scripts share: ``--cfg FILE [KEY VALUE ...]`` arguments, and what they do
with a mistake: one line, no traceback, a known exit code.

    args = parse_args(__doc__.split("\n\n")[0], extra_arguments, argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    sys.exit(run_reporting_errors("search", run, cfg, args))

A mistake in the arguments or the inputs prints ``<script> error: <message>`` on stderr and returns
EXIT_USAGE (2). Every error of the framework that names a file, line or config key is a ValueError
(ConfigError, WeightsError, FeatureStoreError, GroundTruthError, ParseError, the pickle refusals,
...); with them come a missing or existing file and a launch or device that does not exist
(LaunchError). A full disk returns EXIT_DISK_FULL (5) with its line (folder, needed, free). Anything
else is a bug and keeps its traceback; so does every error when the environment sets
DELG_TRACEBACK=1.
"""

import argparse
import os
import sys

from core.config import ConfigError, load_cfg
from core.distributed import LaunchError
from core.io import EXIT_DISK_FULL, DiskFullError

EXIT_USAGE = 2
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, LaunchError)
TRACEBACK_VARIABLE = "DELG_TRACEBACK"


def run_reporting_errors(name, function, *args, **kwargs):
    """function(*args, **kwargs), or the exit code of the mistake it raised, reported in one line
    ``<name> error: <message>``."""
    try:
        return function(*args, **kwargs)
    except DiskFullError as error:
        return _report(name, error, EXIT_DISK_FULL)
    except INPUT_ERRORS as error:
        return _report(name, error, EXIT_USAGE)


def _report(name, error, code):
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
        raise error
    print(f"{name} error: {error}", file=sys.stderr)
    return code


def parse_args(description, extra=None, argv=None):
    """Parse ``--cfg FILE [KEY VALUE ...]``; extra(parser) may add script-specific arguments."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    if extra is not None:
        extra(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. OUT_DIR ./output"
    )
    return parser.parse_args(argv)


def load_cfg_or_exit(cfg_file="", opts=()):
    """load_cfg for scripts: a user mistake prints one clear line and exits with status 2."""
    try:
        return load_cfg(cfg_file, opts)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
