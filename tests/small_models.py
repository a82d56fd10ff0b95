"""Small model configs the model and weight tests share: few classes and a short embedding, and a
half-width ResNet-18 on top of that for behaviour that does not depend on depth."""

import torch

from core.config import load_cfg
from core.distributed import PreemptionFlag
from core.run import DELG_TASK, Learner, Placement


def small_cfg(*overrides):
    """Small heads (few classes, short embedding) so that only the backbone costs time."""
    return load_cfg("", ["MODEL.NUM_CLASSES", "5", "MODEL.HEADS.REDUCTION_DIM", "16", *overrides])


def tiny_cfg(*overrides):
    """Half-width ResNet-18 with small heads: the cheapest model for behaviour that does not depend
    on depth."""
    return small_cfg(
        "MODEL.DEPTH",
        "18",
        "RESNET.TRANS_FUN",
        "basic_transform",
        "RESNET.WIDTH_PER_GROUP",
        "32",
        "MODEL.LOCAL.ATTENTION_DIM",
        "16",
        "MODEL.LOCAL.DESCRIPTOR_DIM",
        "8",
        *overrides,
    )


def cpu_step_run(model, loss_fn, optimizer):
    """The Learner (core/run.py) of one float32 DELG step of `model` on the CPU
    (core.step.train_step)."""
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    placement = Placement(torch.device("cpu"))
    return Learner(model, model, loss_fn, optimizer, scaler, DELG_TASK, placement, PreemptionFlag())
