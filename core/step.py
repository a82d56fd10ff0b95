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
from datasets.loader import TooManyBadImagesError

CONTROL = ("preempt", "images", "failed", "nonfinite")  # step outputs that are not statistics


def train_step(learner, images, labels, num_failed, clip_grad_norm=0.0):
    """One forward, one backward, and (unless some process saw a non-finite loss) one optimiser
    step of the learner (core.run.Learner). Returns the batch statistics averaged over all
    processes, and the agreed flags."""
    if labels.numel() == 0:
        return empty_batch(learner, num_failed)
    placement = learner.placement
    images = placement.move(images)  # the task's inputs
    labels = labels.to(placement.device, non_blocking=True)
    with placement.autocast():
        outputs = learner.task.forward(learner.net, images, labels)
        loss, parts = learner.loss_fn(outputs, labels)
    learner.optimizer.zero_grad(set_to_none=True)
    learner.scaler.scale(loss).backward()
    learner.scaler.unscale_(learner.optimizer)
    max_norm = clip_grad_norm if clip_grad_norm > 0 else float("inf")
    grad_norm = nn.utils.clip_grad_norm_(learner.model.parameters(), max_norm)

    nonfinite = ~torch.isfinite(loss.detach())
    # fp16 overflows are the scaler's business; otherwise a NaN gradient is ours
    if not learner.scaler.is_enabled():
        nonfinite |= ~torch.isfinite(grad_norm)
    sums = {
        **control_sums(learner, labels, num_failed, nonfinite),
        **loss_sums(loss, parts, float(labels.numel()), placement.device),
        **learner.task.batch_statistics(outputs, labels),
        "grad_norm": grad_norm.detach().float(),
    }
    summed = dist.all_reduce_dict(sums, placement.device)
    step_unless_nonfinite(learner, summed["nonfinite"] > 0)
    return averages(summed, dist.get_world_size())


def empty_batch(learner, num_failed):
    """Every image of the batch failed to decode: a single process skips it, but under DDP the
    others are already waiting in the backward's all-reduce, so the run cannot skip consistently."""
    if dist.get_world_size() > 1:
        raise TooManyBadImagesError(
            f"all {num_failed} images of a batch on process {dist.get_rank()} failed"
        )
    preempt = float(learner.preemption.requested)
    return {"nonfinite": 0.0, "preempt": preempt, "images": 0.0, "failed": num_failed}


def control_sums(learner, labels, num_failed, nonfinite):
    """The control values of one process's batch (CONTROL), to be summed over the processes."""
    return {
        "preempt": float(learner.preemption.requested),
        "images": float(labels.numel()),
        "failed": float(num_failed),
        "nonfinite": nonfinite.float(),
    }


def loss_sums(loss, parts, batch, device):
    """The loss and its parts (``loss_<part>``), summed over the batch."""
    summed = {f"loss_{name}": _tensor(value, device) * batch for name, value in parts.items()}
    return {"loss": loss.detach().float() * batch, **summed}


def step_unless_nonfinite(learner, nonfinite):
    """The optimiser step, or (some process saw a non-finite loss) none: gradients dropped."""
    if nonfinite:
        learner.optimizer.zero_grad(set_to_none=True)
        if learner.scaler.is_enabled():
            learner.scaler.update()
    else:
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()


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
