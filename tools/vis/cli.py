"""What the picture scripts' command lines share."""

import sys


def run_with_one_line_errors(name, main, argv=None):
    """main(argv), except that a damaged store or ground truth (ValueError, FileNotFoundError)
    prints one line `NAME error: ...` and returns 2."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"{name} error: {error}", file=sys.stderr)
        return 2
