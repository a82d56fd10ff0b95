"""Photographs of synthetic landmarks: cameras, per-panel homographies, photometric changes and
measured labels.

World units are texture pixels; Y points down, the ground is Y = 0 and the default camera looks
along +Z at the facade. A panel's texture point (u, v) sits at world ``frame @ (u, v, 1)``, so a
camera K [R | t] sees the panel through the homography K (R frame + t e3^T). The surface carries a
grid of sample points; a view records which of them it shows (in front of the camera, inside the
image, not hidden by another panel or an occluder) and at what scale, which is all that
:func:`label_view` needs to call a database view easy, hard or junk for a query.
"""

import dataclasses

import cv2
import numpy as np

from datasets.synthetic.context import draw_background, draw_occluders
from datasets.synthetic.scenes import draw_panel

SAMPLES_PER_FLOOR = 6  # surface sample points per floor height, both directions


@dataclasses.dataclass(frozen=True)
class ViewProfile:
    """Ranges a photo's camera and conditions are drawn from; angles in degrees, either side unless
    noted."""

    azimuth: tuple = (0, 25)  # camera direction from the facade's front
    elevation: tuple = (-3, 15)  # positive: camera below the aim point, looking up (one-sided)
    roll: tuple = (0, 8)
    coverage: tuple = (
        0.6,
        1.05,
    )  # landmark size / image size (the tighter side), log-uniform; above 1 a part
    # how far the aim point strays from the landmark's centre toward a random surface point
    focus: float = 0.15
    # aim beyond the landmark's side by this fraction of its width (mostly-cropped views)
    offset: float = 0.0
    occluders: tuple = (0, 2)  # number, inclusive
    occluder_size: float = 0.3  # occluder height / image height
    blur: tuple = (0.0, 0.8)  # Gaussian sigma, pixels
    noise: tuple = (1.0, 4.0)  # Gaussian noise sigma, grey levels
    light: float = 0.2  # strength of gain, gamma, colour cast and shading changes


PROFILES = {
    "query": ViewProfile(
        azimuth=(0, 18),
        elevation=(0, 10),
        roll=(0, 4),
        coverage=(0.7, 0.95),
        focus=0.1,
        occluders=(0, 1),
        occluder_size=0.2,
        blur=(0.0, 0.5),
        noise=(1.0, 3.0),
        light=0.15,
    ),
    "easy": ViewProfile(),
    "hard_angle": ViewProfile(
        azimuth=(40, 62), elevation=(0, 25), roll=(0, 12), coverage=(0.6, 1.0), light=0.3
    ),
    "hard_zoom": ViewProfile(
        azimuth=(0, 30), roll=(0, 12), coverage=(1.8, 3.0), focus=0.8, light=0.3
    ),
    "hard_far": ViewProfile(
        roll=(0, 10), coverage=(0.22, 0.32), focus=0.05, occluder_size=0.15, light=0.3
    ),
    "hard_roll": ViewProfile(roll=(25, 45), coverage=(0.6, 0.95), light=0.3),
    "hard_occluded": ViewProfile(
        coverage=(0.6, 0.95), occluders=(3, 6), occluder_size=0.6, blur=(0.5, 1.5), light=0.3
    ),
    "junk_tiny": ViewProfile(coverage=(0.06, 0.1), focus=0.05, occluder_size=0.25),
    "junk_edge": ViewProfile(coverage=(0.8, 1.3), offset=0.35, focus=0.0),
}

# measured-label thresholds (the revisitop annotation rules, made numeric)
JUNK_OVERLAP = 0.25  # less than a quarter of the query's visible surface shown: junk
JUNK_PIXELS = 0.025  # landmark under 2.5% of the image: junk
# at least this much of the query's surface shown, and the changes below kept small: easy
EASY_OVERLAP = 0.6
EASY_MAX_SCALE = 2.0  # scale ratio to the query within [1/2, 2]
EASY_MAX_ANGLE = 35.0  # viewpoint change at the shared surface, degrees
EASY_MAX_ROLL = 20.0
EASY_MAX_BLUR = 1.2


