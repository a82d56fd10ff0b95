import pytest
import torch

from modeling.resnet import ResNet
from tools.extraction.geometry import (
    box_centres,
    cell_boxes,
    cell_locations,
    crop_offset,
    crop_to_full_image,
    map_side,
    network_to_image,
    official_cell_locations,
    resize_factors,
)

RESNET50_BLOCK3 = (291, 16, 145)  # receptive field, stride, padding (DELG reference)


def test_cell_boxes_follow_the_official_formula_in_row_major_order():
    boxes = cell_boxes(2, 3, *RESNET50_BLOCK3)
    # cell (row 1, col 2): x1 = 16 * 2 - 145 = -113, y1 = 16 * 1 - 145 = -129, extent 290
    assert boxes.shape == (6, 4)
    assert boxes[5].tolist() == [-113.0, -129.0, 177.0, 161.0]
    assert boxes[1].tolist() == [-129.0, -145.0, 161.0, 145.0]  # row 0, col 1


def test_centre_is_stride_times_index_when_padding_is_half_the_receptive_field():
    centres = box_centres(cell_boxes(3, 4, *RESNET50_BLOCK3))
    expected = torch.tensor([[16.0 * col, 16.0 * row] for row in range(3) for col in range(4)])
    assert torch.equal(centres, expected)


def test_asymmetric_padding_moves_the_centre():
    # rf 7, stride 4, padding 1: box of cell (0, 2) spans x 7..13, centre 10
    centres = box_centres(cell_boxes(1, 3, 7, 4, 1))
    assert centres[2].tolist() == [10.0, 2.0]


def test_resize_factors_use_actual_sizes_per_axis():
    assert resize_factors((768, 1024), (384, 512)) == (0.5, 0.5)
    fx, fy = resize_factors((100, 300), (71, 212))  # round(0.7071 * size) on each axis
    assert fx == 212 / 300 and fy == 71 / 100


def test_network_to_image_maps_pixel_centres():
    points = torch.tensor([[48.0, 32.0]])
    # downscaled by 4 on both axes: (48 + 0.5) * 4 - 0.5 = 193.5, (32 + 0.5) * 4 - 0.5 = 129.5
    assert network_to_image(points, (0.25, 0.25)).tolist() == [[193.5, 129.5]]
    # upscaled by 2 in x only: (48 + 0.5) / 2 - 0.5 = 23.75
    assert network_to_image(points, (2.0, 1.0)).tolist() == [[23.75, 32.0]]
    boxes = torch.tensor([[-97.0, -113.0, 193.0, 177.0]])
    assert network_to_image(boxes, (0.5, 0.5)).tolist() == [[-193.5, -225.5, 386.5, 354.5]]


def test_cell_locations_through_max_size_resize_and_pyramid_scale():
    # image as read 2048 x 1536 (w x h) -> MAX_IMAGE_SIZE 1024 -> 1024 x 768 -> pyramid 0.5 -> 512 x
    # 384; the network input is 1/4 of the image; cell (row 2, col 3) has its centre at (48, 32) in
    # the network input.
    locations, boxes = cell_locations(
        24, 32, RESNET50_BLOCK3, image_size=(1536, 2048), network_size=(384, 512)
    )
    index = 2 * 32 + 3
    assert locations[index].tolist() == [193.5, 129.5]
    assert boxes[index].tolist() == [
        (-97 + 0.5) * 4 - 0.5,
        (-113 + 0.5) * 4 - 0.5,
        193.0 * 4 + 1.5,
        177.0 * 4 + 1.5,
    ]
    assert torch.allclose(box_centres(boxes), locations)


def test_cell_locations_at_the_identity_scale_are_stride_times_index():
    locations, _ = cell_locations(4, 5, RESNET50_BLOCK3, image_size=(64, 80), network_size=(64, 80))
    assert locations[-1].tolist() == [64.0, 48.0]


def test_crop_offset_rounds_like_pil_and_maps_back_to_the_full_image():
    assert crop_offset([10.5, 11.5, 50.0, 60.0]) == (10, 12)  # Python round(): half to even
    assert crop_offset([3.2, 7.7, 9.0, 9.0]) == (3, 8)
    locations = torch.tensor([[0.0, 0.0], [5.5, 2.0]])
    full = crop_to_full_image(locations, [20, 30, 100, 120])
    assert full.tolist() == [[20.0, 30.0], [25.5, 32.0]]


def test_official_locations_are_stride_times_index_over_scale_and_resize_factor():
    # keras-stem geometry (padding 142): the official centre ignores it, stride * index
    locations, boxes = official_cell_locations(
        2, 3, (291, 32, 142), 0.5, image_size=(75, 100), prepared_size=(36, 50)
    )
    fx, fy = 50 / 100, 36 / 75
    expected = torch.tensor([[32.0 * col / 0.5 / fx, 32.0 * row / 0.5 / fy] for row in range(2)
                             for col in range(3)])  # fmt: skip
    assert torch.allclose(locations, expected)
    low, high = (32 - 145) / 0.5, (32 + 145) / 0.5  # cell (1, 1): centre 32, half-side 145
    assert torch.allclose(boxes[4], torch.tensor([low / fx, low / fy, high / fx, high / fy]))


@pytest.mark.parametrize("stem", ["torchvision", "keras", "slim"])
def test_map_side_predicts_the_local_map_of_each_stem(stem):
    backbone = ResNet(depth=18, width_per_group=8, local_stride=32, stem=stem).eval()
    modules = backbone.local_path_modules()
    for side in range(1, 40):
        predicted = map_side(modules, side)
        with torch.no_grad():
            try:
                block3, _ = backbone(torch.zeros(1, 3, side, side + 1))
                actual = block3.shape[-2]
            except RuntimeError:  # the 'valid' max-pool refuses a map smaller than its kernel
                actual = 0
        assert predicted == actual, (stem, side)
    assert (map_side(modules, 4) == 0) == (stem == "keras")  # keras: levels under 5 px are empty
