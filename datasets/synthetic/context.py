"""The photo around a synthetic landmark (render.py): sky, ground and generic
clutter behind it, occluders in front of it. None of it carries a landmark's structure, so it is
what a retrieval model must learn to ignore. OpenCV primitives and numpy array arithmetic; loops run
over drawn elements, never over pixels.
"""

import cv2
import numpy as np

from datasets.synthetic.scenes import AA, hsv_colour


def draw_background(rng, width, height, horizon):
    """Sky, ground and generic clutter (far blocks, trees, posts) that carries no landmark's
    structure."""
    sky_top = np.asarray(
        hsv_colour(rng.uniform(0.5, 0.7), rng.uniform(0.1, 0.6), rng.uniform(0.6, 1.0)), np.float32
    )
    sky_low = np.asarray(
        hsv_colour(rng.uniform(0.0, 0.7), rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)), np.float32
    )
    ground = np.asarray(
        hsv_colour(rng.uniform(0.05, 0.35), rng.uniform(0.05, 0.4), rng.uniform(0.3, 0.6)),
        np.float32,
    )
    horizon = int(np.clip(horizon, height * 0.3, height))
    ramp = np.linspace(0, 1, max(horizon, 1), dtype=np.float32)[:, None, None]
    image = np.empty((height, width, 3), np.float32)
    image[:horizon] = sky_top * (1 - ramp) + sky_low * ramp
    image[horizon:] = (
        ground * np.linspace(1.0, 0.8, height - horizon, dtype=np.float32)[:, None, None]
    )
    image = image.astype(np.uint8)
    for _ in range(int(rng.integers(2, 6))):  # far blocks standing on the horizon
        w, h = int(rng.uniform(0.1, 0.35) * width), int(rng.uniform(0.1, 0.45) * height)
        x = int(rng.uniform(-0.1, 1.0) * width)
        grey = hsv_colour(rng.uniform(), rng.uniform(0, 0.2), rng.uniform(0.4, 0.8))
        cv2.rectangle(image, (x, horizon - h), (x + w, horizon), grey, -1)
    for _ in range(int(rng.integers(0, 4))):  # trees
        x, r = int(rng.uniform(0, width)), int(rng.uniform(0.04, 0.1) * height)
        green = hsv_colour(rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5))
        cv2.circle(image, (x, horizon - r), r, green, -1, AA)
    return cv2.GaussianBlur(image, (0, 0), 0.8)


def _blend(image, label, mask, colour):
    """Cover image and label with one anti-aliased occluder part drawn as 255 into ``mask``."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    window = (slice(y, y + h), slice(x, x + w))
    alpha = mask[window].astype(np.float32)[..., None] / 255.0
    image[window] = image[window] * (1 - alpha) + np.asarray(colour, np.float32) * alpha
    label[window][mask[window] > 127] = 0


def draw_occluders(image, label, rng, count, size):
    """Trees, people, cars and posts in front of the landmark, drawn in place into ``image``
    (float32) and ``label`` (uint8, set to 0 where hidden); ``size`` scales them relative to the
    image height."""
    height, width = label.shape
    for _ in range(count):
        kind = str(rng.choice(["tree", "person", "car", "post"]))
        x = int(rng.uniform(0, width))
        s = rng.uniform(0.6, 1.4) * size * height
        base = int(rng.uniform(0.85, 1.05) * height)
        colour = hsv_colour(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8))
        first, second = np.zeros_like(label), np.zeros_like(label)
        if kind == "tree":
            trunk, crown = int(s * 0.08) + 1, int(s * 0.35) + 2
            cv2.rectangle(first, (x - trunk, base - int(s)), (x + trunk, base), 255, -1)
            for bx, by in rng.normal(0, crown * 0.5, (4, 2)) + [x, base - s]:
                cv2.circle(second, (int(bx), int(by)), crown, 255, -1, AA)
            colours = (
                (70, 50, 35),
                hsv_colour(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.5)),
            )
        elif kind == "person":
            w = int(s * 0.12) + 1
            cv2.rectangle(first, (x - w, base - int(0.45 * s)), (x + w, base), 255, -1)
            cv2.circle(second, (x, base - int(0.45 * s) - w), max(1, int(0.8 * w)), 255, -1, AA)
            colours = (colour, (200, 160, 130))
        elif kind == "car":
            w, h = int(s * 0.5) + 2, int(s * 0.18) + 1
            cv2.rectangle(first, (x - w, base - 2 * h), (x + w, base - h // 2), 255, -1)
            for dx in (-w // 2, w // 2):
                cv2.circle(second, (x + dx, base - h // 2), h // 2 + 1, 255, -1, AA)
            colours = (colour, (25, 25, 25))
        else:
            cv2.line(first, (x, base), (x, base - int(1.3 * s)), 255, max(1, int(s * 0.04)), AA)
            colours = ((45, 45, 50), (45, 45, 50))
        _blend(image, label, first, colours[0])
        _blend(image, label, second, colours[1])
