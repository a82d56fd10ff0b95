"""The run: everything the training loop works with, built once from the global cfg.

setup_process() sets logging, the device, the seeds and cuDNN; build_run() builds data, model,
loss, optimiser, scaler, schedule, loaders, evaluators and the log sinks into one ``Run``;
training_threads() fixes the CPU threads of a run (TRAIN.CPU_THREADS). core/trainer.py is the loop
that uses it.
"""

import contextlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import distributed as dist
from core.config import cfg
from core.data import make_train_loader
from core.logging import JsonLog, get_logger, setup_logging
from core.meters import top1_errors
from core.optimizer import build_lr_schedule, build_optimizer
from core.task import TrainingData, TrainingTask
from core.tensorboard import build_log_sinks
from core.validation import build_evaluators
from datasets.loader import (
    FailureBudget,
    build_failure_budget,
    build_train_dataset,
    build_val_dataset,
    build_val_loader,
    collate_skip_failures,
)
from modeling import build_loss, build_model
from modeling.complexity import count_parameters, format_parameters

logger = get_logger(__name__)


# DELG on images: the default task (core/task.py)
def build_delg_data(cfg, rank, world, pin_memory):
    """GLDv2 / list training split and its held-out part; sets MODEL.NUM_CLASSES from the data."""
    train_set, mapping = build_train_dataset(cfg)
    set_num_classes(mapping.num_classes)
    if dist.is_main_process():
        mapping.save(os.path.join(cfg.OUT_DIR, "class_mapping.json"))
    if cfg.TRAIN.BATCH_SIZE % world:
        raise ValueError(
            f"TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE} is not divisible by the {world} processes"
        )
    loader = make_train_loader(
        train_set,
        cfg.TRAIN.BATCH_SIZE // world,
        cfg.DATA_LOADER.NUM_WORKERS,
        collate_skip_failures,
        cfg.RNG_SEED,
        rank,
        world,
        pin_memory,
    )
    val_set, _ = build_val_dataset(cfg)
    val_loader = (
        build_val_loader(cfg, val_set, rank, world, pin_memory) if val_set is not None else None
    )
    return TrainingData(
        loader, val_loader, list(mapping.landmark_ids), build_failure_budget(cfg, len(train_set))
    )


def build_delg_model(cfg):
    return build_model(cfg)  # looked up at call time (tests replace it)


def build_delg_loss(cfg):
    return build_loss(cfg)


def delg_forward(net, images, labels):
    return net(images, labels)


def delg_statistics(outputs, labels):
    return {
        "top1_err_global": 100.0 * top1_errors(outputs["global_logits"], labels).float(),
        "top1_err_attention": 100.0 * top1_errors(outputs["attention_logits"], labels).float(),
    }


DELG_TASK = TrainingTask(
    build_data=build_delg_data,
    build_model=build_delg_model,
    build_loss=build_delg_loss,
    forward=delg_forward,
    batch_statistics=delg_statistics,
    log_fields={"global_top1_err": "top1_err_global", "attention_top1_err": "top1_err_attention"},
)


@dataclass
class Run:
    """Everything the loop works with, built once by build_run()."""

    model: nn.Module  # the bare model: state dicts and validation
    net: nn.Module  # what the step calls: the DDP wrapper, or the model itself in a single process
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: object
    loader: torch.utils.data.DataLoader
    val_loader: object
    evaluators: list  # the caller's evaluators (core.validation.run_evaluators)
    device: torch.device
    amp_dtype: object  # torch.bfloat16, torch.float16 or None
    channels_last: bool
    class_ids: list
    epoch_iters: int
    total_iters: int
    max_epoch: int
    json_log: JsonLog
    preemption: dist.PreemptionFlag
    bad_images: FailureBudget
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    loss_parts: tuple = ()  # the loss_<part> statistics of the last measured step
    task: TrainingTask = DELG_TASK  # what is trained (core/task.py)


