import math

import pytest
import torch
from torch import nn

from core.config import load_cfg
from core.optimizer import (
    LRSchedule,
    build_lr_schedule,
    build_optimizer,
    construct_optimizer,
    parameter_groups,
)


def _small_net():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)  # frozen parameters stay out of the optimiser
    return net


def test_no_decay_group_holds_norm_and_bias_parameters():
    net = _small_net()
    decay, no_decay = parameter_groups(net, 1e-4, no_bn_bias_decay=True)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net[3].weight)}
    expected = {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[3].bias)}
    assert {id(p) for p in no_decay["params"]} == expected


def test_all_trainable_parameters_decay_without_the_option():
    net = _small_net()
    groups = parameter_groups(net, 1e-4, no_bn_bias_decay=False)
    assert len(groups) == 1
    assert len(groups[0]["params"]) == sum(p.requires_grad for p in net.parameters())


def test_shared_parameter_appears_once():
    shared = nn.Linear(3, 3)
    net = nn.Sequential(shared, nn.ReLU(), shared)
    groups = parameter_groups(net, 1e-4, True)
    assert sum(len(g["params"]) for g in groups) == 2
    construct_optimizer(net, "sgd", 0.1, 1e-4)  # torch rejects duplicates, so this would raise


def test_build_optimizer_reads_the_config():
    cfg = load_cfg(
        opts=["OPTIM.OPTIMIZER", "sgd", "OPTIM.NESTEROV", "True", "OPTIM.MOMENTUM", "0.8"]
    )
    optimizer = build_optimizer(_small_net(), cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.8
    cfg = load_cfg(opts=["OPTIM.OPTIMIZER", "adamw", "OPTIM.BETAS", "[0.8, 0.99]"])
    optimizer = build_optimizer(_small_net(), cfg)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["betas"] == (
        0.8,
        0.99,
    )
    with pytest.raises(ValueError, match="OPTIM.OPTIMIZER"):
        build_optimizer(_small_net(), load_cfg(opts=["OPTIM.OPTIMIZER", "lamb"]))


def test_linear_schedule_reaches_zero_and_warms_up():
    schedule = LRSchedule(0.01, 100, "lin", warmup_iters=10, warmup_factor=0.1)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx(0.01 * 0.95 * (0.1 * 0.5 + 0.5))
    assert schedule(10) == pytest.approx(0.009)
    assert schedule(50) == pytest.approx(0.005)
    assert schedule(100) == 0.0
    lrs = [schedule(i) for i in range(10, 101)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_cosine_schedule():
    schedule = LRSchedule(0.1, 200, "cos")
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(100) == pytest.approx(0.05)
    assert schedule(200) == pytest.approx(0.0, abs=1e-12)
    assert schedule(50) == pytest.approx(0.05 * (1 + math.cos(math.pi / 4)))


def test_step_schedule_counts_steps_passed():
    schedule = LRSchedule(1.0, 100, "steps", step_iters=[0, 30, 60], lr_mult=0.1)
    assert schedule(29) == 1.0
    assert schedule(30) == pytest.approx(0.1)
    assert schedule(99) == pytest.approx(0.01)


def test_schedule_from_config_converts_epochs():
    cfg = load_cfg(
        opts=[
            "OPTIM.LR_POLICY",
            "steps",
            "OPTIM.STEPS",
            "[0, 2]",
            "OPTIM.WARMUP_EPOCHS",
            "0.5",
            "OPTIM.BASE_LR",
            "1.0",
            "OPTIM.WARMUP_FACTOR",
            "0.5",
        ]
    )
    schedule = build_lr_schedule(cfg, iters_per_epoch=10, total_iters=40)
    assert schedule.warmup_iters == 5 and schedule.step_iters == [20]
    assert schedule(0) == 0.5 and schedule(19) == 1.0 and schedule(20) == pytest.approx(0.1)


def test_bad_policy_is_named():
    with pytest.raises(ValueError, match="OPTIM.LR_POLICY"):
        LRSchedule(0.1, 10, "exp")
