"""Procedural landmark scenes for world.py: facade textures (the photo around them:
context.py).

A landmark is a chain of planar panels, like a facade folded at vertical edges. Its *family* fixes
the global look (palette, wall pattern, silhouette, window grid, panel sizes and folds); the
landmark's own random stream fixes the local structure (window designs, cornice motif, signs with
text, crests, clocks, murals). Distractor landmarks share a family with a test landmark: alike at a
glance, different in the details that local features match. Drawing is OpenCV primitives and numpy
array arithmetic; loops run over drawn elements, never over pixels.
"""

import colorsys
from dataclasses import dataclass

import cv2
import numpy as np

AA = cv2.LINE_AA
FONTS = (
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
)
LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
UNIQUE_KINDS = ("sign", "crest", "rosette", "clock", "mural", "star", "banner", "graffiti")
UNIQUE_WEIGHTS = (0.2, 0.14, 0.12, 0.06, 0.16, 0.1, 0.12, 0.1)


def hsv_colour(hue, saturation, value):
    """An RGB tuple in 0..255 floats, as OpenCV drawing calls take it."""
    return tuple(
        255.0 * c
        for c in colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0), 1), min(max(value, 0), 1))
    )


@dataclass(frozen=True)
class Family:
    """The global appearance a landmark shares with its look-alikes."""

    wall: tuple
    trim: tuple
    glass: tuple
    roof: tuple
    accents: tuple  # four saturated colours for signs, shutters, ornaments
    wall_pattern: str  # plain, brick, stone or stripes
    roofline: str  # flat, gable, stepped, crenel or dome
    floors: int  # floors of the main building
    panel_widths: tuple  # width of each panel / height of the main wall
    panel_extra_floors: tuple  # towers: floors added to a panel
    panel_yaws: tuple  # degrees; each panel's rotation about the vertical axis
    window_spacing: float  # horizontal window pitch / floor height
    window_width: float  # window width / pitch
    window_aspect: float  # window height / width


def sample_family(rng):
    hue = rng.uniform()
    n_panels = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    folds = np.concatenate(
        [[0.0], rng.choice([-1, 1], n_panels - 1) * rng.uniform(25, 50, n_panels - 1)]
    )
    widths = rng.uniform(0.45, 1.0, n_panels)
    yaws = np.cumsum(folds)
    yaws -= np.average(
        yaws, weights=widths
    )  # the width-weighted mean facade faces the default camera
    extra = np.zeros(n_panels, int)
    if n_panels > 1 and rng.uniform() < 0.5:
        extra[rng.integers(n_panels)] = rng.integers(1, 3)
    return Family(
        wall=hsv_colour(hue, rng.uniform(0.1, 0.45), rng.uniform(0.55, 0.9)),
        trim=hsv_colour(hue + rng.normal(0, 0.05), rng.uniform(0.0, 0.25), rng.uniform(0.8, 1.0)),
        glass=hsv_colour(rng.uniform(0.5, 0.7), rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.4)),
        roof=hsv_colour(rng.uniform(), rng.uniform(0.2, 0.6), rng.uniform(0.25, 0.55)),
        accents=tuple(
            hsv_colour(rng.uniform(), rng.uniform(0.55, 0.95), rng.uniform(0.45, 0.95))
            for _ in range(4)
        ),
        wall_pattern=str(rng.choice(["plain", "brick", "stone", "stripes"])),
        roofline=str(rng.choice(["flat", "gable", "stepped", "crenel", "dome"])),
        floors=int(rng.integers(3, 6)),
        panel_widths=tuple(float(w) for w in widths),
        panel_extra_floors=tuple(int(e) for e in extra),
        panel_yaws=tuple(float(y) for y in yaws),
        window_spacing=float(rng.uniform(0.9, 1.4)),
        window_width=float(rng.uniform(0.4, 0.6)),
        window_aspect=float(rng.uniform(1.2, 1.8)),
    )


