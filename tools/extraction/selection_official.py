"""The official DELG selection rule (``EXTRACT.SELECTION official``, the default).

Candidates scoring at least ``EXTRACT.ATTENTION_THRESHOLD``, then the top ``EXTRACT.MAX_FEATURES``
by score across all scales, with optional NMS on the receptive-field boxes (mapped to the image as
read, so boxes from different scales compete). ``EXTRACT.NMS_IOU`` 1.0 disables NMS (nothing
overlaps more than fully), as in the official configuration.
"""

import torchvision

from tools.extraction.selection import (
    SELECTION_RULES,
    SelectionRule,
    by_score,
    merge_candidates,
    selected_rows,
)


@SELECTION_RULES.register("official")
class OfficialSelection(SelectionRule):
    """Attention threshold, top K across scales, optional NMS."""

    keys = ("ATTENTION_THRESHOLD", "MAX_FEATURES", "NMS_IOU")
    checks = {
        "MAX_FEATURES": (lambda value: value >= 1, "at least 1"),
        "NMS_IOU": (lambda value: 0 < value <= 1, "in (0, 1]"),
    }

    def select(self, candidates, values):
        return select_local_features(
            candidates, values["ATTENTION_THRESHOLD"], values["MAX_FEATURES"], values["NMS_IOU"]
        )


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
    merged = merge_candidates(candidates)
    keep = by_score(merged, threshold)
    if nms_iou < 1.0:
        keep = keep[
            top_after_nms(merged["boxes"][keep], merged["scores"][keep], nms_iou, max_features)
        ]
    return selected_rows(merged, keep[:max_features])
