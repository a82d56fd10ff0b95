"""What the command-line scripts share: ``--cfg FILE [KEY VALUE ...]`` arguments, and what they do
with a mistake: one line, no traceback, a known exit code.

    args = parse_args(__doc__.split("\n\n")[0], extra_arguments, argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    sys.exit(run_reporting_errors("search", run, cfg, args))

A mistake in the arguments or the inputs prints ``<script> error: <message>`` on stderr and returns
EXIT_USAGE (2). Every error of the framework that names a file, line or config key is a ValueError
(ConfigError, WeightsError, FeatureStoreError, GroundTruthError, ParseError, the pickle refusals,
...); with them come a missing or existing file and a launch or device that does not exist
(LaunchError), and every OSError of a path the user gave (USER_ERRNOS: permission denied, a folder
where a file is expected or the reverse, a read-only file system, a name too long), printed as
``<path>: <reason>``. A full disk returns EXIT_DISK_FULL (5) with its line: DiskFullError (folder,
needed, free), or any OSError of DISK_FULL_ERRNOS (ENOSPC, EDQUOT, EFBIG: the file-size limit)
with the path it names. Anything else is a bug and keeps its traceback; so does every error when
the environment sets DELG_TRACEBACK=1.
"""

import argparse
import errno
import os
import sys

from core.config import ConfigError, load_cfg
from core.distributed import LaunchError
from core.io import DISK_FULL_ERRNOS, EXIT_DISK_FULL, DiskFullError

EXIT_USAGE = 2
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, LaunchError)
# the OSErrors of a path the user chose: the message names the path and the reason
USER_ERRNOS = (
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EROFS,
    errno.EEXIST,
    errno.ENOENT,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOTEMPTY,
)
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
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            return _report(name, error, EXIT_DISK_FULL)
        if error.errno in USER_ERRNOS:
            return _report(name, error, EXIT_USAGE)
        raise


def describe_error(error):
    """One line for an error: an OSError of a path as ``<path>: <reason>`` (``<path> -> <path2>``
    for a rename; the reason alone where the system names no path), anything else as its own
    text."""
    if not isinstance(error, OSError) or not error.strerror or isinstance(error, DiskFullError):
        return str(error)
    reason = error.strerror
    if error.errno in DISK_FULL_ERRNOS:
        reason += " (the disk is full or the file-size limit of ulimit -f was reached)"
    if error.filename is None:  # a write to an open file: the system names no path
        return reason
    path = str(error.filename)
    if error.filename2 is not None:
        path += f" -> {error.filename2}"
    return f"{path}: {reason}"


def _report(name, error, code):
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
        raise error
    print(f"{name} error: {describe_error(error)}", file=sys.stderr)
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


def load_cfg_or_exit(cfg_file="", opts=(), name=""):
    """load_cfg for scripts: a user mistake prints ``<name> error: <message>`` like every other
    mistake (name: the script's file name without .py by default) and exits with status 2."""
    try:
        return load_cfg(cfg_file, opts)
    except ConfigError as error:
        name = name or os.path.splitext(os.path.basename(sys.argv[0]))[0]
        print(f"{name} error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
