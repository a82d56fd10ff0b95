"""Where a local feature lies: feature-map cell -> receptive-field box -> pixels of the image as
read.

Coordinates are (x, y) pixel indices: pixel (0, 0) is the top-left pixel and its centre is at 0.0. A
cell's receptive field in the network input is ``stride * index - padding`` to
``... + receptive_field - 1`` (the official DELG box). The network input is the image as read after
two resizes (the ``EXTRACT.MAX_IMAGE_SIZE`` limit and the pyramid scale); both are folded into one
factor per axis, ``network size / image size``, taken from the actual integer sizes so that rounding
of the resized sizes is accounted for.

Mapping back through a resize by factor f uses pixel centres, ``(p + 0.5) / f - 0.5``, the
convention of OpenCV, PIL and ``F.interpolate(align_corners=False)``. The official code divides by
the scale only; the two differ by ``0.5 * (1 / f - 1)`` pixels (1.5 px at scale 0.25), far below
spatial-verification tolerances, but ours keeps a 2x upscaled image's keypoints at exactly twice the
coordinates (+0.5) of the original's.

``EXTRACT.LOCATIONS official`` stores the official keypoints instead: the cell centre
``stride * index`` (the official boxes use rf 291 and padding 145 = (rf - 1) / 2 whatever the
backbone's actual padding), divided by the float32 pyramid scale and by the
``EXTRACT.MAX_IMAGE_SIZE`` resize factor (resized / read size per axis) -- the official (y, x)
swapped to (x, y).
"""

import torch

from modeling.geometry import map_side  # noqa: F401  (re-exported: its home is modeling)

LOCATION_MODES = ("pixel_centres", "official")


def cell_boxes(height, width, receptive_field, stride, padding, device=None):
    """Receptive-field boxes (x1, y1, x2, y2) of an [height, width] feature map, in network-input
    pixels.

    Rows follow the map's row-major order (row 0: cells (0, 0), (0, 1), ...), so they line up with
    ``feature_map.flatten(-2)``.
    """
    rows = torch.arange(height, dtype=torch.float32, device=device) * stride - padding
    cols = torch.arange(width, dtype=torch.float32, device=device) * stride - padding
    y1, x1 = torch.meshgrid(rows, cols, indexing="ij")
    x1, y1 = x1.reshape(-1), y1.reshape(-1)
    extent = receptive_field - 1
    return torch.stack([x1, y1, x1 + extent, y1 + extent], dim=1)


def box_centres(boxes):
    """Centres (x, y) of [n, 4] boxes (x1, y1, x2, y2)."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def resize_factors(image_size, network_size):
    """Per-axis factors (fx, fy) from the image as read to the network input; sizes are
    (height, width)."""
    (image_height, image_width), (network_height, network_width) = image_size, network_size
    return network_width / image_width, network_height / image_height


def network_to_image(points, factors):
    """Map [n, 2k] coordinates (x, y, x, y, ...) from network-input pixels to pixels of the image as
    read."""
    fx, fy = factors
    divisor = torch.tensor([fx, fy], dtype=points.dtype, device=points.device).repeat(
        points.shape[1] // 2
    )
    return (points + 0.5) / divisor - 0.5


def crop_offset(crop_box):
    """Top-left pixel of a query crop [x1, y1, x2, y2]; coordinates are rounded like PIL's
    ``Image.crop``."""
    return round(crop_box[0]), round(crop_box[1])


def crop_to_full_image(locations, crop_box):
    """Map [n, 2] (x, y) locations from a query crop's frame to the full image (e.g. for
    drawing)."""
    offset_x, offset_y = crop_offset(crop_box)
    offset = torch.tensor([offset_x, offset_y], dtype=locations.dtype, device=locations.device)
    return locations + offset


def cell_locations(height, width, geometry, image_size, network_size, device=None):
    """Keypoint locations (x, y) and receptive-field boxes of every cell, in pixels of the image as
    read.

    geometry: (receptive_field, stride, padding) of the local feature map; image_size and
    network_size are
    (height, width) of the image as read and of the network input at this pyramid level.
    """
    receptive_field, stride, padding = geometry
    boxes = cell_boxes(height, width, receptive_field, stride, padding, device=device)
    factors = resize_factors(image_size, network_size)
    image_boxes = network_to_image(boxes, factors)
    return box_centres(image_boxes), image_boxes


def official_cell_locations(height, width, geometry, scale, image_size, prepared_size, device=None):
    """Official DELG keypoints (x, y) and boxes of every cell, in pixels of the image as read.

    The box of a cell is centred on ``stride * index`` with side ``receptive_field``; both are
    divided by the float32 scale, then by the MAX_IMAGE_SIZE resize factors (prepared_size: the
    (height, width) the pyramid started from; image_size: the image as read).
    """
    receptive_field, stride, _ = geometry
    boxes = cell_boxes(height, width, receptive_field, stride, (receptive_field - 1) / 2, device)
    boxes = boxes / torch.tensor(scale, dtype=torch.float32, device=device)
    divisor = torch.tensor(resize_factors(image_size, prepared_size), dtype=torch.float64)
    divisor = divisor.to(device)
    centres = (box_centres(boxes).double() / divisor).float()
    return centres, (boxes.double() / divisor.repeat(2)).float()
