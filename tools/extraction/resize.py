"""Pyramid levels: the size of a level and the bilinear resize that makes it (EXTRACT.RESIZE,
EXTRACT.SIZE_ROUNDING).

Resize variants of a normalised float [B, C, H, W] image:
- ``antialias`` (ours): bilinear with antialiasing (``F.interpolate(antialias=True)``), so that
  downscaling does not alias.
- ``bilinear``: no antialiasing, half-pixel centres, source coordinate
  ``(i + 0.5) * in / out - 0.5``: TensorFlow 2 ``tf.image.resize(method="bilinear")``, the official
  TF2 export.
- ``bilinear_legacy``: no antialiasing, no half-pixel offset, source coordinate ``i * in / out``:
  TensorFlow 1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)``, the TF1-era
  extractor. PyTorch has no such mode.
Both TF variants follow TensorFlow's kernel step by step: the scale ``in / out`` and the source
coordinates in float32, neighbours ``max(floor(src), 0)`` and ``min(ceil(src), in - 1)``, weight
``src - floor(src)``, interpolation along the width first, then along the height.

Level sizes: ``half_up`` (ours) rounds ``side * s`` half up in float64; ``half_even`` is the
official ``tf.round(float32(side) * float32(s))`` (round half to even). A side is at least 1 px.
"""

import numpy as np
import torch
import torch.nn.functional as F

from datasets.transforms import ROUNDINGS, round_side

RESIZE_MODES = ("antialias", "bilinear", "bilinear_legacy")
__all__ = ["RESIZE_MODES", "ROUNDINGS", "pyramid_size", "resize_image"]


def pyramid_size(height, width, scale, rounding="half_up"):
    """Network-input size (height, width) of the pyramid level at ``scale`` of an image."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"size rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if rounding == "half_even":  # tf.round of the float32 product
        sides = [np.float32(side) * np.float32(scale) for side in (height, width)]
    else:
        sides = [side * scale for side in (height, width)]
    return tuple(max(1, round_side(side, rounding)) for side in sides)


def _axis_weights(in_size, out_size, half_pixel, device):
    """(lower, upper, weight) of TensorFlow's bilinear kernel along one axis."""
    scale = torch.tensor(np.float32(in_size) / np.float32(out_size), device=device)
    positions = torch.arange(out_size, dtype=torch.float32, device=device)
    source = (positions + 0.5) * scale - 0.5 if half_pixel else positions * scale
    floor = torch.floor(source)
    lower = floor.clamp(min=0).long()
    upper = torch.ceil(source).clamp(max=in_size - 1).long()
    return lower, upper, source - floor


def _tf_bilinear(image, size, half_pixel):
    height, width = size
    lower, upper, weight = _axis_weights(image.shape[-1], width, half_pixel, image.device)
    left, right = image.index_select(-1, lower), image.index_select(-1, upper)
    rows = left + (right - left) * weight
    lower, upper, weight = _axis_weights(image.shape[-2], height, half_pixel, image.device)
    top, bottom = rows.index_select(-2, lower), rows.index_select(-2, upper)
    return top + (bottom - top) * weight[:, None]


def resize_image(image, size, mode="antialias"):
    """Bilinear resize of a float [B, C, H, W] image to size (height, width) by a RESIZE_MODES
    variant."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    if mode == "antialias":
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    return _tf_bilinear(image, size, half_pixel=mode == "bilinear")
