"""Non-finite losses are skipped and counted, a run of them stops training; every parameter gets a
gradient (DDP runs without find_unused_parameters)."""

import pytest
import torch
from torch import nn

from core import run as run_module
from core import trainer
from core.checkpoint import list_checkpoints, read_training_checkpoint
from core.config import load_cfg
from core.logging import JSON_LOG_NAME, read_json_log
from modeling import build_loss, build_model
from tests.tiny import TINY_PRESET, generate_tiny_world, tiny_training_options


def tiny_opts(data_root, out_dir, *extra):
    return tiny_training_options(data_root, out_dir, "LOG_DEST", "file", *extra)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    return generate_tiny_world(base) / "train"


class NanOnCalls(nn.Module):
    """The real loss, multiplied by NaN on the chosen calls (1-based)."""

    def __init__(self, loss, nan_calls):
        super().__init__()
        self.loss = loss
        self.nan_calls = nan_calls
        self.calls = 0

    def forward(self, outputs, labels):
        self.calls += 1
        loss, parts = self.loss(outputs, labels)
        if self.calls in self.nan_calls:
            loss = loss * float("nan")
        return loss, parts


def test_nan_loss_step_is_skipped_and_counted(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(run_module, "build_loss", lambda cfg: NanOnCalls(build_loss(cfg), {3}))
    snapshots = []
    real_step = trainer.train_step

    def recording_step(run, *args):
        before = {k: v.clone() for k, v in run.model.state_dict().items() if v.is_floating_point()}
        stats = real_step(run, *args)
        changed = any(not torch.equal(before[k], v) for k, v in run.model.named_parameters())
        snapshots.append((stats["nonfinite"], changed))
        return stats

    monkeypatch.setattr(trainer, "train_step", recording_step)
    opts = tiny_opts(data_root, tmp_path, "OPTIM.MAX_ITER", "5", "TRAIN.MAX_NONFINITE_STEPS", "2")
    assert trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump()) == 0

    assert [nonfinite for nonfinite, _ in snapshots] == [0, 0, 1, 0, 0]
    assert [changed for _, changed in snapshots] == [
        True,
        True,
        False,
        True,
        True,
    ]  # no step on the NaN batch
    state = read_training_checkpoint(list_checkpoints(str(tmp_path))[-1][1])
    assert state["counters"]["nonfinite_total"] == 1 and state["position"]["global_iter"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    records = read_json_log(str(tmp_path / JSON_LOG_NAME))
    assert [r["total"] for r in records if r["type"] == "nonfinite"] == [1]
    assert [r["nonfinite_steps"] for r in records if r["type"] == "train_iter"][-1] == 1
    assert (
        "non-finite loss: step skipped (1 in a row, 1 in all)"
        in (tmp_path / "stdout.log").read_text()
    )


def test_a_run_of_nan_losses_stops_with_a_clear_message(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(
        run_module, "build_loss", lambda cfg: NanOnCalls(build_loss(cfg), set(range(2, 100)))
    )
    opts = tiny_opts(data_root, tmp_path, "OPTIM.MAX_ITER", "20", "TRAIN.MAX_NONFINITE_STEPS", "3")
    assert trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump()) == trainer.EXIT_NONFINITE
    log = (tmp_path / "stdout.log").read_text()
    assert "stopping: 3 non-finite losses in a row (TRAIN.MAX_NONFINITE_STEPS = 3)" in log
    iterations = [
        r["iter"] for r in read_json_log(str(tmp_path / JSON_LOG_NAME)) if r["type"] == "train_iter"
    ]
    assert iterations == [1, 2, 3, 4]  # one good step, then three skipped ones, then the stop


@pytest.mark.parametrize(
    "variant",
    [
        [],
        [
            "MODEL.LOCAL.TYPE",
            "seed",
            "MODEL.LOCAL.DESCRIPTOR_DIM",
            "32",
            "MODEL.HEADS.GEM_LEARNABLE",
            "True",
        ],
        ["MODEL.LOCAL_STRIDE", "32", "MODEL.HEADS.MARGIN_TYPE", "curricular_arcface"],
    ],
)
def test_every_trainable_parameter_gets_a_gradient(variant, tmp_path):
    cfg = load_cfg(TINY_PRESET, tiny_opts(tmp_path, tmp_path, "MODEL.NUM_CLASSES", "5", *variant))
    model = build_model(cfg).train()
    labels = torch.tensor([0, 1, 2, 3])
    loss, _ = build_loss(cfg)(model(torch.randn(4, 3, 32, 32), labels), labels)
    loss.backward()
    assert [
        name for name, p in model.named_parameters() if p.requires_grad and p.grad is None
    ] == []


@pytest.mark.parametrize("key", ["TRAIN.EVAL_PERIOD", "TRAIN.CHECKPOINT_PERIOD"])
def test_a_period_of_zero_epochs_is_a_config_error(key, data_root, tmp_path):
    opts = tiny_opts(data_root, tmp_path, "OPTIM.MAX_ITER", "5", key, "0")
    assert trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump()) == trainer.EXIT_CONFIG
    assert (
        f"{key} 0: expected a number of epochs, at least 1" in (tmp_path / "stdout.log").read_text()
    )


def test_a_fresh_run_does_not_start_beside_an_earlier_runs_checkpoints(data_root, tmp_path):
    """Rotation keeps the highest iterations: a new run there would lose its own checkpoints to the
    old ones."""
    first = tiny_opts(data_root, tmp_path, "OPTIM.MAX_ITER", "8", "TRAIN.CHECKPOINT_ITERS", "4")
    assert trainer.train_in_process(load_cfg(TINY_PRESET, first).dump()) == 0
    before = list_checkpoints(str(tmp_path))
    again = tiny_opts(data_root, tmp_path, "OPTIM.MAX_ITER", "4", "OPTIM.BASE_LR", "0.001")
    assert trainer.train_in_process(load_cfg(TINY_PRESET, again).dump()) == trainer.EXIT_CONFIG
    assert (
        "set TRAIN.AUTO_RESUME True to continue it, or choose another OUT_DIR"
        in (tmp_path / "stdout.log").read_text()
    )
    assert list_checkpoints(str(tmp_path)) == before
