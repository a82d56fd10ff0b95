"""Validation during training, every TRAIN.EVAL_PERIOD epochs and at the end of the run.

validate(): top-1 error of the global and the attention classifier on the held-out split, summed
over all
processes. validate_retrieval(): with TRAIN.RETRIEVAL_EVAL, global-search mAP on EVAL.DATASET
(core/retrieval_eval.py), computed by the main process while the others wait. Both write a record to
the run's JSON log.
"""

import torch

from core import distributed as dist
from core.logging import get_logger
from core.meters import ErrorCounter
from core.retrieval_eval import retrieval_record

logger = get_logger(__name__)


@torch.no_grad()
def validate(run, epoch, global_iter):
    """Top-1 error of the global (margin) and the attention classifier on the validation set, all
    processes."""
    if run.val_loader is None:
        return None
    run.model.eval()
    counter = ErrorCounter(["global", "attention"], device=run.device)
    for images, labels, _ in run.val_loader:
        if labels.numel() == 0:
            continue
        images, labels = (
            images.to(run.device, non_blocking=True),
            labels.to(run.device, non_blocking=True),
        )
        if run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None
        ):
            outputs = run.model(images)  # no labels: plain cosine logits, no margin
        counter.add(
            {"global": outputs["global_logits"], "attention": outputs["attention_logits"]}, labels
        )
    errors = counter.errors_percent(dist.all_reduce_sum(counter.counts))
    run.model.train()
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


def validate_retrieval(run, epoch, global_iter):
    """Global-search mAP on EVAL.DATASET (TRAIN.RETRIEVAL_EVAL): the main process evaluates, the
    others wait."""
    if run.retrieval is None:
        return None
    record = None
    if dist.is_main_process():
        record = retrieval_record(run.retrieval, run.model, run.device, epoch, global_iter)
        logger.info(
            "retrieval after epoch %d on %s: mAP E=%.2f M=%.2f H=%.2f",
            epoch + 1,
            run.retrieval.title,
            record["mAP_E"],
            record["mAP_M"],
            record["mAP_H"],
        )
        run.json_log.write(record)
    dist.barrier()
    return record
