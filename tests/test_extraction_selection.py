import torch
import torchvision

from tools.extraction.selection import level_candidates
from tools.extraction.selection_official import select_local_features, top_after_nms

GEOMETRY = (7, 4, 3)  # receptive field, stride, padding: the centre of cell (r, c) is (4c, 4r)


def _level(scores, scale, dim=3, seed=0):
    scores = torch.tensor(scores, dtype=torch.float32)
    height, width = scores.shape
    local = torch.randn(dim, height, width, generator=torch.Generator().manual_seed(seed)) * 5
    # image whose resize by `scale` gives h*4 x w*4
    size = (round(height * 4 / scale), round(width * 4 / scale))
    return level_candidates(
        scores, local, scale, GEOMETRY, image_size=size, network_size=(height * 4, width * 4)
    )


def test_candidates_hold_one_row_per_cell_with_level_scale_and_image_locations():
    level = _level([[1.0, 2.0], [3.0, 4.0]], scale=0.5)
    assert level["scores"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert level["scales"].tolist() == [0.5] * 4
    # cell (1, 0): centre (0, 4) in the network input, image twice as large: ((0 + .5) * 2 - .5, (4
    # + .5) * 2 - .5)
    assert level["locations"][2].tolist() == [0.5, 8.5]
    assert level["descriptors"].shape == (4, 3)


def test_threshold_then_top_k_across_scales_sorted_by_score():
    levels = [_level([[1.0, 9.0], [3.0, 0.5]], scale=1.0), _level([[8.0, 2.0]], scale=0.5, seed=1)]
    selected = select_local_features(levels, threshold=2.0, max_features=3, nms_iou=1.0)
    # 2.0 passes the threshold but falls outside the top 3
    assert selected["scores"].tolist() == [9.0, 8.0, 3.0]
    assert selected["scales"].tolist() == [1.0, 0.5, 1.0]
    assert selected["locations"].tolist() == [[4.0, 0.0], [0.5, 0.5], [0.0, 4.0]]


def test_threshold_is_inclusive_and_can_leave_nothing():
    levels = [_level([[1.0, 2.0]], scale=1.0)]
    assert select_local_features(levels, threshold=2.0, max_features=10)["scores"].tolist() == [2.0]
    empty = select_local_features(levels, threshold=5.0, max_features=10)
    assert empty["descriptors"].shape == (0, 3) and empty["locations"].shape == (0, 2)


def test_descriptors_are_l2_normalised_copies_of_the_selected_cells():
    level = _level([[1.0, 5.0, 3.0]], scale=1.0)
    selected = select_local_features([level], threshold=0.0, max_features=2)
    assert torch.allclose(selected["descriptors"].norm(dim=1), torch.ones(2))
    expected = level["descriptors"][[1, 2]]
    assert torch.allclose(selected["descriptors"], expected / expected.norm(dim=1, keepdim=True))


def test_nms_suppresses_overlapping_receptive_fields():
    # Boxes of neighbouring cells (stride 4, rf 7: 6 x 6 px boxes) overlap by 2 x 6 px: IoU 12 / 60
    # = 0.2.
    fine = _level([[5.0, 4.0, 3.0]], scale=1.0)
    selected = select_local_features([fine], threshold=0.0, max_features=10, nms_iou=0.1)
    # cell 1 overlaps cell 0; cell 2 overlaps only cell 1
    assert selected["scores"].tolist() == [5.0, 3.0]
    kept = select_local_features([fine], threshold=0.0, max_features=10, nms_iou=0.3)
    assert kept["scores"].tolist() == [5.0, 4.0, 3.0]
    disabled = select_local_features([fine], threshold=0.0, max_features=10, nms_iou=1.0)
    assert disabled["scores"].tolist() == [5.0, 4.0, 3.0]


def test_ties_resolve_by_position_so_selection_is_reproducible():
    level = _level([[1.0, 1.0, 1.0, 1.0]], scale=1.0)
    selected = select_local_features([level], threshold=0.0, max_features=2)
    assert selected["locations"][:, 0].tolist() == [0.0, 4.0]


def test_nms_compares_boxes_from_different_scales_in_the_image_frame():
    # The same image region at scale 1 and 0.5: cell (0, 0) of the coarse level covers cells (0,
    # 0)..(1, 1) of the fine one; a weaker coarse box that contains the strongest fine box is
    # suppressed.
    fine = _level([[5.0, 1.0], [1.0, 1.0]], scale=1.0)
    coarse = _level([[4.0]], scale=0.5)
    selected = select_local_features([fine, coarse], threshold=2.0, max_features=10, nms_iou=0.1)
    assert selected["scales"].tolist() == [1.0]
    both = select_local_features([fine, coarse], threshold=2.0, max_features=10, nms_iou=1.0)
    assert both["scales"].tolist() == [1.0, 0.5]


def test_nms_over_the_best_boxes_keeps_what_nms_over_all_keeps():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3000, 2, generator=generator) * 200
    boxes = torch.cat(
        [corners, corners + 10 + torch.rand(3000, 2, generator=generator) * 40], dim=1
    )
    scores = torch.sort(torch.rand(3000, generator=generator), descending=True).values
    for iou, count in (
        (0.98, 50),
        (0.3, 50),
        (0.1, 400),
    ):  # almost nothing / much / most suppressed
        everything = torchvision.ops.nms(boxes, scores, iou)
        assert torch.equal(top_after_nms(boxes, scores, iou, count), everything[:count])
