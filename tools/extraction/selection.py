"""Local feature selection: every cell of every local pyramid level is a candidate; a selection
rule keeps the best.

A rule (``EXTRACT.SELECTION``) is a SelectionRule subclass in its own module, registered with
``@SELECTION_RULES.register("name")`` and imported by tools/extraction/selection_rules.py. It
declares the EXTRACT keys it reads (``keys``: recorded in every store's provenance and compared
only between local features), checks their values (``checks``) and selects from the candidates
(``select``). The official rule: tools/extraction/selection_official.py.
"""

import torch
import torch.nn.functional as F

from core.config import ConfigError
from modeling.registry import Registry
from tools.extraction.geometry import cell_locations, official_cell_locations

CANDIDATE_FIELDS = ("locations", "boxes", "scales", "scores", "descriptors")
SELECTED_FIELDS = ("locations", "scales", "scores", "descriptors")
SELECTION_RULES = Registry("selection rule", "EXTRACT.SELECTION")


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


def merge_candidates(candidates):
    """One dict of CANDIDATE_FIELDS tensors from a list of level_candidates dicts."""
    return {field: torch.cat([level[field] for level in candidates]) for field in CANDIDATE_FIELDS}


def by_score(merged, threshold):
    """Indices of the merged candidates scoring at least threshold, by decreasing score; a stable
    sort makes ties resolve by position, so every process selects the same features."""
    keep = torch.nonzero(merged["scores"] >= threshold).squeeze(1)
    return keep[torch.sort(merged["scores"][keep], descending=True, stable=True).indices]


def selected_rows(merged, keep):
    """The selected features: locations [n, 2] (x, y), scales [n], scores [n] and L2-normalised
    descriptors [n, d] of the merged candidates at indices keep, in that order."""
    selected = {field: merged[field][keep] for field in SELECTED_FIELDS}
    selected["descriptors"] = F.normalize(selected["descriptors"], dim=1)
    return selected


class SelectionRule:
    """What a selection rule declares and does (subclass it; one module per rule).

    keys: the EXTRACT keys the rule reads; checks: {key: (test(value) -> bool, what is expected)};
    select(candidates, values): the selected features (see selected_rows) from a non-empty list of
    level_candidates dicts, values {key: value} of its keys.
    """

    keys = ()
    checks = {}

    def check(self, values):
        """Raise ConfigError naming the first key whose value breaks its check."""
        for key, (test, expected) in self.checks.items():
            if not test(values[key]):
                raise ConfigError(f"EXTRACT.{key} must be {expected}, got {values[key]!r}")

    def select(self, candidates, values):
        raise NotImplementedError
