"""One image -> its global descriptor and local features, with one network pass per pyramid scale.

The scales are the union of the global and the local scales. At each scale the model runs once and
computes only what that scale is for: block3 + the local heads at local scales, block4 + the global
head at global scales, both from one block3 map at scales that are both (``model.extract`` continues
block4 from the block3 it computed). Level sizes and the resize come from tools.extraction.resize
(EXTRACT.SIZE_ROUNDING, EXTRACT.RESIZE).

Global descriptor (official DELG): each scale's embedding L2-normalised, summed over the scales,
normalised again. Local features: every cell of every local level is a candidate; the selection
rule EXTRACT.SELECTION keeps the best (tools.extraction.selection_rules).

Small images (official rules, EXTRACT.MIN_SIZE > 0): an image with a side under ``min_size`` gives
no features at all (a zero global descriptor, no local features); a level so small that the network
has no output cell (a TF 'valid' max-pool on a map under 3 px) gives none, as TensorFlow's empty map
does; nothing is upscaled (with min_size 0 the image sources upscale small images instead).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tools.extraction.geometry import LOCATION_MODES
from tools.extraction.resize import RESIZE_MODES, ROUNDINGS, pyramid_size, resize_image
from tools.extraction.selection import level_candidates
from tools.extraction.selection_rules import DEFAULT_RULE, selection_rule

__all__ = [
    "SETTINGS_FIELDS",
    "ExtractionSettings",
    "extract_image",
    "pyramid_size",
    "resize_image",
    "run_pyramid",
]


# the selection keys ExtractionSettings holds as fields (EXTRACT key -> field)
SETTINGS_FIELDS = {
    "ATTENTION_THRESHOLD": "attention_threshold",
    "MAX_FEATURES": "max_features",
    "NMS_IOU": "nms_iou",
}


@dataclass(frozen=True)
class ExtractionSettings:
    """What to extract from each image; an empty scale list switches that descriptor off.

    resize, size_rounding, min_size and locations: EXTRACT.RESIZE, SIZE_ROUNDING, MIN_SIZE and
    LOCATIONS (defaults: ours; the official values reproduce the official extractor). selection:
    the rule EXTRACT.SELECTION; attention_threshold, max_features and nms_iou: EXTRACT.ATTENTION_
    THRESHOLD, MAX_FEATURES and NMS_IOU, which the rule may read; selection_options: ((key, value),
    ...) of the rule's other keys. The rule checks the values of its keys.
    """

    global_scales: tuple = (0.7071, 1.0, 1.4142)
    local_scales: tuple = (0.25, 0.3536, 0.5, 0.7071, 1.0, 1.4142, 2.0)
    attention_threshold: float = 454.6
    max_features: int = 1000
    nms_iou: float = 1.0
    resize: str = "antialias"
    size_rounding: str = "half_up"
    min_size: int = 0
    locations: str = "pixel_centres"
    selection: str = DEFAULT_RULE
    selection_options: tuple = ()

    def selection_values(self):
        """{EXTRACT key: value} of the selection keys (what the rule reads from)."""
        fields = {key: getattr(self, field) for key, field in SETTINGS_FIELDS.items()}
        return {**fields, **dict(self.selection_options)}

    def __post_init__(self):
        for scale in (*self.global_scales, *self.local_scales):
            if not scale > 0:
                raise ValueError(f"pyramid scales must be positive, got {scale}")
        if not self.global_scales and not self.local_scales:
            raise ValueError("nothing to extract: no global and no local scales")
        rule, values = selection_rule(self.selection), self.selection_values()
        missing = [key for key in rule.keys if key not in values]
        if missing:
            raise ValueError(
                f"selection rule {self.selection!r} reads EXTRACT.{missing[0]}: give it in "
                "selection_options"
            )
        rule.check({key: values[key] for key in rule.keys})
        for name, value, allowed in (
            ("resize", self.resize, RESIZE_MODES),
            ("size_rounding", self.size_rounding, ROUNDINGS),
            ("locations", self.locations, LOCATION_MODES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be at least 0, got {self.min_size}")


def _has_cells(model, size):
    """Whether the network gives a non-empty local map for an input of size (height, width)."""
    return all(side > 0 for side in model.backbone.local_map_size(size))


def run_pyramid(
    model, image, global_scales, local_scales, resize="antialias", size_rounding="half_up"
):
    """One model pass per scale over a normalised [1, 3, H, W] image.

    Returns (global descriptor [D] L2-normalised or None, local levels): each level is a dict with
    ``scale``, ``network_size`` (height, width), ``prepared_size`` (H, W), ``attention`` [h, w] and
    ``local`` [d, h, w]. Levels without output cells are left out.
    """
    height, width = image.shape[-2:]
    global_sum, levels = None, []
    for scale in sorted(set(global_scales) | set(local_scales)):
        want_global, want_local = scale in global_scales, scale in local_scales
        size = pyramid_size(height, width, scale, size_rounding)
        if not _has_cells(model, size):
            continue
        outputs = model.extract(
            resize_image(image, size, resize), want_global=want_global, want_local=want_local
        )
        if want_global:
            embedding = F.normalize(outputs["global"][0], dim=0)
            global_sum = embedding if global_sum is None else global_sum + embedding
        if want_local:
            levels.append(
                {
                    "scale": scale,
                    "network_size": size,
                    "prepared_size": (height, width),
                    "attention": outputs["attention"][0, 0],
                    "local": outputs["local"][0],
                }
            )
    global_descriptor = None if global_sum is None else F.normalize(global_sum, dim=0)
    return global_descriptor, levels


def select_from_levels(levels, image_size, geometry, settings):
    """Local features (tensors, see selection.select_local_features) from run_pyramid's local
    levels, or None without levels (``prepared_size`` is needed by official locations only)."""
    candidates = [
        level_candidates(
            level["attention"],
            level["local"],
            level["scale"],
            geometry,
            image_size,
            level["network_size"],
            level.get("prepared_size"),
            settings.locations,
        )
        for level in levels
    ]
    if not candidates:
        return None
    return selection_rule(settings.selection).select(candidates, settings.selection_values())


def no_local_features(descriptor_dim):
    """The local features of an image that has none (arrays of zero rows)."""
    return {
        "locations": np.zeros((0, 2), np.float32),
        "scales": np.zeros(0, np.float32),
        "scores": np.zeros(0, np.float32),
        "descriptors": np.zeros((0, descriptor_dim), np.float32),
    }


def extract_image(model, image, image_size, geometry, settings):
    """Features of one image.

    image: normalised [1, 3, H, W] tensor on the model's device, already resized for MAX_IMAGE_SIZE;
    image_size: (height, width) of the image as read (locations are given in its pixels);
    geometry: (receptive_field, stride, padding) of the local map.
    Returns {"global": [D] float32 array or None, "local": dict of arrays (see selection) or None};
    an image under settings.min_size, or without any output cell, has a zero global descriptor and
    no local features.
    """
    global_descriptor, local = None, None
    if min(image.shape[-2:]) >= settings.min_size:
        with torch.inference_mode():
            global_descriptor, levels = run_pyramid(
                model,
                image,
                settings.global_scales,
                settings.local_scales,
                settings.resize,
                settings.size_rounding,
            )
            selected = select_from_levels(levels, image_size, geometry, settings)
        if settings.local_scales and selected is not None:
            local = {field: values.float().cpu().numpy() for field, values in selected.items()}
        if global_descriptor is not None:
            global_descriptor = global_descriptor.float().cpu().numpy()
    if settings.local_scales and local is None:
        local = no_local_features(model.local_descriptor_dim)
    if settings.global_scales and global_descriptor is None:
        global_descriptor = np.zeros(model.global_dim, np.float32)
    return {"global": global_descriptor, "local": local}