def _jitter(colour, rng, amount):
    return tuple(float(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _contrast(colour):
    return (20.0, 20.0, 20.0) if sum(colour) > 380 else (240.0, 240.0, 235.0)


def _wall(family, rng, width, height, floor_height):
    """Wall colour with low-frequency weathering and the family's masonry pattern."""
    rows, cols = np.ogrid[0:height, 0:width]
    coarse = rng.uniform(-1, 1, (4, 6)).astype(np.float32)
    weathering = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    shade = 1.0 + 0.08 * weathering
    if family.wall_pattern in ("brick", "stone"):
        course = max(3, round(floor_height / (8 if family.wall_pattern == "brick" else 4)))
        row = rows // course
        shifted = cols + (row % 2) * course
        block_shades = rng.uniform(-0.07, 0.07, (64, 64)).astype(np.float32)
        shade = shade + block_shades[row % 64, (shifted // (2 * course)) % 64]
        joint = (rows % course < 2) | (shifted % (2 * course) < 2)
        shade = np.where(joint, shade * 0.72, shade)
    elif family.wall_pattern == "stripes":
        band = max(3, round(floor_height / 5))
        shade = shade * np.where((rows // band) % 2 == 0, 1.0, 0.88).astype(np.float32)
    image = np.asarray(family.wall, np.float32) * shade[..., None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _window_designs(family, rng):
    """The landmark's own window vocabulary: 1-3 designs, each a few drawing choices."""
    designs = []
    for _ in range(int(rng.integers(1, 4))):
        designs.append(
            {
                "top": str(rng.choice(["flat", "arch", "pediment", "lintel"])),
                "mullion": str(rng.choice(["none", "cross", "vertical", "grid"])),
                "frame": family.trim
                if rng.uniform() < 0.6
                else family.accents[int(rng.integers(4))],
                "thickness": int(rng.integers(2, 5)),
                "shutters": bool(rng.uniform() < 0.35),
                "sill": bool(rng.uniform() < 0.6),
            }
        )
    return designs


def _draw_window(image, x, y, w, h, design, family, rng):
    t, frame = design["thickness"], design["frame"]
    if design["shutters"]:
        shutter = family.accents[0]
        for left in (x - w // 2 - t, x + w + t):
            cv2.rectangle(image, (left, y), (left + w // 2, y + h), shutter, -1)
            for slat in range(y + 3, y + h, max(3, h // 8)):
                cv2.line(image, (left, slat), (left + w // 2, slat), (30.0, 30.0, 30.0), 1, AA)
    cv2.rectangle(image, (x - t, y - t), (x + w + t, y + h + t), frame, -1)
    glass = (230.0, 200.0, 110.0) if rng.uniform() < 0.12 else _jitter(family.glass, rng, 12)
    cv2.rectangle(image, (x, y), (x + w, y + h), glass, -1)
    if design["top"] == "arch":
        cv2.ellipse(image, (x + w // 2, y), (w // 2 + t, w // 2 + t), 0, 180, 360, frame, -1, AA)
        cv2.ellipse(image, (x + w // 2, y), (w // 2, w // 2), 0, 180, 360, glass, -1, AA)
    elif design["top"] == "pediment":
        peak = np.array(
            [[x - 2 * t, y - t], [x + w + 2 * t, y - t], [x + w // 2, y - t - w // 2]], np.int32
        )
        cv2.fillPoly(image, [peak], frame, AA)
        cv2.polylines(image, [peak], True, _contrast(frame), 1, AA)
    elif design["top"] == "lintel":
        cv2.rectangle(image, (x - 2 * t, y - 3 * t), (x + w + 2 * t, y - t), frame, -1)
    centre_x, mullion = x + w // 2, design["mullion"]
    if mullion in ("cross", "vertical"):
        cv2.line(image, (centre_x, y), (centre_x, y + h), frame, max(1, t // 2 + 1), AA)
    if mullion == "cross":
        cv2.line(
            image, (x, y + int(h * 0.4)), (x + w, y + int(h * 0.4)), frame, max(1, t // 2 + 1), AA
        )
    if mullion == "grid":
        for k in (1, 2):
            cv2.line(image, (x + k * w // 3, y), (x + k * w // 3, y + h), frame, 1, AA)
            cv2.line(image, (x, y + k * h // 3), (x + w, y + k * h // 3), frame, 1, AA)
    if design["sill"]:
        cv2.rectangle(
            image, (x - 2 * t, y + h + t), (x + w + 2 * t, y + h + 2 * t + 1), family.trim, -1
        )
    if rng.uniform() < 0.2:  # flower box: a one-off detail
        for k in range(4):
            colour = family.accents[int(rng.integers(4))]
            cv2.circle(image, (x + (k * w) // 3, y + h + 2 * t), max(2, w // 8), colour, -1, AA)


def _draw_cornice(image, y, width, floor_height, motif, family):
    band = max(2, floor_height // 12)
    cv2.rectangle(image, (0, y - band), (width, y + band), family.trim, -1)
    step = max(4, floor_height // 6)
    xs = np.arange(step // 2, width, step)
    if motif == "dentils":
        for x in xs:
            cv2.rectangle(
                image, (int(x), y + band), (int(x) + step // 2, y + 2 * band + 1), family.trim, -1
            )
    elif motif == "zigzag":
        ys = np.where(np.arange(len(xs)) % 2 == 0, y + band, y + 3 * band)
        cv2.polylines(
            image, [np.stack([xs, ys], 1).astype(np.int32)], False, _contrast(family.wall), 1, AA
        )
    elif motif == "dots":
        for x in xs:
            cv2.circle(
                image, (int(x), y + 2 * band + 1), max(1, band // 2 + 1), family.accents[1], -1, AA
            )


def _draw_door(image, centre_x, top, width, bottom, family):
    x = centre_x - width // 2
    cv2.rectangle(image, (x, top), (x + width, bottom), family.accents[2], -1)
    cv2.ellipse(
        image, (centre_x, top), (width // 2, width // 3), 0, 180, 360, family.accents[2], -1, AA
    )
    cv2.rectangle(image, (x + 3, top + 4), (x + width - 3, bottom), family.glass, -1)


def _text(rng, n_min=2, n_max=6):
    return "".join(rng.choice(list(LETTERS), int(rng.integers(n_min, n_max + 1))))


def _unique_sign(image, cx, cy, r, colour, other, family, rng):
    text = _text(rng)
    font = int(rng.choice(FONTS))
    scale = cv2.getFontScaleFromHeight(font, max(6, r // 2), 1)
    (tw, th), _ = cv2.getTextSize(text, font, scale, 1)
    corners = (cx - tw // 2 - 4, cy - th - 4), (cx + tw // 2 + 4, cy + 6)
    cv2.rectangle(image, *corners, colour, -1)
    cv2.rectangle(image, *corners, _contrast(colour), 1, AA)
    cv2.putText(
        image, text, (cx - tw // 2, cy), font, scale, _contrast(colour), max(1, r // 10), AA
    )


def _unique_crest(image, cx, cy, r, colour, other, family, rng):
    shield = np.array([[-r, -r], [r, -r], [r, 0], [0, r], [-r, 0]]) * 0.9 + [cx, cy]
    cv2.fillPoly(image, [shield.astype(np.int32)], colour, AA)
    thickness = max(1, r // 5)
    cv2.line(image, (cx - r // 2, cy - r // 2), (cx + r // 2, cy + r // 3), other, thickness, AA)
    cv2.line(image, (cx + r // 2, cy - r // 2), (cx - r // 2, cy + r // 3), other, thickness, AA)


def _unique_rosette(image, cx, cy, r, colour, other, family, rng):
    cv2.circle(image, (cx, cy), r, colour, -1, AA)
    cv2.circle(image, (cx, cy), int(r * 0.6), other, max(1, r // 6), AA)
    spokes = np.linspace(0, np.pi, int(rng.integers(3, 7)), endpoint=False)
    for angle in spokes + rng.uniform(0, np.pi):
        dx, dy = int(r * np.cos(angle)), int(r * np.sin(angle))
        cv2.line(image, (cx - dx, cy - dy), (cx + dx, cy + dy), _contrast(colour), 1, AA)


def _unique_clock(image, cx, cy, r, colour, other, family, rng):
    ink = (30.0, 30.0, 30.0)
    cv2.circle(image, (cx, cy), r, (240.0, 238.0, 225.0), -1, AA)
    cv2.circle(image, (cx, cy), r, ink, max(1, r // 8), AA)
    for angle in rng.uniform(0, 2 * np.pi, 2):
        tip = (cx + int(0.8 * r * np.cos(angle)), cy + int(0.8 * r * np.sin(angle)))
        cv2.line(image, (cx, cy), tip, ink, max(1, r // 10), AA)


def _unique_mural(image, cx, cy, r, colour, other, family, rng):
    cv2.rectangle(image, (cx - r, cy - r), (cx + r, cy + r), _jitter(family.trim, rng, 20), -1)
    for _ in range(int(rng.integers(3, 7))):
        points = (rng.uniform(-r, r, (int(rng.integers(3, 6)), 2)) + [cx, cy]).astype(np.int32)
        cv2.fillPoly(image, [points], family.accents[int(rng.integers(4))], AA)


def _unique_star(image, cx, cy, r, colour, other, family, rng):
    spikes = int(rng.integers(5, 9))
    angles = np.linspace(0, 2 * np.pi, 2 * spikes, endpoint=False) + rng.uniform(0, np.pi)
    radii = np.where(np.arange(2 * spikes) % 2 == 0, r, r * 0.45)
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    cv2.fillPoly(image, [points.astype(np.int32)], colour, AA)


def _unique_banner(image, cx, cy, r, colour, other, family, rng):
    half = max(2, r // 3)
    cv2.rectangle(image, (cx - half, cy - r), (cx + half, cy + r), colour, -1)
    cv2.rectangle(image, (cx - half, cy - r // 3), (cx + half, cy + r // 3), other, -1)
    cv2.circle(image, (cx, cy), max(1, half // 2), _contrast(other), -1, AA)


def _unique_graffiti(image, cx, cy, r, colour, other, family, rng):
    points = np.cumsum(rng.normal(0, r / 2, (int(rng.integers(4, 8)), 2)), 0) + [cx, cy]
    cv2.polylines(image, [points.astype(np.int32)], False, colour, max(2, r // 5), AA)


_UNIQUE_DRAWERS = {
    "sign": _unique_sign,
    "crest": _unique_crest,
    "rosette": _unique_rosette,
    "clock": _unique_clock,
    "mural": _unique_mural,
    "star": _unique_star,
    "banner": _unique_banner,
    "graffiti": _unique_graffiti,
}


def _draw_unique(image, kind, cx, cy, size, family, rng):
    """One distinctive element of about ``size`` pixels centred at (cx, cy)."""
    colour = family.accents[int(rng.integers(4))]
    other = family.accents[int(rng.integers(4))]
    _UNIQUE_DRAWERS[kind](image, cx, cy, max(3, size // 2), colour, other, family, rng)


def _roof_mask(family, width, roof_height, rng):
    """Alpha of the roof zone: the family's silhouette (the wall below is opaque)."""
    mask = np.zeros((roof_height, width), np.uint8)
    h, w = roof_height, width
    if family.roofline == "gable":
        cv2.fillPoly(mask, [np.array([[0, h], [w, h], [w // 2, 0]], np.int32)], 255, AA)
    elif family.roofline == "stepped":
        steps = 3
        for k in range(steps):
            inset = k * w // (2 * steps + 1)
            cv2.rectangle(mask, (inset, h - (k + 1) * h // steps), (w - inset, h), 255, -1)
    elif family.roofline == "crenel":
        merlon = max(4, h // 2)
        for x in range(0, w, 2 * merlon):
            cv2.rectangle(mask, (x, h // 2), (x + merlon, h), 255, -1)
        cv2.rectangle(mask, (0, 3 * h // 4), (w, h), 255, -1)
    elif family.roofline == "dome":
        cv2.ellipse(mask, (w // 2, h), (min(w // 2, int(1.2 * h)), h - 2), 0, 180, 360, 255, -1, AA)
        cv2.rectangle(mask, (0, h - max(2, h // 6)), (w, h), 255, -1)
    else:  # flat: a parapet only
        cv2.rectangle(mask, (0, h - max(2, h // 5)), (w, h), 255, -1)
    return mask


def draw_panel(family, index, rng, floor_height):
    """RGBA texture (uint8, straight alpha) of panel ``index``: roof zone on top, floors below,
    ground floor last."""
    floors = family.floors + family.panel_extra_floors[index]
    wall_height = floors * floor_height
    width = max(floor_height, round(family.panel_widths[index] * family.floors * floor_height))
    roof_height = max(4, round(0.7 * floor_height))
    height = roof_height + wall_height
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:roof_height] = np.asarray(family.roof, np.uint8)
    rgb[roof_height:] = _wall(family, rng, width, wall_height, floor_height)
    if family.roofline in ("gable", "dome"):
        for y in range(roof_height // 4, roof_height, max(3, roof_height // 5)):  # tile courses
            cv2.line(rgb, (0, y), (width, y), (40.0, 40.0, 40.0), 1, AA)
    _draw_floors(rgb, family, rng, floors, floor_height, roof_height)
    for _ in range(max(3, round(width * wall_height / (2.5 * floor_height * floor_height)))):
        kind = str(rng.choice(UNIQUE_KINDS, p=UNIQUE_WEIGHTS))
        size = int(rng.uniform(0.35, 0.8) * floor_height)
        cx = int(rng.uniform(size / 2, width - size / 2))
        cy = int(rng.uniform(roof_height + size / 2, height - size / 2))
        _draw_unique(rgb, kind, cx, cy, size, family, rng)
    alpha = np.full((height, width), 255, np.uint8)
    alpha[:roof_height] = _roof_mask(family, width, roof_height, rng)
    return np.dstack([rgb, alpha])


def _draw_floors(rgb, family, rng, floors, floor_height, roof_height):
    """The floors' cornices, windows and the ground floor's door, on a grid of columns."""
    width = rgb.shape[1]
    designs = _window_designs(family, rng)
    pattern = str(rng.choice(["floor", "column", "random"]))
    motif = str(rng.choice(["dentils", "zigzag", "dots", "plain"]))
    # look-alikes' windows do not align
    pitch = family.window_spacing * floor_height * rng.uniform(0.88, 1.12)
    columns = max(1, int(width // pitch))
    margin = (width - columns * pitch) / 2
    win_w = max(4, round(family.window_width * pitch))
    win_h = min(round(win_w * family.window_aspect), round(0.62 * floor_height))
    door_column = int(rng.integers(columns))
    for floor in range(floors):
        top = roof_height + floor * floor_height
        if floor > 0:
            _draw_cornice(rgb, top, width, floor_height, motif, family)
        for column in range(columns):
            centre = margin + (column + 0.5) * pitch
            y = top + round(0.25 * floor_height)
            if floor == floors - 1 and column == door_column:
                door_width = min(round(1.4 * win_w), round(pitch) - 4)
                _draw_door(rgb, round(centre), y, door_width, top + floor_height, family)
                continue
            # the random draw is made whatever the pattern, so every pattern sees one stream
            random_key = int(rng.integers(len(designs)))
            key = {"floor": floor, "column": column, "random": random_key}[pattern]
            x = round(centre - win_w / 2)
            _draw_window(rgb, x, y, win_w, win_h, designs[key % len(designs)], family, rng)
