"""TRAIN.TENSORBOARD: the JSON log's scalars as TensorBoard events, read back with TensorBoard's own
event reader; a run that crashed after its checkpoint and resumed shows every step once, with the
resumed run's values."""

import pytest

from core import trainer
from core.config import load_cfg
from core.logging import JSON_LOG_NAME, JsonLog, read_json_log
from core.tensorboard import TensorBoardSink, build_log_sinks, scalars_of
from tests.tiny import TINY_PRESET, generate_tiny_world, tiny_training_options

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (requirements-interop.txt)",
)

TOTAL, CHECKPOINT, CRASH_AFTER = 8, 4, 6  # the crash leaves steps 5 and 6 beyond the checkpoint


class Crash(RuntimeError):
    pass


def _train(data_root, out_dir, *extra):
    options = tiny_training_options(
        data_root,
        out_dir,
        "OPTIM.MAX_ITER",
        str(TOTAL),
        "TRAIN.CHECKPOINT_ITERS",
        str(CHECKPOINT),
        "TRAIN.TENSORBOARD",
        "True",
        *extra,
    )
    return trainer.train_in_process(load_cfg(TINY_PRESET, options).dump())


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """OUT_DIR of a run that crashed after CRASH_AFTER steps (checkpoint at CHECKPOINT) and was
    resumed to TOTAL."""
    base = tmp_path_factory.mktemp("tensorboard")
    data_root = generate_tiny_world(base) / "train"
    out_dir = base / "run"
    steps = {"count": 0}
    real_step = trainer.train_step

    def step_or_crash(*args, **kwargs):
        steps["count"] += 1
        if steps["count"] > CRASH_AFTER:
            raise Crash("simulated crash")
        return real_step(*args, **kwargs)

    trainer.train_step = step_or_crash
    try:
        with pytest.raises(Crash):
            _train(data_root, out_dir)
    finally:
        trainer.train_step = real_step
    assert _train(data_root, out_dir, "TRAIN.AUTO_RESUME", "True") == 0
    return out_dir


def _accumulator(out_dir):
    accumulator = event_accumulator.EventAccumulator(str(out_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return accumulator


def test_events_hold_the_json_scalars_once_per_step(resumed_run):
    assert len(list(resumed_run.glob("events.out.tfevents.*"))) == 2  # one file per process start
    accumulator = _accumulator(resumed_run)
    tags = set(accumulator.Tags()["scalars"])
    expected = {
        "train_iter/loss",
        "train_iter/loss_global",
        "train_iter/loss_attention",
        "train_iter/loss_reconstruction",
        "train_iter/global_top1_err",
        "train_iter/attention_top1_err",
        "train_iter/lr",
        "train_iter/images_per_sec",
        "val/global_top1_err",
        "val/attention_top1_err",
        "train_epoch/loss",
    }
    assert expected <= tags
    assert not {tag for tag in tags if tag.endswith(("/iter", "/epoch", "/max_iter"))}
    steps = [event.step for event in accumulator.Scalars("train_iter/loss")]
    assert steps == list(range(1, TOTAL + 1))  # steps 5 and 6 of the crashed run were purged
    assert [event.step for event in accumulator.Scalars("val/global_top1_err")] == [TOTAL]


def test_values_are_those_of_the_json_log_after_the_resume(resumed_run):
    accumulator = _accumulator(resumed_run)
    records = {
        record["iter"]: record
        for record in read_json_log(resumed_run / JSON_LOG_NAME)
        if record["type"] == "train_iter"
    }
    for tag in ("train_iter/loss", "train_iter/lr", "train_iter/images_per_sec"):
        for event in accumulator.Scalars(tag):
            expected = records[event.step][tag.split("/", 1)[1]]
            assert event.value == pytest.approx(expected, rel=1e-6), (tag, event.step)


def test_scalars_of_keeps_numbers_and_drops_bookkeeping():
    record = {
        "type": "retrieval",
        "epoch": 3,
        "iter": 400,
        "dataset": "synth",
        "mAP_M": 41.5,
        "mP@5_H": float("nan"),
        "flag": True,
    }
    assert scalars_of(record) == {"retrieval/mAP_M": 41.5}


def test_only_the_main_process_writes_and_only_when_asked(tmp_path):
    cfg = load_cfg(TINY_PRESET, ["OUT_DIR", str(tmp_path), "TRAIN.TENSORBOARD", "True"])
    assert build_log_sinks(cfg, is_main=False) == []
    sinks = build_log_sinks(cfg, is_main=True)
    assert [type(sink) for sink in sinks] == [TensorBoardSink]
    JsonLog(str(tmp_path), enabled=False, sinks=sinks).write({"type": "train_iter", "iter": 1})
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # a disabled log feeds no sink
    JsonLog(str(tmp_path), enabled=True, sinks=sinks).write({"type": "train_iter", "iter": 1})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    cfg.TRAIN.TENSORBOARD = False
    assert build_log_sinks(cfg, is_main=True) == []
