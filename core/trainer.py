"""The DELG training loop, read top to bottom.

train_model(): set up the process and build the run (core/run.py: a frozen ``Run``), resume (or
load initial weights) into a ``LoopState`` (position, fault counters: all the loop changes), then
for each epoch for each batch take one step (core/step.py); after each step
``due_at`` says what the position calls for: a checkpoint (every TRAIN.CHECKPOINT_ITERS iterations,
every TRAIN.CHECKPOINT_PERIOD epochs, at the end) and validation (every TRAIN.EVAL_PERIOD epochs and
at the end): both classifiers' top-1 errors, and the evaluators the caller handed in as factories
(train_delg.py and the demo: retrieval mAP on EVAL.DATASET with TRAIN.RETRIEVAL_EVAL,
tools/revisitop/validation.py). See core/validation.py.

One step is one forward and one backward for the whole loss (global CE + attention CE +
reconstruction; the model stops the gradient between backbone and local head). After the backward,
one all-reduce per iteration carries the named batch statistics of every process together with two
flags every process must agree on: "some loss was not finite" (then nobody steps) and "a preemption
signal arrived" (then everybody checkpoints and exits).
"""

import logging
import math
import os
import sys
from dataclasses import dataclass

import yaml

from core import distributed as dist
from core.checkpoint import (
    Position,
    capture_rng_state,
    config_differences,
    list_checkpoints,
    newest_readable_checkpoint,
    restore_process_rng,
    restore_training_state,
    save_checkpoint,
    training_state,
)
from core.config import cfg, dump_cfg, load_global_cfg, merge_dict
from core.eta import EtaClock, validations_left
from core.io import EXIT_DISK_FULL, DiskFullError
from core.logging import get_logger, peak_memory_mb, train_line
from core.meters import TrainMeter
from core.optimizer import set_lr
from core.run import (
    DELG_TASK,
    LoopState,
    build_run,
    setup_process,
    training_threads,
    wrap_for_distributed,
)
from core.step import CONTROL, train_step
from core.validation import run_evaluators, validate
from core.weights import load_weights
from datasets.loader import TooManyBadImagesError

logger = get_logger(__name__)

EXIT_CONFIG = 2  # a config key, data file or checkpoint that does not fit (the message says which)
EXIT_NONFINITE = 3  # the run stopped after TRAIN.MAX_NONFINITE_STEPS non-finite losses in a row
EXIT_BAD_IMAGES = 4  # more images failed to decode than TRAIN.MAX_BAD_IMAGE_FRACTION allows
# EXIT_DISK_FULL = 5 (core.io): a checkpoint did not fit on the disk of OUT_DIR
# the log's fields before any step was measured (loss parts: those of the last step; the task's
# statistics: its log_fields)
_LOGGED = ("loss", "grad_norm")


class TrainingStopped(RuntimeError):
    """Training cannot go on; the message says why and what to change."""


# ------------------------------------------------------------------------------------- entry points
def train_in_process(cfg_text, evaluator_factories=(), task=DELG_TASK):
    """Entry of every training process (spawned, torchrun, srun or the only one): load the config,
    train. evaluator_factories: module-level functions (they survive spawn) ``factory(cfg)`` ->
    an evaluator or None, run at every validation (core/validation.py). task: what is trained
    (core/task.py; DELG by default, the learned re-ranker from tools/train_reranker.py)."""
    load_global_cfg()
    merge_dict(cfg, yaml.safe_load(cfg_text), "the launcher's config")
    try:
        return train_model(evaluator_factories, task)
    except DiskFullError as error:
        logger.error("stopping: %s", error)
        return EXIT_DISK_FULL
    except (
        ValueError,
        FileNotFoundError,
    ) as error:  # config, data or checkpoint that does not fit: no traceback
        report_mistake(error)
        return EXIT_CONFIG
    except TrainingStopped as error:
        logger.error("%s", error)
        return EXIT_NONFINITE
    except TooManyBadImagesError as error:
        logger.error("stopping: %s", error)
        return EXIT_BAD_IMAGES


