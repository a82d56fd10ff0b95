"""Small model configs the model and weight tests share: few classes and a short embedding, and a
half-width ResNet-18 on top of that for behaviour that does not depend on depth."""

from types import SimpleNamespace

import torch

from core.config import load_cfg
from core.distributed import PreemptionFlag
from core.run import DELG_TASK


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
    """What core.step.train_step needs of a run, for one float32 DELG step of `model` on the CPU."""
    return SimpleNamespace(
        model=model,
        net=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        device=torch.device("cpu"),
        amp_dtype=None,
        channels_last=False,
        task=DELG_TASK,
        preemption=PreemptionFlag(),
    )