@dataclasses.dataclass
class Landmark:
    """Panel textures (premultiplied RGBA mip levels), their world frames and the surface sample
    points."""

    mips: (
        list  # per panel: [level 0, level 1, ...] uint8 premultiplied RGBA, each half the previous
    )
    frames: list  # per panel: 3x3 world-from-texture matrix [U | V | origin]
    normals: np.ndarray  # [P, 3] outward (camera-facing) normals
    centres: np.ndarray  # [P, 3] panel centres
    sample_uv: list  # per panel: [n, 2] texture points on the opaque surface
    sample_world: np.ndarray  # [N, 3] the same points in the world, panels concatenated
    centre: np.ndarray  # [3] centre of the landmark's bounding box
    width: float  # extent along X (the frontal width)
    height: float  # extent along Y


def _mip_levels(rgba):
    premultiplied = rgba.astype(np.float32)
    premultiplied[..., :3] *= premultiplied[..., 3:] / 255.0
    levels = [np.round(premultiplied).astype(np.uint8)]
    while min(levels[-1].shape[:2]) >= 32:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def build_landmark(family, rng, floor_height):
    """Draw the panels of a landmark of ``family`` (its local detail from ``rng``) and place them in
    the world."""
    mips, frames, normals, centres, sample_uv, sample_world = [], [], [], [], [], []
    position = np.zeros(3)
    step = max(2.0, floor_height / SAMPLES_PER_FLOOR)
    for index, yaw in enumerate(np.radians(family.panel_yaws)):
        rgba = draw_panel(family, index, rng, floor_height)
        height, width = rgba.shape[:2]
        along = np.array([np.cos(yaw), 0.0, np.sin(yaw)])
        frame = np.column_stack([along, [0.0, 1.0, 0.0], position + [0.0, -height, 0.0]])
        u, v = np.meshgrid(np.arange(step / 2, width, step), np.arange(step / 2, height, step))
        opaque = rgba[v.astype(int), u.astype(int), 3] > 127
        uv = np.stack([u[opaque], v[opaque]], 1)
        mips.append(_mip_levels(rgba))
        frames.append(frame)
        normals.append([np.sin(yaw), 0.0, -np.cos(yaw)])
        centres.append(frame @ [width / 2, height / 2, 1.0])
        sample_uv.append(uv)
        sample_world.append(np.column_stack([uv, np.ones(len(uv))]) @ frame.T)
        position = position + width * along
    world = np.concatenate(sample_world)
    low, high = world.min(0), world.max(0)
    return Landmark(
        mips,
        frames,
        np.array(normals),
        np.array(centres),
        sample_uv,
        world,
        (low + high) / 2,
        float(high[0] - low[0]),
        float(high[1] - low[1]),
    )


@dataclasses.dataclass(frozen=True)
class Camera:
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    centre: np.ndarray
    roll: float
    size: tuple  # (width, height)

    def homography(self, frame):
        """Texture pixels of a panel with world ``frame`` -> image pixels."""
        extrinsic = self.R @ frame
        extrinsic[:, 2] += self.t
        return self.K @ extrinsic


def _signed(rng, bounds):
    return float(rng.choice([-1, 1]) * rng.uniform(*bounds))