def report_mistake(error):
    """A config, data or checkpoint mistake as every script reports one (core/cli.py): ``<script>
    error: <message>`` on stderr, once (main process); the run's log file gets the line too."""
    if not dist.is_main_process():
        return
    line = f"{os.path.splitext(os.path.basename(sys.argv[0]))[0]} error: {error}"
    print(line, file=sys.stderr, flush=True)
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, line, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # not the console: it has the line already
            handler.handle(record)


def train_model(evaluator_factories=(), task=DELG_TASK):
    """Train with the global cfg in this process; return 0 when finished or preempted after a
    checkpoint."""
    device = setup_process()
    run = build_run(device, evaluator_factories, task)
    state = resume_or_initialise(run)
    if dist.is_main_process():
        dump_cfg(cfg, cfg.OUT_DIR)
    run = wrap_for_distributed(run)
    with run.learner.preemption.installed(), training_threads(device):
        return train(run, state)


# ------------------------------------------------------------------------------------------- resume
def resume_or_initialise(run):
    """Continue from the newest readable checkpoint (TRAIN.AUTO_RESUME), else load TRAIN.WEIGHTS;
    return the loop's state to start from."""
    if cfg.TRAIN.AUTO_RESUME:
        path, checkpoint = newest_readable_checkpoint(cfg.OUT_DIR, report=logger.warning)
        if checkpoint is not None:
            return resume_from(run, path, checkpoint)
        logger.info(
            "TRAIN.AUTO_RESUME: no readable checkpoint in %s, starting from the beginning",
            cfg.OUT_DIR,
        )
    elif earlier := list_checkpoints(cfg.OUT_DIR):
        # Starting afresh beside them would mix two runs: rotation keeps the highest iterations, so
        # the new run's first checkpoints would be the ones deleted, and a later resume would
        # continue the old run.
        raise ValueError(
            f"OUT_DIR {cfg.OUT_DIR} holds checkpoints of an earlier run (the newest at iteration "
            f"{earlier[-1][0]}): set TRAIN.AUTO_RESUME True to continue it, or choose another "
            f"OUT_DIR (or remove {os.path.join(cfg.OUT_DIR, 'checkpoints')}) to start afresh"
        )
    if cfg.TRAIN.WEIGHTS:
        load_weights(run.learner.model, cfg.TRAIN.WEIGHTS, log=logger.info)
        logger.info("initial weights from %s", cfg.TRAIN.WEIGHTS)
    return LoopState(Position(0, 0, 0), run.data.bad_items)


def resume_from(run, path, checkpoint):
    for key, saved, current in config_differences(checkpoint["config"], cfg.dump()):
        logger.info("config changed since the checkpoint: %s %s -> %s", key, saved, current)
    learner = run.learner
    position = restore_training_state(checkpoint, learner.model, learner.optimizer, learner.scaler,
                                      run.data.class_ids, run.plan.epoch_iters, path)  # fmt: skip
    restore_process_rng(checkpoint["rng"], dist.get_rank(), dist.get_world_size(), logger.warning)
    counters = checkpoint.get("counters", {})
    run.data.bad_items.load_state_dict(counters.get("bad_images", {"seen": 0, "failed": 0}))
    state = LoopState(position, run.data.bad_items, 0, int(counters.get("nonfinite_total", 0)))
    logger.info(
        "resumed from %s: epoch %d, iteration %d of it, global iteration %d",
        path, position.epoch + 1, position.iter_in_epoch, position.global_iter,
    )  # fmt: skip
    return state


def write_checkpoint(run, state):
    """Collective: every process hands in its RNG state; the main process writes. Returns the path
    (main) or None."""
    rng_states = dist.all_gather_objects(capture_rng_state())
    path = None
    if dist.is_main_process():
        model, optimizer, scaler = run.learner.model, run.learner.optimizer, run.learner.scaler
        checkpoint = training_state(model, optimizer, scaler, state.position, rng_states,
                                    run.data.class_ids, cfg.dump())  # fmt: skip
        checkpoint["counters"] = state.counters()
        path = save_checkpoint(cfg.OUT_DIR, checkpoint, cfg.TRAIN.KEEP_CHECKPOINTS, logger.warning)
        logger.info("checkpoint %s", path)
    dist.barrier()
    return path


