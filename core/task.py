"""What the training loop trains: a task hands the loop its data, model, loss and batch statistics.

The loop (core/trainer.py, core/run.py, core/step.py) is one: checkpoints, exact resume, preemption,
DDP, AMP, the JSON log, TensorBoard and progress are the same for every task. ``DELG_TASK`` (the
default, core/run.py) trains DELG on images (datasets/loader.py, modeling); a caller hands in
another task, e.g. tools/train_reranker.py the learned re-ranker on pairs of local-feature sets. A
task is a frozen dataclass of module-level functions, so that spawned processes can unpickle it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class TrainingData:
    """What build_data returns: the training loader (datasets.loader.make_train_loader: batches of
    (inputs, targets, number of failed items)), the classifier validation loader or None, the ids a
    checkpoint must be resumed with, and the failure budget of the training items."""

    loader: torch.utils.data.DataLoader
    val_loader: object
    class_ids: list
    bad_items: object  # datasets.loader.FailureBudget


@dataclass(frozen=True)
class TrainingTask:
    """build_data(cfg, rank, world, pin_memory) -> TrainingData (may fill cfg keys the model needs);
    build_model(cfg) -> nn.Module; build_loss(cfg) -> loss_fn(outputs, targets) -> (loss, parts);
    forward(net, inputs, targets) -> outputs; batch_statistics(outputs, targets) -> {name: tensor
    summed over the batch}, averaged per item in the log; log_fields: {record name: statistic} of
    the iteration log, NaN before the first measured step."""

    build_data: Callable
    build_model: Callable
    build_loss: Callable
    forward: Callable
    batch_statistics: Callable
    log_fields: dict = field(default_factory=dict)


def to_device(inputs, device, channels_last=False):
    """Tensors, or tuples / named tuples / dicts of them (None kept), on the device; 4-D tensors in
    channels-last layout when asked."""
    if inputs is None:
        return None
    if isinstance(inputs, torch.Tensor):
        moved = inputs.to(device, non_blocking=True)
        if channels_last and moved.dim() == 4:
            moved = moved.contiguous(memory_format=torch.channels_last)
        return moved
    if isinstance(inputs, dict):
        return {key: to_device(value, device, channels_last) for key, value in inputs.items()}
    if isinstance(inputs, tuple):
        moved = [to_device(value, device, channels_last) for value in inputs]
        return type(inputs)(*moved) if hasattr(inputs, "_fields") else tuple(moved)
    raise TypeError(f"cannot move a {type(inputs).__name__} to a device")
