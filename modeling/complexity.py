"""Parameter counts and FLOPs of a DELG model at a given input size.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode: a multiply-add counts 2, only
convolutions and matrix products are counted (BN, ReLU and pooling are left out), as in most
published ResNet figures x 2 (ResNet-50 at 224 x 224: 4.1 GMACs = 8.2 GFLOPs). A model on the "meta"
device is counted without computing anything, so large inputs cost nothing.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from modeling.delg import build_inference_model, describe_backbone


def count_parameters(model):
    """{"total", "trainable", and one entry per top-level part (backbone, pool, whiten, ...)}."""
    counts = {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    for name, child in model.named_children():
        counts[name] = sum(p.numel() for p in child.parameters())
    return counts


def count_flops(model, height, width, want_global=True, want_local=True, batch_size=1):
    """FLOPs of ``model.extract`` on a batch of [batch_size, 3, height, width] images (model left in
    its mode)."""
    parameter = next(model.parameters())
    images = torch.zeros(
        batch_size, 3, height, width, device=parameter.device, dtype=parameter.dtype
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.extract(images, want_global=want_global, want_local=want_local)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def complexity_report(model, height, width):
    """Parameters and extraction FLOPs (global + local, global only, local only) at height x
    width."""
    return {
        "input_size": [height, width],
        "parameters": count_parameters(model),
        "flops": count_flops(model, height, width),
        "flops_global": count_flops(model, height, width, want_local=False),
        "flops_local": count_flops(model, height, width, want_global=False),
    }


def format_parameters(params):
    """count_parameters as one phrase: total, trainable and each part, in millions."""
    parts = ", ".join(
        f"{name} {count / 1e6:.2f}M"
        for name, count in params.items()
        if name not in ("total", "trainable")
    )
    total = params["total"] / 1e6
    trainable = params["trainable"] / 1e6
    return f"parameters {total:.2f}M ({trainable:.2f}M trainable; {parts})"


def format_complexity(report):
    params, (height, width) = report["parameters"], report["input_size"]
    return (
        f"{format_parameters(params)}; extraction at {height}x{width}: {report['flops'] / 1e9:.2f} "
        f"GFLOPs (global only {report['flops_global'] / 1e9:.2f}, local only "
        f"{report['flops_local'] / 1e9:.2f})"
    )


def describe_model(cfg, size):
    """One paragraph on the model cfg builds: depth, parameters, FLOPs at size x size, local
    geometry. The model is built on the meta device, so this costs a second whatever the size."""
    classes = f"{cfg.MODEL.NUM_CLASSES} classes"
    if cfg.MODEL.NUM_CLASSES <= 0:
        classes = "classes from the training data (classifiers counted with 1)"
    with torch.device("meta"):
        model = build_inference_model(cfg)
    geometry = model.local_geometry
    return (
        f"DELG {describe_backbone(cfg)}, {cfg.MODEL.HEADS.REDUCTION_DIM}-d global, "
        f"{cfg.MODEL.LOCAL.DESCRIPTOR_DIM}-d local ({cfg.MODEL.LOCAL.TYPE}), {classes}\n"
        f"{format_complexity(complexity_report(model, size, size))}\n"
        f"local features: receptive field {geometry.receptive_field} px, stride {geometry.stride}, "
        f"padding {geometry.padding}"
    )