# ----------------------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class Due:
    """What a position calls for after its step."""

    checkpoint: bool
    validate: bool
    epoch_end: bool
    finished: bool


def due_at(position, total_iters, checkpoint_iters, checkpoint_period, eval_period):
    """Checkpoint every checkpoint_iters iterations (0: never by iterations), every
    checkpoint_period epochs and at the end; validate every eval_period epochs and at the end."""
    finished = position.global_iter >= total_iters
    epoch_end = position.iter_in_epoch == 0  # position.epoch epochs are complete
    by_iters = checkpoint_iters > 0 and position.global_iter % checkpoint_iters == 0
    by_epochs = epoch_end and position.epoch % checkpoint_period == 0
    return Due(
        checkpoint=by_iters or by_epochs or finished,
        validate=finished or (epoch_end and position.epoch % eval_period == 0),
        epoch_end=epoch_end,
        finished=finished,
    )


def train(run, state):
    plan = run.plan
    if state.position.global_iter >= plan.total_iters:
        logger.info("nothing to do: the run already finished its %d iterations", plan.total_iters)
        return 0
    clock = EtaClock(cfg.TRAIN.ETA_EXTRA_S)
    for epoch in range(state.position.epoch, plan.max_epoch):
        start = state.position.iter_in_epoch if epoch == state.position.epoch else 0
        state.position = Position(epoch, start, epoch * plan.epoch_iters + start)
        outcome = train_epoch(run, state, clock)
        if outcome == "preempted":
            write_checkpoint(run, state)
            how = "the same command" if cfg.TRAIN.AUTO_RESUME else "with TRAIN.AUTO_RESUME True"
            logger.info(
                "preempted: stopped at global iteration %d after a checkpoint; run again %s to "
                "continue",
                state.position.global_iter,
                how,
            )
            return 0
        if outcome == "finished":
            break
    logger.info("training finished after %d iterations", plan.total_iters)
    return 0


def train_epoch(run, state, clock):
    """Train the rest of the epoch state.position is in; return the outcome: "done", "finished" or
    "preempted". clock: the run's EtaClock (core/eta.py)."""
    epoch, plan, learner = state.position.epoch, run.plan, run.learner
    run.data.loader.sampler.set_epoch(epoch, state.position.iter_in_epoch)
    learner.net.train()
    meter = TrainMeter(window=max(cfg.LOG_PERIOD, 1))
    meter.start()
    for images, labels, num_failed in run.data.loader:
        lr = plan.schedule(state.position.global_iter)
        set_lr(learner.optimizer, lr)
        stats = train_step(learner, images, labels, num_failed, cfg.OPTIM.CLIP_GRAD_NORM)
        state.position = advance(state.position, plan.epoch_iters)
        count_faults(run, state, stats)
        clock.tick(state.position.global_iter)
        if not stats["nonfinite"]:
            meter.update({"lr": lr, **without_control(stats)}, stats["images"])
        iteration = state.position.global_iter
        if iteration % max(cfg.LOG_PERIOD, 1) == 0 or iteration == 1:
            log_iteration(run, state, meter, clock, epoch)  # iteration 1 too: a sign of life
        stop_after_nonfinite_run(state)
        if stats["preempt"]:
            return "preempted"
        due = due_now(run, state.position)
        if due.epoch_end or due.finished:
            record = {"type": "train_epoch", "epoch": epoch, "iter": state.position.global_iter}
            run.json_log.write(record | meter.means())
        checkpoint_and_validate(run, state, due, clock, epoch)
        if due.finished:
            return "finished"
    return "done"


def due_now(run, position):
    """due_at with the run's length and TRAIN's checkpoint and validation periods."""
    periods = cfg.TRAIN
    return due_at(position, run.plan.total_iters, periods.CHECKPOINT_ITERS,
                  periods.CHECKPOINT_PERIOD, periods.EVAL_PERIOD)  # fmt: skip


