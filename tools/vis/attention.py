"""Picture of a local-feature extraction: the attention heatmap and the selected keypoints over the
image.

    python tools/vis/attention.py IMAGE --cfg FILE [--out PNG] [KEY VALUE ...]

The heatmap is the attention of the pyramid level nearest scale 1; each keypoint is a circle whose
radius grows with 1 / scale (features from coarse levels describe larger regions), coloured by
attention score.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.cli import load_cfg_or_exit, run_reporting_errors  # noqa: E402
from core.io import atomic_path  # noqa: E402
from tools.extraction.geometry import network_to_image  # noqa: E402
from tools.extraction.pyramid import run_pyramid, select_from_levels  # noqa: E402

KEYPOINT_RADIUS = 4.0  # points (1/72 inch) on the picture for a feature at scale 1


def attention_and_keypoints(model, image, image_size, geometry, settings):
    """Run the local pyramid on a normalised [1, 3, H, W] image.

    Returns (attention [h, w] array of the level nearest scale 1, its extent (left, right, bottom,
    top) in pixels of the image as read, selected features as arrays).
    """
    with torch.inference_mode():
        _, levels = run_pyramid(model, image, (), settings.local_scales)
        selected = select_from_levels(levels, image_size, geometry, settings)
    level = min(levels, key=lambda item: abs(math.log(item["scale"])))
    return (
        level["attention"].float().cpu().numpy(),
        _extent(level, image_size, geometry),
        {field: values.float().cpu().numpy() for field, values in selected.items()},
    )


def _extent(level, image_size, geometry):
    """Edges of the map's cells around their centres, mapped to the image, for imshow's extent."""
    receptive_field, stride, padding = geometry
    height, width = level["attention"].shape
    first = (receptive_field - 1) / 2 - padding - stride / 2
    corners = torch.tensor([[first, first, first + stride * width, first + stride * height]])
    network_height, network_width = level["network_size"]
    factors = (network_width / image_size[1], network_height / image_size[0])
    left, top, right, bottom = network_to_image(corners, factors)[0].tolist()
    return left, right, bottom, top


def draw_attention(image, attention, extent, features, out_path, title=""):
    """Write a PNG: image, attention heatmap (semi-transparent) and keypoint circles sized by 1 /
    scale."""
    height, width = image.shape[:2]
    figure, axis = plt.subplots(figsize=(8, 8 * height / max(width, 1)), dpi=100)
    axis.imshow(image)
    heat = axis.imshow(
        attention, cmap="inferno", alpha=0.5, extent=extent, interpolation="bilinear"
    )
    locations, scales, scores = features["locations"], features["scales"], features["scores"]
    radii = KEYPOINT_RADIUS / np.maximum(scales, 1e-3)
    axis.scatter(
        locations[:, 0],
        locations[:, 1],
        s=(2 * radii) ** 2,
        facecolors="none",
        edgecolors=plt.cm.viridis(_unit(scores)),
        linewidths=0.8,
    )
    axis.set_xlim(-0.5, width - 0.5)
    axis.set_ylim(height - 0.5, -0.5)
    axis.set_axis_off()
    axis.set_title(title or f"{len(scores)} keypoints", fontsize=9)
    figure.colorbar(heat, ax=axis, fraction=0.03, label="attention")
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(figure)
    return out_path


def _unit(values):
    if len(values) == 0:
        return values
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.ones_like(values)


def picture_for_image(cfg, image_path, out_path):
    """Extract with cfg's model and EXTRACT settings and draw the picture of one image file."""
    from datasets.image_io import read_image
    from datasets.transforms import build_normalizer, to_chw_tensor
    from tools.extraction.runner import build_extraction_model, build_settings, init_distributed
    from tools.extraction.sources import prepare_image

    _, device = init_distributed(cfg)
    model = build_extraction_model(cfg, device)
    settings = build_settings(cfg)
    if not settings.local_scales:
        raise ValueError("EXTRACT.LOCAL is False: there are no local features to draw")
    image = read_image(image_path)
    pixels = to_chw_tensor(prepare_image(image, cfg.EXTRACT.MAX_IMAGE_SIZE)).to(device)
    normalised = build_normalizer(cfg)(pixels)[None]
    attention, extent, features = attention_and_keypoints(
        model, normalised, image.shape[:2], tuple(model.local_geometry), settings
    )
    title = f"{os.path.basename(image_path)}: {len(features['scores'])} keypoints"
    return draw_attention(image, attention, extent, features, out_path, title)


def parse_arguments(argv=None):
    """IMAGE --cfg FILE [--out PNG] [KEY VALUE ...], in any order (the image is the first bare
    argument)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="image file")
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    parser.add_argument(
        "--out", default="", help="PNG to write (default OUT_DIR/vis/<image>_attention.png)"
    )
    args, opts = parser.parse_known_args(argv)
    unknown = [opt for opt in opts if opt.startswith("--")]
    if unknown:
        parser.error(f"unknown option(s) {' '.join(unknown)}")
    args.opts = opts
    return args


def main(argv=None):
    args = parse_arguments(argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    out_path = args.out or os.path.join(cfg.OUT_DIR, "vis", f"{stem}_attention.png")
    return run_reporting_errors("attention", _draw, cfg, args.image, out_path)


def _draw(cfg, image, out_path):
    print(picture_for_image(cfg, image, out_path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
