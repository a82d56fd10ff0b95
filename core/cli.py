"""What every command-line script does with a mistake: one line, no traceback, a known exit code.

    sys.exit(run_reporting_errors("search", run, args))

A mistake in the arguments or the inputs prints ``<script> error: <message>`` on stderr and returns
EXIT_USAGE (2). Every error of the framework that names a file, line or config key is a ValueError
(ConfigError, WeightsError, FeatureStoreError, GroundTruthError, ParseError, the pickle refusals,
...); with them come a missing or existing file and a launch or device that does not exist
(LaunchError). A full disk returns EXIT_DISK_FULL (5) with its line (folder, needed, free). Anything
else is a bug and keeps its traceback; so does every error when the environment sets
DELG_TRACEBACK=1.
"""

import os
import sys

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
