"""The run: everything the training loop works with, built once from the global cfg.

setup_process() sets logging, the device, the seeds and cuDNN; build_run() builds data, model,
loss, optimiser, scaler, schedule, loaders, evaluators and the log sinks into one frozen ``Run`` of
small frozen parts (``Learner``: what a step uses, ``Placement``, ``Plan``, the task's
``TrainingData``); ``LoopState`` is the little the loop changes (position, fault counters);
training_threads() fixes the CPU threads of a run (TRAIN.CPU_THREADS). core/trainer.py is the loop
that uses it.
"""

import contextlib
import math
import os
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from core import distributed as dist
from core.checkpoint import Position
from core.config import cfg
from core.logging import JsonLog, get_logger, setup_logging
from core.meters import top1_errors
from core.optimizer import build_lr_schedule, build_optimizer
from core.task import TrainingData, TrainingTask, to_device
from core.tensorboard import build_log_sinks
from core.validation import build_evaluators
from datasets.loader import (
    FailureBudget,
    build_failure_budget,
    build_train_dataset,
    build_val_dataset,
    build_val_loader,
    collate_skip_failures,
    make_train_loader,
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
    loader = make_train_loader(train_set, cfg.TRAIN.BATCH_SIZE // world,
                               cfg.DATA_LOADER.NUM_WORKERS, collate_skip_failures, cfg.RNG_SEED,
                               rank, world, pin_memory)  # fmt: skip
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


@dataclass(frozen=True)
class Placement:
    """Where the model runs and in which precision: the device, the autocast dtype (torch.bfloat16,
    torch.float16 or None) and the channels-last layout (both GPU options)."""

    device: torch.device
    amp_dtype: object = None
    channels_last: bool = False

    def autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled)

    def move(self, inputs):
        """The task's inputs on the device (core.task.to_device)."""
        return to_device(inputs, self.device, self.channels_last)


@dataclass(frozen=True)
class Learner:
    """What one step (core/step.py) works with."""

    model: nn.Module  # the bare model: state dicts and validation
    net: nn.Module  # what the step calls: the DDP wrapper, or the model itself in a single process
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    task: TrainingTask  # its forward and batch statistics (core/task.py)
    placement: Placement
    preemption: dist.PreemptionFlag  # read by the step, agreed by every process


@dataclass(frozen=True)
class Plan:
    """How long the run is: iterations per epoch and in all; the learning rate per iteration."""

    epoch_iters: int
    total_iters: int
    schedule: object  # schedule(global_iter) -> learning rate

    @property
    def max_epoch(self):
        return math.ceil(self.total_iters / self.epoch_iters)


@dataclass(frozen=True)
class Run:
    """What the loop works with and never replaces, built once by build_run()."""

    learner: Learner
    data: TrainingData  # loaders, class ids, failure budget (core/task.py)
    plan: Plan
    evaluators: tuple  # the caller's evaluators (core.validation.run_evaluators)
    json_log: JsonLog


@dataclass
class LoopState:
    """What the loop changes as it goes, besides weights and optimiser: the position, the fault
    counters a checkpoint keeps, the loss parts of the last measured step (the log's columns)."""

    position: Position
    bad_images: FailureBudget
    nonfinite_in_row: int = 0
    nonfinite_total: int = 0
    loss_parts: tuple = ()

    def counters(self):
        """What a checkpoint keeps of the state besides the position."""
        return {"nonfinite_total": self.nonfinite_total, "bad_images": self.bad_images.state_dict()}


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
    """The task's data, model and loss (core/task.py, default DELG); optimiser, scaler, schedule,
    evaluators and log sinks, from cfg."""
    check_periods()
    pin = cfg.DATA_LOADER.PIN_MEMORY and device.type == "cuda"
    data = task.build_data(cfg, dist.get_rank(), dist.get_world_size(), pin)
    evaluators = build_evaluators(cfg, evaluator_factories)
    if cfg.TRAIN.RETRIEVAL_EVAL and not evaluators:
        logger.warning(
            "TRAIN.RETRIEVAL_EVAL True but no evaluator was handed to the trainer: run "
            "train_delg.py (or pass tools.revisitop.validation.build_retrieval_validator)"
        )
    learner = build_learner(task, device)
    plan = build_plan(data.loader.sampler.batches_per_epoch)
    main = dist.is_main_process()
    json_log = JsonLog(cfg.OUT_DIR, main, build_log_sinks(cfg, main))
    return Run(learner, data, plan, tuple(evaluators), json_log)


def check_periods():
    for key in ("EVAL_PERIOD", "CHECKPOINT_PERIOD"):
        if cfg.TRAIN[key] < 1:
            raise ValueError(
                f"TRAIN.{key} {cfg.TRAIN[key]}: expected a number of epochs, at least 1"
            )


def build_learner(task, device):
    """The task's model on the device (channels-last, SyncBatchNorm as configured), the optimiser,
    the scaler and the task's loss; the net is the model itself until wrap_for_distributed."""
    on_gpu = device.type == "cuda"
    model = task.build_model(cfg).to(device)
    logger.info("model: %s", format_parameters(count_parameters(model)))
    channels_last = cfg.TRAIN.CHANNELS_LAST and on_gpu
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.BN.SYNC and dist.get_world_size() > 1:
        if on_gpu:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.info("BN.SYNC ignored: SyncBatchNorm needs GPUs")
    placement = Placement(device, amp_dtype_of(cfg.TRAIN.AMP) if on_gpu else None, channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=placement.amp_dtype == torch.float16)
    loss_fn = task.build_loss(cfg)
    return Learner(model, model, loss_fn, optimizer, scaler, task, placement, dist.PreemptionFlag())


def build_plan(epoch_iters):
    """OPTIM.MAX_ITER iterations, or OPTIM.MAX_EPOCH epochs when it is 0, and the LR schedule."""
    optim = cfg.OPTIM
    total_iters = optim.MAX_ITER if optim.MAX_ITER > 0 else optim.MAX_EPOCH * epoch_iters
    logger.info(
        "%d iterations of %d images per epoch, %d iterations in all",
        epoch_iters, cfg.TRAIN.BATCH_SIZE, total_iters,
    )  # fmt: skip
    return Plan(epoch_iters, total_iters, build_lr_schedule(cfg, epoch_iters, total_iters))


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


def wrap_for_distributed(run):
    """The run whose learner steps through the DDP wrapper (the model itself in one process)."""
    if dist.get_world_size() == 1:
        return run
    device = run.learner.placement.device
    device_ids = [device.index] if device.type == "cuda" else None
    net = DistributedDataParallel(
        run.learner.model, device_ids=device_ids, gradient_as_bucket_view=True
    )
    return replace(run, learner=replace(run.learner, net=net))
