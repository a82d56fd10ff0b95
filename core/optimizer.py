"""Optimiser construction and the per-iteration learning-rate schedule.

Weight decay is left off normalisation layers and one-dimensional parameters (biases, a learnable
GeM power) when NO_BN_BIAS_DECAY is set: decaying them only shrinks scales the network needs. The
learning rate is set every iteration from the iteration counter alone, so a resumed run continues
the schedule exactly.
"""

import math

import torch
from torch import nn

_NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
)
POLICIES = ("lin", "cos", "steps")


def parameter_groups(model, weight_decay, no_bn_bias_decay):
    """Trainable parameters split into a decayed group and (by option) an undecayed one for norms
    and biases."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_LAYERS)
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if no_bn_bias_decay and (is_norm or param.ndim <= 1) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def construct_optimizer(
    model,
    name,
    lr,
    weight_decay,
    no_bn_bias_decay=True,
    momentum=0.9,
    nesterov=False,
    dampening=0.0,
    betas=(0.9, 0.999),
):
    """SGD (momentum, optionally Nesterov) or AdamW over the model's trainable parameters."""
    groups = parameter_groups(model, weight_decay, no_bn_bias_decay)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    raise ValueError(f"OPTIM.OPTIMIZER must be sgd or adamw, got {name!r}")


def build_optimizer(model, cfg):
    optim = cfg.OPTIM
    if optim.NESTEROV and (optim.MOMENTUM <= 0 or optim.DAMPENING != 0):
        raise ValueError("OPTIM.NESTEROV needs OPTIM.MOMENTUM > 0 and OPTIM.DAMPENING 0")
    return construct_optimizer(
        model,
        optim.OPTIMIZER,
        optim.BASE_LR,
        optim.WEIGHT_DECAY,
        optim.NO_BN_BIAS_DECAY,
        optim.MOMENTUM,
        optim.NESTEROV,
        optim.DAMPENING,
        optim.BETAS,
    )


class LRSchedule:
    """Learning rate as a function of the global iteration: linear warm-up, then lin / cos /
    steps."""

    def __init__(
        self,
        base_lr,
        total_iters,
        policy="lin",
        warmup_iters=0,
        warmup_factor=0.1,
        step_iters=(),
        lr_mult=0.1,
    ):
        if policy not in POLICIES:
            raise ValueError(
                f"OPTIM.LR_POLICY must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        if total_iters <= 0:
            raise ValueError(f"the training length must be positive, got {total_iters} iterations")
        self.base_lr = base_lr
        self.total_iters = total_iters
        self.policy = policy
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.step_iters = sorted(s for s in step_iters if s > 0)
        self.lr_mult = lr_mult

    def __call__(self, iteration):
        progress = min(iteration, self.total_iters) / self.total_iters
        if self.policy == "lin":
            lr = self.base_lr * (1.0 - progress)
        elif self.policy == "cos":
            lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            lr = self.base_lr * self.lr_mult ** sum(iteration >= s for s in self.step_iters)
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1.0 - alpha) + alpha
        return lr


def build_lr_schedule(cfg, iters_per_epoch, total_iters):
    """The schedule of cfg.OPTIM; epochs (warm-up, steps) are converted with iters_per_epoch."""
    optim = cfg.OPTIM
    return LRSchedule(
        optim.BASE_LR,
        total_iters,
        optim.LR_POLICY,
        round(optim.WARMUP_EPOCHS * iters_per_epoch),
        optim.WARMUP_FACTOR,
        [round(s * iters_per_epoch) for s in optim.STEPS],
        optim.LR_MULT,
    )


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
