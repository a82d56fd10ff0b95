"""Official extraction mode (EXTRACT.RESIZE / SIZE_ROUNDING / MIN_SIZE / LOCATIONS) against the
official rules: TensorFlow's resize ops and tf.round are the ground truth for the pyramid, and a
straightforward reference written here from the official extractor's rules checks a whole
extraction (counts, locations, scores, descriptors, global descriptor) on odd-sized images."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_cfg
from datasets.transforms import resized_size
from tools.extraction.resize import pyramid_size, resize_image
from tools.extraction.runner import build_extractor
from tools.extraction.sources import PathImages, prepare_image

OFFICIAL_SCALES = [0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0]
GLOBAL_SCALES = [0.70710677, 1.0, 1.4142135]
RESIZE_OPS = ("bilinear", "bilinear_legacy")


def _tf():
    return pytest.importorskip("tensorflow")


def _tf_resize(tf, images_nhwc, size, mode):
    if mode == "bilinear":
        return tf.image.resize(images_nhwc, size, method="bilinear", antialias=False)
    return tf.compat.v1.image.resize_bilinear(
        images_nhwc, size, align_corners=False, half_pixel_centers=False
    )


@pytest.mark.parametrize("mode", RESIZE_OPS)
def test_resize_variants_equal_tensorflow(mode):
    tf = _tf()
    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 3, 37, 53)).astype(np.float32)
    sizes = [(9, 13), (13, 19), (18, 26), (26, 37), (52, 75), (74, 106), (37, 20), (1, 1), (2, 3)]
    nhwc = tf.constant(image.transpose(0, 2, 3, 1))
    for size in sizes:
        ours = resize_image(torch.from_numpy(image), size, mode).numpy()
        expected = _tf_resize(tf, nhwc, size, mode).numpy().transpose(0, 3, 1, 2)
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() < 2e-6, (mode, size)
    legacy, half_pixel = (
        resize_image(torch.from_numpy(image), (18, 26), m).numpy() for m in RESIZE_OPS
    )
    assert np.abs(legacy - half_pixel).max() > 0.05  # the two variants really differ


def test_half_even_level_sizes_are_tf_round_of_float32_products():
    tf = _tf()
    sides = np.arange(1, 260)
    for scale in OFFICIAL_SCALES:
        expected = tf.cast(
            tf.round(tf.constant(sides, tf.float32) * tf.constant(scale, tf.float32)), tf.int32
        ).numpy()
        ours = np.array([pyramid_size(side, side, scale, "half_even")[0] for side in sides])
        assert np.array_equal(ours, np.maximum(expected, 1)), scale
    # the ties where the two roundings part: 37 * 0.5 and 53 * 0.5, 10 * 0.25
    assert pyramid_size(37, 53, 0.5, "half_even") == (18, 26)
    assert pyramid_size(37, 53, 0.5, "half_up") == (19, 27)
    assert pyramid_size(10, 10, 0.25, "half_even") == (2, 2)


def test_max_image_size_step_rounds_like_python_and_never_upscales():
    assert resized_size(73, 100, 50, "half_even") == (36, 50)  # round(36.5) == 36
    assert resized_size(73, 100, 50, "half_up") == (37, 50)
    assert resized_size(20, 30, 1024, "half_even") == (20, 30)
    small = np.zeros((20, 30, 3), np.uint8)
    assert prepare_image(small, 1024, "half_even", min_size=10).shape == (20, 30, 3)
    assert min(prepare_image(small, 1024).shape[:2]) == 32  # ours upscales small images


# ------------------------------------------------------------------------ the official reference
def _empty_map(stem, height, width):
    """Whether a TF stem gives no output cell: keras conv1 'same' then a 'valid' 3x3/2 max-pool."""
    if stem != "keras":
        return False
    return any((-(-side // 2) - 3) // 2 + 1 < 1 for side in (height, width))


def official_reference(tf, model, image, settings):
    """The official extractor's rules, step by step, around our network."""
    height, width = image.shape[:2]
    factors = np.ones(2)
    largest = max(height, width)
    if largest > settings["max_image_size"]:
        factor = settings["max_image_size"] / largest
        new = (int(round(width * factor)), int(round(height * factor)))
        image = np.array(Image.fromarray(image).resize(new, resample=Image.BILINEAR))
        factors = np.array([new[1] / height, new[0] / width])
    if min(image.shape[:2]) < 10:
        return None
    tensor = (tf.cast(tf.constant(image), tf.float32) - 128.0) / 128.0
    tensor = tensor[None]
    shape = tf.cast(tf.shape(tensor)[1:3], tf.float32)
    boxes, scores, descriptors, scales, global_sum = [], [], [], [], None
    for scale in OFFICIAL_SCALES:
        size = tf.cast(tf.round(shape * tf.constant(scale, tf.float32)), tf.int32).numpy()
        if _empty_map(settings["stem"], *size):
            continue
        resized = _tf_resize(tf, tensor, size, settings["resize"]).numpy()
        with torch.inference_mode():
            out = model.extract(torch.from_numpy(resized).permute(0, 3, 1, 2))
        if scale in GLOBAL_SCALES:
            embedding = out["global"][0].numpy()
            embedding = embedding / np.linalg.norm(embedding)
            global_sum = embedding if global_sum is None else global_sum + embedding
        attention = out["attention"][0, 0].numpy().reshape(-1)
        local = out["local"][0].numpy()
        h, w = local.shape[1:]
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        points = np.stack([ys.reshape(-1), xs.reshape(-1)] * 2, axis=1).astype(np.float32)
        cell_boxes = 32.0 * points + np.float32([-145, -145, 145, 145])
        keep = attention >= settings["threshold"]
        boxes.append(cell_boxes[keep] / np.float32(scale))
        scores.append(attention[keep])
        descriptors.append(local.reshape(len(local), -1).T[keep])
        scales.append(np.full(keep.sum(), 1.0 / np.float32(scale), np.float32))
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    order = np.argsort(-scores, kind="stable")[: settings["max_features"]]
    centres = (boxes[order, :2] + boxes[order, 2:]) / 2
    selected = np.concatenate(descriptors)[order]
    return {
        "locations_yx": centres / factors,
        "scales": np.concatenate(scales)[order],
        "scores": scores[order],
        "descriptors": selected / np.linalg.norm(selected, axis=1, keepdims=True),
        "global": global_sum / np.linalg.norm(global_sum),
    }


