"""The training's ETA: the steps left at the mean rate of this process's steps, the validations
still due at their measured duration, and the work after the training that the caller announced
(TRAIN.ETA_EXTRA_S; the demo's extraction and evaluation).

The mean over every step since the first (the first, with its warm-up, left out) barely moves when a
few steps are slow on a busy machine, where a median over the last few steps swung by a factor of
eight; checkpoints and validations are timed apart, so they neither inflate the step rate nor go
missing from the estimate.

    clock = EtaClock(extra_s)
    clock.tick(global_iter)                 # after every step
    with clock.validating(): ...            # a validation (its seconds are averaged)
    with clock.pausing(): ...               # a checkpoint (left out of the step rate)
    clock.eta(global_iter, total_iters, validations_left(...))
"""

import contextlib
import math
import time


class EtaClock:
    def __init__(self, extra_s=0.0):
        self.extra_s = float(extra_s)
        self.first_iter = None
        self.start = 0.0
        self.paused_s = 0.0
        self.validations = []

    def tick(self, global_iter):
        """Call after each step; the first call starts the clock."""
        if self.first_iter is None:
            self.first_iter, self.start, self.paused_s = global_iter, time.perf_counter(), 0.0

    @contextlib.contextmanager
    def pausing(self):
        """Time inside is left out of the step rate."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - began

    @contextlib.contextmanager
    def validating(self):
        """A validation: left out of the step rate, its duration kept for the estimate."""
        began = time.perf_counter()
        with self.pausing():
            yield
        self.validations.append(time.perf_counter() - began)

    def seconds_per_step(self, global_iter):
        steps = global_iter - self.first_iter if self.first_iter is not None else 0
        if steps <= 0:
            return math.nan
        return (time.perf_counter() - self.start - self.paused_s) / steps

    def eta(self, global_iter, total_iters, validations):
        """Seconds left: steps, `validations` more validations (once one was measured) and the
        work after the training; NaN before the rate is known."""
        per_validation = sum(self.validations) / len(self.validations) if self.validations else 0
        steps = self.seconds_per_step(global_iter) * max(total_iters - global_iter, 0)
        return steps + validations * per_validation + self.extra_s


def validations_left(global_iter, total_iters, epoch_iters, eval_period):
    """Validations still due after global_iter: every eval_period-th epoch end before the last
    iteration, and the one at the end (core.trainer.due_at)."""
    if global_iter >= total_iters:
        return 0
    first_epoch = global_iter // epoch_iters + 1
    last_epoch = (total_iters - 1) // epoch_iters
    ends = sum(1 for epoch in range(first_epoch, last_epoch + 1) if epoch % eval_period == 0)
    return ends + 1
