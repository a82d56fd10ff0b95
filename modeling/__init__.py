"""Backbones, GeM, margin heads, local heads, the DELG model, its loss and receptive-field
geometry."""

from modeling.delg import DELG, build_backbone, build_inference_model, build_model
from modeling.geometry import LocalGeometry
from modeling.losses import DelgLoss, build_loss

__all__ = [
    "DELG",
    "DelgLoss",
    "LocalGeometry",
    "build_backbone",
    "build_inference_model",
    "build_loss",
    "build_model",
]