@contextlib.contextmanager
def training_threads(device):
    """TRAIN.CPU_THREADS > 0 fixes the intra-op threads of CPU training (restored afterwards):
    oneDNN sums convolution gradients in an order that depends on the thread count, so a fixed
    count makes a CPU run repeat bit for bit whatever the machine's cores and load."""
    before = torch.get_num_threads()
    if device.type == "cpu" and cfg.TRAIN.CPU_THREADS > 0:
        torch.set_num_threads(cfg.TRAIN.CPU_THREADS)
        logger.info("TRAIN.CPU_THREADS: training with %d threads", cfg.TRAIN.CPU_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup_process():
    setup_logging(cfg.OUT_DIR, dist.is_main_process(), to_file=cfg.LOG_DEST == "file")
    device_kind = dist.resolve_device(cfg.DEVICE)
    device = (
        torch.device("cuda", dist.get_local_rank())
        if device_kind == "cuda"
        else torch.device("cpu")
    )
    # Every process draws the same initial weights; the data order and augmentation have their own
    # seeds.
    torch.manual_seed(cfg.RNG_SEED)
    np.random.seed(cfg.RNG_SEED)
    torch.backends.cudnn.benchmark = cfg.CUDNN.BENCHMARK
    if device.type == "cpu" and (cfg.TRAIN.AMP != "off" or cfg.TRAIN.CHANNELS_LAST):
        logger.info(
            "TRAIN.AMP %s and TRAIN.CHANNELS_LAST %s are GPU options; ignored on CPU",
            cfg.TRAIN.AMP,
            cfg.TRAIN.CHANNELS_LAST,
        )
    logger.info("process %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def build_run(device, evaluator_factories=(), task=DELG_TASK):
    """Data, model, loss, optimiser, scaler, schedule, loaders and evaluators, from cfg; the task
    (core/task.py, default DELG) supplies the data, model, loss and statistics."""
    for key in ("EVAL_PERIOD", "CHECKPOINT_PERIOD"):
        if cfg.TRAIN[key] < 1:
            raise ValueError(
                f"TRAIN.{key} {cfg.TRAIN[key]}: expected a number of epochs, at least 1"
            )
    rank, world = dist.get_rank(), dist.get_world_size()
    pin = cfg.DATA_LOADER.PIN_MEMORY and device.type == "cuda"
    data = task.build_data(cfg, rank, world, pin)
    loader = data.loader
    evaluators = build_evaluators(cfg, evaluator_factories)
    if cfg.TRAIN.RETRIEVAL_EVAL and not evaluators:
        logger.warning(
            "TRAIN.RETRIEVAL_EVAL True but no evaluator was handed to the trainer: run "
            "train_delg.py (or pass tools.revisitop.validation.build_retrieval_validator)"
        )

    model = task.build_model(cfg).to(device)
    logger.info("model: %s", format_parameters(count_parameters(model)))
    channels_last = cfg.TRAIN.CHANNELS_LAST and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.BN.SYNC and world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.info("BN.SYNC ignored: SyncBatchNorm needs GPUs")
    amp_dtype = amp_dtype_of(cfg.TRAIN.AMP) if device.type == "cuda" else None
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    epoch_iters = loader.sampler.batches_per_epoch
    total_iters = (
        cfg.OPTIM.MAX_ITER if cfg.OPTIM.MAX_ITER > 0 else cfg.OPTIM.MAX_EPOCH * epoch_iters
    )
    logger.info(
        "%d iterations of %d images per epoch, %d iterations in all",
        epoch_iters,
        cfg.TRAIN.BATCH_SIZE,
        total_iters,
    )
    return Run(
        model=model,
        net=model,
        loss_fn=task.build_loss(cfg),
        optimizer=optimizer,
        scaler=scaler,
        schedule=build_lr_schedule(cfg, epoch_iters, total_iters),
        loader=loader,
        val_loader=data.val_loader,
        evaluators=evaluators,
        device=device,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        class_ids=data.class_ids,
        epoch_iters=epoch_iters,
        total_iters=total_iters,
        max_epoch=math.ceil(total_iters / epoch_iters),
        json_log=JsonLog(
            cfg.OUT_DIR, dist.is_main_process(), build_log_sinks(cfg, dist.is_main_process())
        ),
        preemption=dist.PreemptionFlag(),
        bad_images=data.bad_items,
        task=task,
    )


def set_num_classes(num_classes):
    """MODEL.NUM_CLASSES 0 takes the data's class count; a head smaller than the data is an
    error."""
    if cfg.MODEL.NUM_CLASSES == 0:
        cfg.MODEL.NUM_CLASSES = num_classes
    elif cfg.MODEL.NUM_CLASSES < num_classes:
        raise ValueError(
            f"MODEL.NUM_CLASSES {cfg.MODEL.NUM_CLASSES} is smaller than the {num_classes} classes "
            "of the training data; set it to 0 to take the data's count"
        )
    elif cfg.MODEL.NUM_CLASSES > num_classes:
        logger.warning(
            "MODEL.NUM_CLASSES %d but the training data has %d classes",
            cfg.MODEL.NUM_CLASSES,
            num_classes,
        )


def amp_dtype_of(name):
    dtypes = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"TRAIN.AMP must be off, bf16 or fp16, got {name!r}")
    return dtypes[name]


def wrap_for_distributed(model, device):
    if dist.get_world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)