def _official_cfg(stem, resize, max_image_size):
    return load_cfg(
        "",
        [
            "MODEL.DEPTH", "50", "RESNET.WIDTH_PER_GROUP", "8", "RESNET.STEM", stem,
            "MODEL.NUM_CLASSES", "0", "MODEL.HEADS.REDUCTION_DIM", "32",
            "MODEL.LOCAL.ATTENTION_DIM", "16", "MODEL.LOCAL.DESCRIPTOR_DIM", "16",
            "INPUT.MEAN", f"[{128 / 255}, {128 / 255}, {128 / 255}]",
            "INPUT.STD", f"[{128 / 255}, {128 / 255}, {128 / 255}]",
            "EXTRACT.LOCAL_SCALES", str(OFFICIAL_SCALES),
            "EXTRACT.GLOBAL_SCALES", str(GLOBAL_SCALES),
            "EXTRACT.RESIZE", resize, "EXTRACT.SIZE_ROUNDING", "half_even",
            "EXTRACT.MIN_SIZE", "10", "EXTRACT.LOCATIONS", "official",
            "EXTRACT.MAX_IMAGE_SIZE", str(max_image_size), "EXTRACT.MAX_FEATURES", "60",
            "EXTRACT.FLOAT16", "False", "EXTRACT.ATTENTION_THRESHOLD", "0.0",
            "DEVICE", "cpu", "DATA_LOADER.NUM_WORKERS", "0",
        ],
    )  # fmt: skip


