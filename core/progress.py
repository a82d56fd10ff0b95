"""Progress of long loops: a tqdm bar on a terminal, plain log lines otherwise.

A bar's carriage returns fill log files and captured output with hundreds of partial lines, so off a
terminal (a SLURM log, a pipe, a file) the same progress comes as one INFO line every
LOG_INTERVAL_S seconds and one at the end.
"""

import logging
import sys
import time

from tqdm import tqdm

LOG_INTERVAL_S = 30.0

logger = logging.getLogger(__name__)


def progress_bar(total, desc, unit="it", enabled=True, stream=None, **tqdm_options):
    """An object with update(n) and close(): tqdm when stream (stderr) is a terminal, else
    LogProgress; nothing at all when not enabled."""
    stream = stream or sys.stderr
    if enabled and stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, **tqdm_options)
    return LogProgress(total, desc, unit, enabled)


def track(iterable, total, desc, unit="it", enabled=True, **tqdm_options):
    """Yield the items of iterable while progress_bar counts them."""
    with progress_bar(total, desc, unit, enabled, **tqdm_options) as bar:
        for item in iterable:
            yield item
            bar.update(1)


class LogProgress:
    """update()/close() like tqdm, reporting 'desc: done/total unit (share, rate)' as log lines."""

    def __init__(self, total, desc, unit="it", enabled=True, interval=LOG_INTERVAL_S):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled, self.interval = enabled, interval
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, count=1):
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self.last >= self.interval and self.done < (self.total or 0):
            self.last = now
            self._log(now)

    def close(self):
        if self.enabled and self.done:
            self._log(time.monotonic())
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _log(self, now):
        rate = self.done / max(now - self.start, 1e-9)
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        logger.info(
            "%s: %d/%s %s%s, %.1f %s/s",
            self.desc,
            self.done,
            self.total if self.total else "?",
            self.unit,
            share,
            rate,
            self.unit,
        )
