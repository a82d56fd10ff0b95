"""Local feature selection: every cell of every local pyramid level is a candidate; keep the best.

Official DELG: candidates scoring at least the attention threshold, then the top K by score across
all scales, with optional NMS on the receptive-field boxes (mapped to the image as read, so boxes
from different scales compete). An NMS IoU of 1.0 disables NMS (nothing overlaps more than fully),
as in the official configuration.
"""

import torch
import torch.nn.functional as F
import torchvision

from tools.extraction.geometry import cell_locations, official_cell_locations

CANDIDATE_FIELDS = ("locations", "boxes", "scales", "scores", "descriptors")


def level_candidates(
    attention,
    local,
    scale,
    geometry,
    image_size,
    network_size,
    prepared_size=None,
    locations="pixel_centres",
):
    """One pyramid level's cells as candidate rows.

    attention: [h, w] scores; local: [d, h, w] descriptors (not normalised); scale: the pyramid
    scale s; geometry: (receptive_field, stride, padding); image_size / network_size /
    prepared_size: (height, width) of the image as read, of this level's network input and of the
    image the pyramid started from (after MAX_IMAGE_SIZE; needed by ``locations="official"``).
    locations: see tools.extraction.geometry. Returns a dict of CANDIDATE_FIELDS tensors with one
    row per cell.
    """
    height, width = attention.shape
    device = attention.device
    if locations == "official":
        points, boxes = official_cell_locations(
            height, width, geometry, scale, image_size, prepared_size, device=device
        )
    else:
        points, boxes = cell_locations(
            height, width, geometry, image_size, network_size, device=device
        )
    return {
        "locations": points,
        "boxes": boxes,
        "scales": torch.full((height * width,), float(scale), device=device),
        "scores": attention.reshape(-1),
        "descriptors": local.flatten(1).T,
    }


def top_after_nms(boxes, scores, iou, count):
    """The first ``count`` boxes greedy NMS keeps, for boxes sorted by decreasing score (indices
    into them).

    Greedy NMS decides each box from the higher-scoring boxes alone, so NMS over the best m boxes
    keeps exactly what NMS over all would keep among them: grow m until it yields count boxes. This
    avoids the quadratic cost of NMS over all ~25,000 candidates of a 1024 px image when nearly
    nothing overlaps enough (IoU 0.98: seconds).
    """
    prefix = min(len(scores), 2 * count)
    while True:
        kept = torchvision.ops.nms(boxes[:prefix], scores[:prefix], iou)
        if len(kept) >= count or prefix == len(scores):
            return kept[:count]
        prefix = min(len(scores), 4 * prefix)


def select_local_features(candidates, threshold, max_features, nms_iou=1.0):
    """Select features from a list of level_candidates dicts.

    Returns locations [n, 2] (x, y), scales [n], scores [n] and L2-normalised descriptors [n, d],
    sorted by decreasing score, n <= max_features.
    """
    merged = {
        field: torch.cat([level[field] for level in candidates]) for field in CANDIDATE_FIELDS
    }
    keep = torch.nonzero(merged["scores"] >= threshold).squeeze(1)
    # A stable sort makes ties resolve by position, so every process selects the same features.
    keep = keep[torch.sort(merged["scores"][keep], descending=True, stable=True).indices]
    if nms_iou < 1.0:
        keep = keep[
            top_after_nms(merged["boxes"][keep], merged["scores"][keep], nms_iou, max_features)
        ]
    keep = keep[:max_features]
    return {
        "locations": merged["locations"][keep],
        "scales": merged["scales"][keep],
        "scores": merged["scores"][keep],
        "descriptors": F.normalize(merged["descriptors"][keep], dim=1),
    }
