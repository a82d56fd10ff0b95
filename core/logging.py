"""Training logs: a human line every LOG_PERIOD iterations and the same records as JSON lines in
OUT_DIR.

Only the main process logs at INFO; the others log warnings and errors, so a multi-GPU run prints
each line once. The JSON lines file is appended one whole line per write (a record is never split by
a crash except possibly the last line, which readers skip); a resumed run appends to it, and readers
keep the newest record per iteration.
"""

import logging
import os
import resource
import sys

import simplejson
import torch

JSON_LOG_NAME = "training_log.jsonl"
_FORMAT = "[%(asctime)s %(levelname)s %(filename)s:%(lineno)d] %(message)s"


class StdoutHandler(logging.StreamHandler):
    """A stream handler that writes to whatever sys.stdout is at the time of each record, so a
    replaced or closed stdout (a captured test, a redirected notebook cell) never breaks logging."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):  # StreamHandler assigns it; the property always reads sys.stdout
        pass


def setup_logging(out_dir, is_main, to_file=False):
    """Configure the root logger for this process; to_file also writes OUT_DIR/stdout.log (main
    process)."""
    handlers = [StdoutHandler()]
    if to_file and is_main:
        os.makedirs(out_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(out_dir, "stdout.log")))
    logging.basicConfig(
        level=logging.INFO if is_main else logging.WARNING,
        format=_FORMAT,
        handlers=handlers,
        force=True,
    )


def get_logger(name):
    return logging.getLogger(name)


class JsonLog:
    """Appends records (dicts) as JSON lines; a no-op outside the main process. Every record also
    goes to each of ``sinks`` (objects with ``write(record)``, e.g. core.tensorboard's)."""

    def __init__(self, out_dir, enabled=True, sinks=()):
        self.path = os.path.join(out_dir, JSON_LOG_NAME)
        self.enabled = enabled
        self.sinks = list(sinks) if enabled else []
        if enabled:
            os.makedirs(out_dir, exist_ok=True)

    def write(self, record):
        if not self.enabled:
            return
        line = simplejson.dumps(record, ignore_nan=True, sort_keys=False) + "\n"
        with open(self.path, "a") as handle:
            handle.write(line)
        for sink in self.sinks:
            sink.write(record)


def read_json_log(path):
    """Records of a JSON lines log, keeping only the newest per (type, iteration): a resumed run
    re-logs the iterations after its checkpoint. Unparsable lines (a crash mid-write) are
    skipped."""
    newest = {}
    with open(path) as handle:
        for line in handle:
            try:
                record = simplejson.loads(line)
            except simplejson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                newest[(record.get("type"), record.get("iter"))] = record
    return sorted(newest.values(), key=lambda r: (r.get("iter", 0), r.get("type", "")))


def peak_memory_mb(device):
    """Peak GPU memory allocated by this process, or its peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes


def format_eta(seconds):
    if seconds != seconds:  # NaN before the first timed iteration
        return "?"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    return (
        f"{days}d " if days else ""
    ) + f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def train_line(record):
    """The human-readable form of a training record."""
    losses = " ".join(
        f"{name}={value:.4f}" for name, value in record.items() if name.startswith("loss_")
    )
    errors = " ".join(  # DELG: the classifiers' top-1 errors; another task: its error rates
        f"{name.removesuffix('_top1_err')}={value:.2f}%"
        for name, value in record.items()
        if name.endswith("_err")
    )
    return (
        f"epoch {record['epoch'] + 1}/{record['max_epoch']} iter "
        f"{record['iter_in_epoch']}/{record['epoch_iters']} (total "
        f"{record['iter']}/{record['max_iter']}) loss={record['loss']:.4f} {losses} "
        f"{'top1_err ' if 'global_top1_err' in record else ''}{errors} "
        f"lr={record['lr']:.3e} {record['images_per_sec']:.1f} im/s eta "
        f"{format_eta(record['eta_seconds'])} mem {record['peak_mem_mb']:.0f}MB"
    )
