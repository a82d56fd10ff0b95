"""Decode any image file the datasets may hold into one uint8 RGB array.

Every reader in the framework goes through ``read_image`` so that training, extraction and the
pictures all see the same pixels: EXIF orientation applied (phone photos are often stored sideways),
grayscale / palette / CMYK / 16-bit converted, and alpha composited on white (a transparent
background becomes white, as a browser shows it, rather than whatever colour happened to be stored
under alpha 0). Colour profiles (ICC) are not applied.
"""

import logging
import os

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


class ImageReadError(ValueError):
    """An image that cannot be read; ``path`` and ``reason`` are kept for failure reports."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self):  # keep both fields when the error crosses a worker-process boundary
        return (type(self), (self.path, self.reason))


def read_image(path):
    """Return the image at ``path`` as a uint8 array [H, W, 3] in RGB order; raise ImageReadError
    otherwise."""
    _check_file(path)
    try:
        with Image.open(path) as image:
            image.load()  # decoding is lazy: force it here so that truncated files fail now
            image = _apply_exif_orientation(image, path)
            return _to_rgb_array(image, path)
    except (ImageReadError, MemoryError):  # out of memory is the machine's problem, not the file's
        raise
    except Image.DecompressionBombError as error:
        raise ImageReadError(path, f"too many pixels ({error})") from None
    except Image.UnidentifiedImageError:
        raise ImageReadError(path, "not an image format PIL recognises") from None
    # PIL decoders raise OSError, SyntaxError, ValueError, struct.error, ...
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise ImageReadError(path, f"undecodable ({reason})") from None


def _check_file(path):
    if not os.path.exists(path):
        raise ImageReadError(path, "file does not exist")
    if not os.path.isfile(path):
        raise ImageReadError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty")


def _apply_exif_orientation(image, path):
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block should not cost us the pixels
        logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, error)
        return image


def _to_rgb_array(image, path):
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        return _gray_to_rgb(_high_depth_to_uint8(np.asarray(image), mode))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image.convert("RGBA"))
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except ValueError:
        raise ImageReadError(path, f"unsupported colour mode {mode}") from None


def _high_depth_to_uint8(values, mode):
    """Map 16-bit (or 32-bit int / float) grayscale to 0..255 instead of clipping as PIL's convert
    does."""
    values = values.astype(np.float64)
    if mode in _SIXTEEN_BIT_MODES:
        scaled = values / 257.0
    elif mode == "F" and values.size and values.max() <= 1.0:
        scaled = values * 255.0  # float images in [0, 1]
    elif values.size and values.max() > 255:
        scaled = values / 257.0  # mode "I" from a 16-bit file
    else:
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _gray_to_rgb(gray):
    return np.repeat(gray[:, :, None], 3, axis=2)


def _composite_on_white(rgba_image):
    rgba = np.asarray(rgba_image, dtype=np.float32)
    alpha = rgba[:, :, 3:] / 255.0
    rgb = rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
