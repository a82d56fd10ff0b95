"""One training step and its statistics, which name themselves.

The step measures a dict of named scalars, each summed over the batch (``loss_<part>`` for every
part the loss returns, so a new loss term reaches the log by being returned from the loss), and
sums it over all processes in one all-reduce (core.distributed.all_reduce_dict). Two of them are
flags every process must agree on: ``nonfinite`` (some loss or gradient was not finite: nobody
steps) and ``preempt`` (a preemption signal arrived: everybody checkpoints and exits).
"""

import torch
from torch import nn

from core import distributed as dist
from core.task import to_device
from datasets.loader import TooManyBadImagesError

CONTROL = ("preempt", "images", "failed", "nonfinite")  # step outputs that are not statistics


def train_step(run, images, labels, num_failed, clip_grad_norm=0.0):
    """One forward, one backward, and (unless some process saw a non-finite loss) one optimiser
    step. Returns the batch statistics averaged over all processes, and the agreed flags."""
    if labels.numel() == 0:
        # Every image of the batch failed to decode: a single process skips it, but under DDP the
        # others are already waiting in the backward's all-reduce, so the run cannot skip
        # consistently.
        if dist.get_world_size() > 1:
            raise TooManyBadImagesError(
                f"all {num_failed} images of a batch on process {dist.get_rank()} failed"
            )
        return {
            "nonfinite": 0.0,
            "preempt": float(run.preemption.requested),
            "images": 0.0,
            "failed": num_failed,
        }
    images = to_device(images, run.device, run.channels_last)  # the task's inputs
    labels = labels.to(run.device, non_blocking=True)
    with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
        outputs = run.task.forward(run.net, images, labels)
        loss, parts = run.loss_fn(outputs, labels)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    max_norm = clip_grad_norm if clip_grad_norm > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(run.model.parameters(), max_norm)

    nonfinite = ~torch.isfinite(loss.detach())
    # fp16 overflows are the scaler's business; otherwise a NaN gradient is ours
    if not run.scaler.is_enabled():
        nonfinite |= ~torch.isfinite(grad_norm)
    summed = dist.all_reduce_dict(
        batch_sums(run, labels, num_failed, nonfinite, loss, parts, outputs, grad_norm),
        run.device,
    )
    if summed["nonfinite"] > 0:
        run.optimizer.zero_grad(set_to_none=True)
        if run.scaler.is_enabled():
            run.scaler.update()
    else:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    return averages(summed, dist.get_world_size())


def batch_sums(run, labels, num_failed, nonfinite, loss, parts, outputs, grad_norm):
    """The named scalars of one process's batch, each to be summed over the processes."""
    batch = float(labels.numel())
    return {
        "preempt": float(run.preemption.requested),
        "images": batch,
        "failed": float(num_failed),
        "nonfinite": nonfinite.float(),
        "loss": loss.detach().float() * batch,
        **{f"loss_{name}": _tensor(value, run.device) * batch for name, value in parts.items()},
        **run.task.batch_statistics(outputs, labels),
        "grad_norm": grad_norm.detach().float(),
    }


def averages(summed, world_size):
    """Per-image means of the summed statistics (the grad norm: mean over processes); the control
    values stay sums."""
    images = max(summed["images"], 1.0)
    stats = {}
    for name, value in summed.items():
        if name in CONTROL:
            stats[name] = value
        elif name == "grad_norm":
            stats[name] = value / world_size
        else:
            stats[name] = value / images
    return stats


def _tensor(value, device):
    return torch.as_tensor(value, dtype=torch.float32, device=device)
