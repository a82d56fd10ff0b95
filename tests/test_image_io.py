import numpy as np
import pytest
from PIL import Image

from datasets.image_io import ImageReadError, read_image


def _two_colour_image(height=8, width=12):
    """Top half red, bottom half blue: orientation mistakes are visible."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2] = (255, 0, 0)
    pixels[height // 2 :] = (0, 0, 255)
    return pixels


def test_rgb_png_round_trips_exactly(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = read_image(tmp_path / "x.png")
    assert image.dtype == np.uint8 and image.shape == (5, 7, 3)
    np.testing.assert_array_equal(image, pixels)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _two_colour_image()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(
        tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=98, subsampling=0
    )
    image = read_image(tmp_path / "rotated.jpg")
    assert image.shape == (12, 8, 3)
    expected = np.rot90(pixels, k=-1)  # clockwise: the red top ends up on the right
    assert np.abs(image.astype(int) - expected).max() < 40
    assert image[6, 7, 0] > 200 and image[6, 0, 2] > 200


def test_cmyk_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((4, 4, 4), dtype=np.uint8)
    cmyk[:, :2] = (0, 255, 255, 0)  # red
    cmyk[:, 2:] = (0, 0, 0, 255)  # black
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.tif")
    image = read_image(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[0, 3], [0, 0, 0])


def test_cmyk_jpeg_colours_are_not_inverted(tmp_path):
    cmyk = np.zeros((8, 8, 4), dtype=np.uint8)
    cmyk[...] = (0, 255, 255, 0)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image[4, 4, 0] > 230 and image[4, 4, 1] < 25 and image[4, 4, 2] < 25


def test_grayscale_and_sixteen_bit_become_three_equal_channels(tmp_path):
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    image = read_image(tmp_path / "gray.png")
    assert image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[..., 0], gray)
    np.testing.assert_array_equal(image[..., 2], gray)

    # full 16-bit range, which PIL's own convert would clip to 255
    deep = gray.astype(np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png")[..., 1], gray)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    image = read_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(image[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(image[0, 1], [255, 255, 255])  # transparent blue shows as white
    assert np.all(np.abs(image[0, 2].astype(int) - 127) <= 1)


def test_palette_with_transparency_is_composited_on_white(tmp_path):
    palette_image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P")
    palette_image.putpalette([10, 20, 30, 200, 0, 0] + [0] * 762)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "palette.png", transparency=0)
    image = read_image(tmp_path / "palette.png")
    np.testing.assert_array_equal(image[0], [[255, 255, 255], [200, 0, 0]])


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "directory"])
def test_bad_files_raise_image_read_error_naming_path_and_reason(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image at all" * 10)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(ImageReadError) as caught:
        read_image(path)
    assert isinstance(caught.value, ValueError)
    assert str(path) in str(caught.value) and caught.value.reason
    expected_reason = {
        "missing": "does not exist",
        "empty": "empty",
        "directory": "not a regular file",
    }
    if kind in expected_reason:
        assert expected_reason[kind] in caught.value.reason
