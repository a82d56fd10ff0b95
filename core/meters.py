"""Meters: smoothed training statistics, throughput and ETA, and validation error counts."""

import time
from collections import deque

import numpy as np
import torch


def top1_errors(logits, labels):
    """Number of samples whose arg-max logit is not the label (a tensor, so it can be summed over
    processes)."""
    return (logits.argmax(dim=1) != labels).sum()


class WindowMeter:
    """Median over the last `window` values (what the log line shows) and the mean since the last
    reset."""

    def __init__(self, window):
        self.values = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def add(self, value, weight=1):
        self.values.append(value)
        self.total += value * weight
        self.count += weight

    def median(self):
        return float(np.median(self.values)) if self.values else float("nan")

    def mean(self):
        return self.total / self.count if self.count else float("nan")


class TrainMeter:
    """Per-iteration loss parts and top-1 errors (already averaged over processes), with timing.

    Statistics are named by the keys of the dict given to ``update``; iteration time is measured
    between updates.
    """

    def __init__(self, window=20):
        self.window = window
        self.stats = {}
        self.iter_times = WindowMeter(window)
        self.images = WindowMeter(window)
        self.last_time = None

    def start(self):
        """Mark the start of timing (after the loader is built, so start-up is not counted)."""
        self.last_time = time.perf_counter()

    def update(self, stats, num_images):
        now = time.perf_counter()
        if self.last_time is not None:
            self.iter_times.add(now - self.last_time)
            self.images.add(num_images)
        self.last_time = now
        for name, value in stats.items():
            self.stats.setdefault(name, WindowMeter(self.window)).add(value)

    def images_per_second(self):
        seconds = sum(self.iter_times.values)
        return sum(self.images.values) / seconds if seconds > 0 else float("nan")

    def eta_seconds(self, remaining_iters):
        return (
            self.iter_times.median() * remaining_iters if self.iter_times.values else float("nan")
        )

    def medians(self):
        return {name: meter.median() for name, meter in self.stats.items()}

    def means(self):
        return {name: meter.mean() for name, meter in self.stats.items()}


class ErrorCounter:
    """Accumulates top-1 error counts of several classifiers over a validation pass."""

    def __init__(self, names, device="cpu"):
        self.names = list(names)
        # errors..., samples
        self.counts = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=device)

    def add(self, logits_by_name, labels):
        for i, name in enumerate(self.names):
            self.counts[i] += top1_errors(logits_by_name[name], labels)
        self.counts[-1] += labels.numel()

    def errors_percent(self, counts=None):
        """Top-1 error in percent per classifier; counts defaults to this meter's (pass all-reduced
        counts)."""
        counts = (self.counts if counts is None else counts).cpu()
        total = max(float(counts[-1]), 1.0)
        return {name: 100.0 * float(counts[i]) / total for i, name in enumerate(self.names)}