def checkpoint_and_validate(run, state, due, clock, epoch):
    """What the position calls for besides the epoch's record: a checkpoint, validation (the clock
    pauses for both)."""
    if due.checkpoint:
        with clock.pausing():
            write_checkpoint(run, state)
    if due.validate:
        with clock.validating():
            validate(run, epoch, state.position.global_iter)
            run_evaluators(run, epoch, state.position.global_iter)


def without_control(stats):
    """The step's statistics without its control values (core.step.CONTROL)."""
    return {name: value for name, value in stats.items() if name not in CONTROL}


def advance(position, epoch_iters):
    """The position after one more batch; the end of an epoch is the start of the next."""
    if position.iter_in_epoch + 1 == epoch_iters:
        return Position(position.epoch + 1, 0, position.global_iter + 1)
    return Position(position.epoch, position.iter_in_epoch + 1, position.global_iter + 1)


def count_faults(run, state, stats):
    """Count decoding failures (stopping when they pass TRAIN.MAX_BAD_IMAGE_FRACTION) and non-finite
    losses."""
    state.bad_images.update(stats["images"] + stats["failed"], stats["failed"])
    if not stats["nonfinite"]:
        state.nonfinite_in_row = 0
        return
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    in_row, total = state.nonfinite_in_row, state.nonfinite_total
    logger.warning("non-finite loss: step skipped (%d in a row, %d in all)", in_row, total)
    run.json_log.write({"type": "nonfinite", "iter": state.position.global_iter,
                        "count_in_row": in_row, "total": total})  # fmt: skip


def stop_after_nonfinite_run(state):
    limit = max(cfg.TRAIN.MAX_NONFINITE_STEPS, 1)
    if state.nonfinite_in_row >= limit:
        raise TrainingStopped(
            f"stopping: {state.nonfinite_in_row} non-finite losses in a row "
            f"(TRAIN.MAX_NONFINITE_STEPS = {limit}); the weights of the last checkpoint are "
            "finite: lower OPTIM.BASE_LR, raise OPTIM.WARMUP_EPOCHS or check the data, then "
            "resume with TRAIN.AUTO_RESUME True"
        )


def log_iteration(run, state, meter, clock, epoch):
    """The iteration's line and JSON record: the meter's medians (NaN before any measured step)."""
    medians = meter.medians()
    measured_parts = tuple(name for name in medians if name.startswith("loss_"))
    state.loss_parts = measured_parts or state.loss_parts
    fields = run.learner.task.log_fields
    stats = {name: math.nan for name in (*_LOGGED, *state.loss_parts, *fields.values())} | medians
    plan, position = run.plan, state.position
    record = {
        "type": "train_iter",
        "epoch": epoch,
        "max_epoch": plan.max_epoch,
        "iter_in_epoch": position.iter_in_epoch or plan.epoch_iters,
        "epoch_iters": plan.epoch_iters,
        "iter": position.global_iter,
        "max_iter": plan.total_iters,
        "loss": stats["loss"],
        **{name: stats[name] for name in state.loss_parts},
        **{field: stats[name] for field, name in fields.items()},
        "grad_norm": stats["grad_norm"],
        "lr": stats["lr"],
        "images_per_sec": meter.images_per_second(),
        "eta_seconds": eta_seconds(plan, position.global_iter, clock),
        "peak_mem_mb": peak_memory_mb(run.learner.placement.device),
        "nonfinite_steps": state.nonfinite_total,
        "bad_images": state.bad_images.failed,
    }
    logger.info("%s", train_line(record))
    run.json_log.write(record)


def eta_seconds(plan, iteration, clock):
    """The ETA of the run's end, the validations still to come included (core/eta.py)."""
    total = plan.total_iters
    left = validations_left(iteration, total, plan.epoch_iters, cfg.TRAIN.EVAL_PERIOD)
    return clock.eta(iteration, total, left)
