"""One image -> its global descriptor and local features, with one network pass per pyramid scale.

The scales are the union of the global and the local scales. At each scale the model runs once and
computes only what that scale is for: block3 + the local heads at local scales, block4 + the global
head at global scales, both from one block3 map at scales that are both (``model.extract`` continues
block4 from the block3 it computed).

Global descriptor (official DELG): each scale's embedding L2-normalised, summed over the scales,
normalised again. Local features: every cell of every local level is a candidate;
tools.extraction.selection keeps the best.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tools.extraction.selection import level_candidates, select_local_features


@dataclass(frozen=True)
class ExtractionSettings:
    """What to extract from each image; an empty scale list switches that descriptor off."""

    global_scales: tuple = (0.7071, 1.0, 1.4142)
    local_scales: tuple = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
    attention_threshold: float = 454.6
    max_features: int = 1000
    nms_iou: float = 1.0

    def __post_init__(self):
        for scale in (*self.global_scales, *self.local_scales):
            if not scale > 0:
                raise ValueError(f"pyramid scales must be positive, got {scale}")
        if not self.global_scales and not self.local_scales:
            raise ValueError("nothing to extract: no global and no local scales")
        if self.max_features < 1:
            raise ValueError(
                f"the number of local features must be at least 1, got {self.max_features}"
            )


def pyramid_size(height, width, scale):
    """Network-input size (height, width) at a pyramid scale, at least one pixel per side."""
    return max(1, math.floor(height * scale + 0.5)), max(1, math.floor(width * scale + 0.5))


def resize_image(image, size):
    """Bilinear resize of a [1, 3, H, W] float image; antialiased, so downscaling does not alias."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def run_pyramid(model, image, global_scales, local_scales):
    """One model pass per scale over a normalised [1, 3, H, W] image.

    Returns (global descriptor [D] L2-normalised or None, local levels): each level is a dict with
    ``scale``, ``network_size`` (height, width), ``attention`` [h, w] and ``local`` [d, h, w].
    """
    height, width = image.shape[-2:]
    global_sum, levels = None, []
    for scale in sorted(set(global_scales) | set(local_scales)):
        want_global, want_local = scale in global_scales, scale in local_scales
        size = pyramid_size(height, width, scale)
        outputs = model.extract(
            resize_image(image, size), want_global=want_global, want_local=want_local
        )
        if want_global:
            embedding = F.normalize(outputs["global"][0], dim=0)
            global_sum = embedding if global_sum is None else global_sum + embedding
        if want_local:
            levels.append(
                {
                    "scale": scale,
                    "network_size": size,
                    "attention": outputs["attention"][0, 0],
                    "local": outputs["local"][0],
                }
            )
    global_descriptor = None if global_sum is None else F.normalize(global_sum, dim=0)
    return global_descriptor, levels


def select_from_levels(levels, image_size, geometry, settings):
    """Local features (tensors, see selection.select_local_features) from run_pyramid's local
    levels."""
    candidates = [
        level_candidates(
            level["attention"],
            level["local"],
            level["scale"],
            geometry,
            image_size,
            level["network_size"],
        )
        for level in levels
    ]
    return select_local_features(
        candidates, settings.attention_threshold, settings.max_features, settings.nms_iou
    )


def extract_image(model, image, image_size, geometry, settings):
    """Features of one image.

    image: normalised [1, 3, H, W] tensor on the model's device, already resized for MAX_IMAGE_SIZE;
    image_size: (height, width) of the image as read (locations are given in its pixels);
    geometry: (receptive_field, stride, padding) of the local map.
    Returns {"global": [D] float32 array or None, "local": dict of arrays (see selection) or None}.
    """
    with torch.inference_mode():
        global_descriptor, levels = run_pyramid(
            model, image, settings.global_scales, settings.local_scales
        )
        local = None
        if settings.local_scales:
            selected = select_from_levels(levels, image_size, geometry, settings)
            local = {field: values.float().cpu().numpy() for field, values in selected.items()}
        if global_descriptor is not None:
            global_descriptor = global_descriptor.float().cpu().numpy()
    return {"global": global_descriptor, "local": local}
