"""Pictures: captions stay inside their box and are legible; match lines join the right points;
ranking tiles keep their border colour."""

import numpy as np
import pytest

from tools.vis.matches import INLIER_COLOUR, OUTLIER_COLOUR, draw_matches, side_by_side
from tools.vis.ranking import BORDER, BORDER_COLOURS, tile
from tools.vis.text import put_caption

GREY = 128


@pytest.mark.parametrize("scale", [0.3, 0.5, 0.7])
def test_caption_draws_only_inside_its_box(scale):
    picture = np.full((60, 500, 3), GREY, dtype=np.uint8)
    x0, y0, x1, y1 = put_caption(picture, "177 inliers / 300 putative (degensac)", (6, 30), scale)
    changed = np.argwhere((picture != GREY).any(axis=2))
    assert changed[:, 0].min() == y0 and changed[:, 0].max() == y1
    assert changed[:, 1].min() == x0 and changed[:, 1].max() == x1
    box = picture[y0 : y1 + 1, x0 : x1 + 1]
    assert (box.min(axis=2) > 200).sum() > 20  # white strokes
    assert (box.max(axis=2) == 0).mean() > 0.5  # on black


def test_caption_box_is_clipped_to_the_picture():
    picture = np.full((20, 40, 3), GREY, dtype=np.uint8)
    x0, y0, x1, y1 = put_caption(picture, "a caption much wider than the picture", (2, 15), 0.5)
    assert (x0, y0) == (0, 0) and x1 == 39 and y1 <= 19


def test_match_lines_join_the_matched_points():
    left = np.full((40, 50, 3), 255, dtype=np.uint8)
    right = np.full((30, 60, 3), 255, dtype=np.uint8)
    canvas, offset = side_by_side(left, right)
    assert canvas.shape == (40, 50 + 10 + 60, 3) and offset == 60
    picture = draw_matches(
        left,
        right,
        [[10, 10], [20, 30]],
        [[5, 5], [40, 20]],
        inliers=[True, False],
        show_outliers=True,
    )
    assert (
        tuple(picture[10, 10]) == INLIER_COLOUR and tuple(picture[5, offset + 5]) == INLIER_COLOUR
    )
    assert (
        tuple(picture[30, 20]) == OUTLIER_COLOUR
        and tuple(picture[20, offset + 40]) == OUTLIER_COLOUR
    )
    hidden = draw_matches(
        left, right, [[10, 10], [20, 30]], [[5, 5], [40, 20]], inliers=[True, False]
    )
    assert tuple(hidden[30, 20]) == (255, 255, 255)  # outliers are not drawn unless asked


def test_ranking_tile_keeps_its_border_with_a_caption():
    image = np.zeros((100, 80, 3), dtype=np.uint8)
    result = tile(image, "positive", size=96, caption="#1 57 inl")
    assert result.shape == (96, 96, 3)
    for edge in (result[:BORDER], result[-BORDER:], result[:, :BORDER], result[:, -BORDER:]):
        assert (edge.reshape(-1, 3) == BORDER_COLOURS["positive"]).all()
