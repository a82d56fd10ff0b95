"""Validation during training, every TRAIN.EVAL_PERIOD epochs and at the end of the run.

validate(): top-1 error of the global and the attention classifier on the held-out split, summed
over all processes. run_evaluators(): the evaluators the trainer's caller handed in as factories
(train_delg.py and the demo give tools/revisitop/validation.py's global-search mAP on EVAL.DATASET,
with TRAIN.RETRIEVAL_EVAL), computed by the main process while the others wait. Both write a record
to the run's JSON log.
"""

import torch

from core import distributed as dist
from core.logging import get_logger
from core.meters import ErrorCounter
from core.progress import track

logger = get_logger(__name__)


@torch.no_grad()
def validate(run, epoch, global_iter):
    """Top-1 error of the global (margin) and the attention classifier on the validation set, all
    processes."""
    model, placement, val_loader = run.learner.model, run.learner.placement, run.data.val_loader
    if val_loader is None:
        return None
    model.eval()
    counter = ErrorCounter(["global", "attention"], device=placement.device)
    what = f"validation after epoch {epoch + 1}"
    batches = track(val_loader, len(val_loader), what, "batch", enabled=dist.is_main_process())
    for images, labels, _ in batches:
        if labels.numel() == 0:
            continue
        images = placement.move(images)
        labels = labels.to(placement.device, non_blocking=True)
        with placement.autocast():
            outputs = model(images)  # no labels: plain cosine logits, no margin
        counter.add(
            {"global": outputs["global_logits"], "attention": outputs["attention_logits"]}, labels
        )
    errors = counter.errors_percent(dist.all_reduce_sum(counter.counts))
    model.train()
    logger.info(
        "validation after epoch %d: top1_err global=%.2f%% attention=%.2f%%",
        epoch + 1,
        errors["global"],
        errors["attention"],
    )
    run.json_log.write(
        {
            "type": "val",
            "epoch": epoch,
            "iter": global_iter,
            "global_top1_err": errors["global"],
            "attention_top1_err": errors["attention"],
        }
    )
    return errors


def build_evaluators(cfg, factories):
    """The evaluators of the caller's factories (each ``factory(cfg)`` -> evaluator or None), built
    on every process, so that a missing data set stops them all."""
    evaluators = [factory(cfg) for factory in factories]
    return [evaluator for evaluator in evaluators if evaluator is not None]


def run_evaluators(run, epoch, global_iter):
    """Each evaluator of the run (``evaluator(model, device, epoch, global_iter)`` -> JSON record
    with a "type", ``evaluator.describe(record)`` -> log text) on the main process while the others
    wait; returns the records (main process) or Nones."""
    records = []
    for evaluator in run.evaluators:
        record = None
        if dist.is_main_process():
            model, device = run.learner.model, run.learner.placement.device
            record = evaluator(model, device, epoch, global_iter)
            logger.info(
                "%s after epoch %d %s", record["type"], epoch + 1, evaluator.describe(record)
            )
            run.json_log.write(record)
        dist.barrier()
        records.append(record)
    return records