def sample_camera(landmark, profile, rng, long_side):
    width, height = {
        0: (long_side, round(0.75 * long_side)),
        1: (round(0.75 * long_side), long_side),
        2: (long_side, long_side),
    }[int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    azimuth, roll = (
        np.radians(_signed(rng, profile.azimuth)),
        np.radians(_signed(rng, profile.roll)),
    )
    elevation = np.radians(rng.uniform(*profile.elevation))
    focal = 0.5 * long_side / np.tan(np.radians(rng.uniform(45, 65)) / 2)
    coverage = np.exp(rng.uniform(*np.log(profile.coverage)))
    surface_point = landmark.sample_world[rng.integers(len(landmark.sample_world))]
    aim = landmark.centre + profile.focus * (surface_point - landmark.centre)
    if profile.offset:
        aim = aim + [rng.choice([-1, 1]) * (0.5 + profile.offset) * landmark.width, 0.0, 0.0]
    distance = focal * max(landmark.width / width, landmark.height / height) / coverage
    centre = aim + distance * np.array(
        [
            np.sin(azimuth) * np.cos(elevation),
            np.sin(elevation),
            -np.cos(azimuth) * np.cos(elevation),
        ]
    )
    forward = (aim - centre) / np.linalg.norm(aim - centre)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack(
        [
            np.cos(roll) * right + np.sin(roll) * down,
            -np.sin(roll) * right + np.cos(roll) * down,
            forward,
        ]
    )
    K = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    return Camera(K, R, -R @ centre, centre, float(np.degrees(roll)), (width, height))


def _project(H, uv):
    """Image points, depths and local linear scales (sqrt of the Jacobian determinant) of texture
    points ``uv``."""
    points = np.column_stack([uv, np.ones(len(uv))]) @ H.T
    depth = points[:, 2]
    safe = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
    scale = np.sqrt(np.abs(np.linalg.det(H)) / np.abs(safe) ** 3)
    return points[:, :2] / safe[:, None], depth, scale


def _draw_panel_view(canvas, label, landmark, index, camera, near):
    H = camera.homography(landmark.frames[index])
    level0 = landmark.mips[index][0]
    height, width = level0.shape[:2]
    corners = np.array(
        [[0, 0], [width, 0], [0, height], [width, height], [width / 2, height / 2]], float
    )
    xy, depth, scale = _project(H, corners)
    if depth.max() <= near:
        return
    # the texture level whose pixels are about one image pixel: no aliasing, no wasted work
    sharpest = scale[depth > near].max()
    level = int(
        np.clip(np.floor(np.log2(1.0 / max(sharpest, 1e-6))), 0, len(landmark.mips[index]) - 1)
    )
    texture = landmark.mips[index][level]
    H_level = H @ np.diag([2.0**level, 2.0**level, 1.0])
    x0, y0, x1, y1 = 0, 0, *camera.size
    if depth.min() <= near:  # the panel crosses the camera plane: keep only the part in front of it
        rows, cols = np.ogrid[0 : texture.shape[0], 0 : texture.shape[1]]
        in_front = H_level[2, 0] * cols + H_level[2, 1] * rows + H_level[2, 2] > near
        texture = texture * in_front[..., None].astype(np.uint8)
    else:  # warp only the panel's bounding box
        x0, y0 = np.clip(np.floor(xy.min(0)).astype(int) - 1, 0, [x1, y1])
        x1, y1 = np.clip(np.ceil(xy.max(0)).astype(int) + 2, 0, [x1, y1])
        if x1 <= x0 or y1 <= y0:
            return
    shift = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
    warped = cv2.warpPerspective(
        texture,
        shift @ H_level,
        (int(x1 - x0), int(y1 - y0)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    alpha = warped[..., 3:].astype(np.float32) / 255.0
    window = canvas[y0:y1, x0:x1]
    window *= 1.0 - alpha
    window += warped[..., :3]
    label[y0:y1, x0:x1][alpha[..., 0] > 0.5] = index + 1


def _photometric(image, profile, rng):
    """Shading ramp, cast shadow, gain, colour cast and gamma, then blur and sensor noise; float32
    in, uint8 out."""
    height, width = image.shape[:2]
    rows = np.arange(height, dtype=np.float32)[:, None] / height - 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] / width - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    shading = 1.0 + profile.light * (np.cos(angle) * cols + np.sin(angle) * rows)
    if rng.uniform() < 0.25:  # a cast shadow across part of the view
        edge_angle, offset = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
        side = (np.cos(edge_angle) * cols + np.sin(edge_angle) * rows) > offset
        shading = shading * np.where(side, np.float32(rng.uniform(0.55, 0.8)), np.float32(1.0))
    gain = np.exp(rng.normal(0, profile.light, 3) / 3 + rng.normal(0, profile.light)).astype(
        np.float32
    )
    image = cv2.convertScaleAbs(image * shading[..., None] * gain)  # rounds and saturates to uint8
    gamma = np.exp(rng.normal(0, profile.light))
    image = cv2.LUT(image, np.round(255.0 * (np.arange(256) / 255.0) ** gamma).astype(np.uint8))
    blur = float(rng.uniform(*profile.blur))
    if blur > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    return cv2.convertScaleAbs(
        image + _noise(rng, image.shape) * np.float32(rng.uniform(*profile.noise))
    ), blur


_NOISE_TILE = []


def _noise(rng, shape):
    """Unit Gaussian noise: a window of one fixed tile at a random offset (drawing fresh noise costs
    more than the rest of the photo)."""
    if not _NOISE_TILE:
        _NOISE_TILE.append(
            np.random.default_rng(2020).standard_normal((1024, 1024, 3), dtype=np.float32)
        )
    tile = _NOISE_TILE[0]
    height, width = shape[:2]
    y, x = rng.integers(0, tile.shape[0] - height + 1), rng.integers(0, tile.shape[1] - width + 1)
    return tile[y : y + height, x : x + width]


def render_view(landmark, profile, rng, long_side):
    """One photo of ``landmark``: (uint8 RGB image, observation dict for :func:`label_view`)."""
    camera = sample_camera(landmark, profile, rng, long_side)
    width, height = camera.size
    near = 0.05 * np.linalg.norm(landmark.centre - camera.centre)
    ground = camera.K @ (camera.R @ [landmark.centre[0], 0.0, landmark.centre[2]] + camera.t)
    horizon = ground[1] / ground[2] if ground[2] > near else height
    canvas = draw_background(rng, width, height, horizon).astype(np.float32)
    label = np.zeros((height, width), np.uint8)
    to_camera = camera.centre - landmark.centres
    facing = np.einsum("pk,pk->p", landmark.normals, to_camera) > 0
    for index in np.argsort(-np.linalg.norm(to_camera, axis=1), kind="stable"):  # far panels first
        if facing[index]:
            _draw_panel_view(canvas, label, landmark, index, camera, near)
    draw_occluders(
        canvas,
        label,
        rng,
        int(rng.integers(profile.occluders[0], profile.occluders[1] + 1)),
        profile.occluder_size,
    )
    image, blur = _photometric(canvas, profile, rng)
    return image, _observe(landmark, camera, label, near, blur)


def _observe(landmark, camera, label, near, blur):
    width, height = camera.size
    visible, scales = [], []
    for index, uv in enumerate(landmark.sample_uv):
        xy, depth, scale = _project(camera.homography(landmark.frames[index]), uv)
        column, row = np.floor(xy[:, 0]).astype(np.int64), np.floor(xy[:, 1]).astype(np.int64)
        inside = (depth > near) & (column >= 0) & (column < width) & (row >= 0) & (row < height)
        shown = inside.copy()
        shown[inside] = label[row[inside], column[inside]] == index + 1
        visible.append(shown)
        scales.append(scale)
    rows, columns = np.nonzero(label)
    bbx = (
        [float(columns.min()), float(rows.min()), float(columns.max() + 1), float(rows.max() + 1)]
        if len(rows)
        else None
    )
    return {
        "visible": np.concatenate(visible),
        "scale": np.concatenate(scales),
        "camera": camera.centre,
        "roll": camera.roll,
        "blur": blur,
        "pixels": len(rows) / label.size,
        "bbx": bbx,
    }


def label_view(landmark, query, view):
    """'easy', 'hard' or 'junk': how database ``view`` of the landmark relates to ``query``
    (observations)."""
    shared = query["visible"] & view["visible"]
    overlap = shared.sum() / max(int(query["visible"].sum()), 1)
    if view["pixels"] < JUNK_PIXELS or overlap < JUNK_OVERLAP:
        return "junk"
    ratio = np.median(view["scale"][shared]) / np.median(query["scale"][shared])
    point = landmark.sample_world[shared].mean(0)
    rays = np.stack([query["camera"] - point, view["camera"] - point])
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    angle = np.degrees(np.arccos(np.clip(rays[0] @ rays[1], -1, 1)))
    roll = abs((view["roll"] - query["roll"] + 180) % 360 - 180)
    easy = (
        overlap >= EASY_OVERLAP
        and 1 / EASY_MAX_SCALE <= ratio <= EASY_MAX_SCALE
        and angle <= EASY_MAX_ANGLE
        and roll <= EASY_MAX_ROLL
        and view["blur"] <= EASY_MAX_BLUR
    )
    return "easy" if easy else "hard"


def encode_jpeg(rgb, quality):
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return data.tobytes()
