"""TensorBoard curves of a training run (TRAIN.TENSORBOARD): the records of the JSON-lines log, as
scalars in OUT_DIR.

Every record the trainer writes to the JSON log (core.logging.JsonLog) reaches the sink too: each
numeric value becomes the scalar ``<record type>/<key>`` at step ``iter`` (train_iter/loss,
train_iter/loss_attention, train_iter/lr, train_iter/images_per_sec, val/global_top1_err,
retrieval/mAP_M, ...); bookkeeping keys (epoch, iteration counters) are left out. Only the main
process writes.

A resumed run continues the same curves: the first record after a resume carries the first step
after the checkpoint, and the writer is opened with ``purge_step`` at that step, so TensorBoard
drops what a crashed run had written from there on and no step appears twice.
"""

import math
import numbers

BOOKKEEPING = {"type", "epoch", "max_epoch", "iter", "iter_in_epoch", "epoch_iters", "max_iter"}


def scalars_of(record):
    """{tag: value} of one JSON-log record: its finite numeric values, tagged by record type."""
    kind = record.get("type", "record")
    return {
        f"{kind}/{key}": float(value)
        for key, value in record.items()
        if key not in BOOKKEEPING
        and isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class TensorBoardSink:
    """Writes JSON-log records as TensorBoard scalars under log_dir (opened at the first record)."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.writer = None

    def _open(self, first_step):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(self.log_dir, purge_step=first_step)

    def write(self, record):
        step = record.get("iter")
        if step is None:
            return
        if self.writer is None:
            self._open(int(step))
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, global_step=int(step))
        self.writer.flush()  # a crash never loses a written step

    def close(self):
        if self.writer is not None:
            self.writer.close()


def build_log_sinks(cfg, is_main):
    """The extra sinks of the JSON log: a TensorBoardSink in OUT_DIR when TRAIN.TENSORBOARD (main
    process only)."""
    if not (cfg.TRAIN.TENSORBOARD and is_main):
        return []
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as error:
        raise ValueError(
            "TRAIN.TENSORBOARD True needs the tensorboard package "
            f"(pip install -r requirements-interop.txt): {error}"
        ) from None
    return [TensorBoardSink(cfg.OUT_DIR)]