def _picture(height, width, seed):
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 4 + 2, width // 4 + 2, 3))
    return np.array(Image.fromarray(coarse.astype(np.uint8)).resize((width, height)))


@pytest.mark.parametrize(
    "stem, resize, size, max_image_size",
    [("keras", "bilinear", (37, 53), 64), ("slim", "bilinear_legacy", (73, 100), 50)],
)
def test_official_mode_extracts_what_the_official_rules_give(
    tmp_path, stem, resize, size, max_image_size
):
    tf = _tf()
    cfg = _official_cfg(stem, resize, max_image_size)
    extractor, provenance = build_extractor(cfg, torch.device("cpu"), show_progress=False)
    recorded = provenance["config"]["EXTRACT"]
    assert (recorded["RESIZE"], recorded["SIZE_ROUNDING"], recorded["MIN_SIZE"]) == (
        resize,
        "half_even",
        10,
    )
    assert recorded["LOCATIONS"] == "official"
    image = _picture(*size, seed=3)
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    item = extractor.prepared(PathImages(["image"], [str(path)]))[0]
    # a threshold inside the score range, so that both the threshold and the top-K decide
    probe = extractor.extract_item(item)["local"]["scores"]
    threshold = float(np.quantile(probe, 0.3))
    extractor.settings = dataclasses.replace(extractor.settings, attention_threshold=threshold)
    ours = extractor.extract_item(item)
    settings = {
        "max_image_size": max_image_size,
        "stem": stem,
        "resize": resize,
        "threshold": threshold,
        "max_features": 60,
    }
    expected = official_reference(tf, extractor.model, image, settings)
    local = ours["local"]
    assert 10 < len(local["scores"]) == len(expected["scores"]) <= 60
    np.testing.assert_allclose(local["scores"], expected["scores"], rtol=1e-4)
    np.testing.assert_allclose(local["locations"], expected["locations_yx"][:, ::-1], rtol=1e-5)
    np.testing.assert_allclose(1.0 / local["scales"], expected["scales"], rtol=1e-6)
    np.testing.assert_allclose(local["descriptors"], expected["descriptors"], atol=1e-4)
    np.testing.assert_allclose(ours["global"], expected["global"], atol=1e-5)


def test_official_mode_tiny_images_give_no_features_and_tiny_levels_are_skipped(tmp_path):
    tf = _tf()
    cfg = _official_cfg("keras", "bilinear", 64)
    extractor, _ = build_extractor(cfg, torch.device("cpu"), show_progress=False)
    names = ["narrow", "small"]
    images = {"narrow": _picture(9, 40, seed=1), "small": _picture(12, 14, seed=2)}
    for name in names:
        Image.fromarray(images[name]).save(tmp_path / f"{name}.png")
    prepared = extractor.prepared(PathImages(names, [str(tmp_path / f"{n}.png") for n in names]))
    narrow, small = (extractor.extract_item(prepared[i]) for i in range(2))
    assert tuple(prepared[0]["pixels"].shape[1:]) == (9, 40)  # not upscaled
    assert not narrow["global"].any() and len(narrow["local"]["scores"]) == 0
    assert narrow["local"]["descriptors"].shape == (0, 16)
    # 12 x 14: the 0.25 and 0.354 levels (3 x 4, 4 x 5) have no cell after the 'valid' max-pool
    settings = {"max_image_size": 64, "stem": "keras", "resize": "bilinear"}
    expected = official_reference(
        tf, extractor.model, images["small"], {**settings, "threshold": 0.0, "max_features": 60}
    )
    small = extractor.extract_item(prepared[1])
    assert len(small["local"]["scores"]) == len(expected["scores"]) > 0
    np.testing.assert_allclose(1.0 / small["local"]["scales"], expected["scales"], rtol=1e-6)
    assert min(small["local"]["scales"]) == pytest.approx(0.5)
    np.testing.assert_allclose(small["global"], expected["global"], atol=1e-5)
