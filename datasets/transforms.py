"""Image transforms: training augmentation, validation crop, normalisation with channel order,
test-time resize.

Images arrive as uint8 [H, W, 3] RGB arrays (datasets.image_io.read_image). The network input is
float32
[3, H, W], channels in the order the weights expect: torchvision ImageNet weights take RGB, the seed
project's weights take BGR (it decoded with OpenCV) with its own mean and std.
"""

import math

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as F

TRAIN_AREA = (0.08, 1.0)  # official DELG augmentation: crop area fraction ...
TRAIN_ASPECT = (3.0 / 4.0, 4.0 / 3.0)  # ... and aspect ratio, then resize to a square


def to_chw_tensor(image):
    """uint8 [H, W, 3] array -> uint8 [3, H, W] tensor (no copy of the pixels)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


class Normalizer:
    """[..., 3, H, W] RGB (uint8, or float in [0, 1]) -> float32 in ``channel_order``, minus mean,
    over std.

    ``mean`` and ``std`` are per channel on [0, 1] pixels and given in ``channel_order``.
    """

    def __init__(self, mean, std, channel_order="RGB"):
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel order must be 'RGB' or 'BGR', got {channel_order!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(
                f"mean and std need 3 values each (std > 0), got mean {mean} and std {std}"
            )
        self.channel_order = channel_order
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, images):
        images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if self.channel_order == "BGR":
            images = images.flip(-3)
        mean = self.mean.to(images.device)
        std = self.std.to(images.device)
        return (images - mean) / std


def build_normalizer(cfg):
    """The Normalizer of INPUT.MEAN, INPUT.STD and INPUT.CHANNEL_ORDER."""
    return Normalizer(cfg.INPUT.MEAN, cfg.INPUT.STD, cfg.INPUT.CHANNEL_ORDER)


class TrainTransform:
    """Random resized crop (area TRAIN_AREA, aspect TRAIN_ASPECT) to im_size x im_size, optional
    flip, normalise."""

    def __init__(self, im_size, normalizer, flip=False, area=TRAIN_AREA, aspect=TRAIN_ASPECT):
        self.im_size = im_size
        self.normalizer = normalizer
        self.flip = flip
        self.area = area
        self.aspect = aspect

    def __call__(self, image):
        pixels = to_chw_tensor(image)
        top, left, height, width = RandomResizedCrop.get_params(
            pixels, list(self.area), list(self.aspect)
        )
        size = [self.im_size, self.im_size]
        pixels = F.resized_crop(pixels, top, left, height, width, size, antialias=True)
        if self.flip and torch.rand(()) < 0.5:
            pixels = pixels.flip(-1)
        return self.normalizer(pixels)


class ValTransform:
    """Resize the short side to im_size, take the centre im_size x im_size square, normalise."""

    def __init__(self, im_size, normalizer):
        self.im_size = im_size
        self.normalizer = normalizer

    def __call__(self, image):
        pixels = F.resize(to_chw_tensor(image), [self.im_size], antialias=True)
        pixels = F.center_crop(pixels, [self.im_size, self.im_size])
        return self.normalizer(pixels)


ROUNDINGS = ("half_up", "half_even")


def round_side(value, rounding="half_up"):
    """A resized side as an integer: ``half_up`` (ours, floor(value + 0.5)) or ``half_even``
    (Python's ``round``, which the official DELG extractor uses, and ``tf.round``)."""
    if rounding == "half_up":
        return math.floor(value + 0.5)
    if rounding == "half_even":
        return round(float(value))
    raise ValueError(f"size rounding must be one of {ROUNDINGS}, got {rounding!r}")


def resized_size(height, width, max_size, rounding="half_up"):
    """(height, width) after scaling the longest side down to max_size; never upscales."""
    longest = max(height, width)
    if longest <= max_size:
        return height, width
    scale = max_size / longest
    return tuple(max(1, round_side(side * scale, rounding)) for side in (height, width))


def resize_longest_side(image, max_size, rounding="half_up"):
    """Test-time resize of a uint8 [H, W, 3] array so its longest side is at most max_size (PIL
    bilinear, as the official DELG extraction does); images already small enough are returned
    unchanged."""
    height, width = image.shape[:2]
    new_height, new_width = resized_size(height, width, max_size, rounding)
    if (new_height, new_width) == (height, width):
        return image
    resized = Image.fromarray(image).resize((new_width, new_height), resample=Image.BILINEAR)
    return np.array(resized)
