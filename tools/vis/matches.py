"""Picture of spatial verification: a query and an index image side by side, inlier matches drawn as
lines.

    python tools/vis/matches.py --cfg FILE --query NAME --index NAME [--out matches.png]
    [--outliers] [KEY VALUE ...]

The features come from the EVAL.DATASET stores (EVAL.FEATURES_DIR) and the images from
EVAL.DATA_ROOT/jpg; the query is cropped to the box it was extracted with, so that its keypoints
land where they belong. Matching and geometry follow the SV.* settings.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

import argparse  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.cli import load_cfg_or_exit, run_reporting_errors  # noqa: E402
from core.io import write_png  # noqa: E402
from datasets.image_io import read_image  # noqa: E402
from datasets.revisitop import RevisitopDataset  # noqa: E402
from tools.evaluation.benchmarks import open_store_pair  # noqa: E402
from tools.extraction.stores import features_dir  # noqa: E402
from tools.rerank.matching import putative_matches  # noqa: E402
from tools.rerank.spatial_verification import inlier_mask, options_from_cfg  # noqa: E402
from tools.revisitop.context import split_dataset_name  # noqa: E402
from tools.vis.text import put_caption  # noqa: E402

INLIER_COLOUR = (40, 200, 40)  # RGB
OUTLIER_COLOUR = (220, 60, 60)
GAP = 10  # pixels between the two images


def side_by_side(left, right, gap=GAP):
    """One white canvas with left and right (uint8 RGB) top-aligned; returns (canvas, x offset of
    right)."""
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + gap + right.shape[1], 3), 255, dtype=np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: right.shape[0], left.shape[1] + gap :] = right
    return canvas, left.shape[1] + gap


def draw_matches(
    query_image,
    index_image,
    query_points,
    index_points,
    inliers=None,
    show_outliers=False,
    thickness=1,
):
    """Canvas with lines between matched (x, y) points: inliers green, other putative matches red if
    asked."""
    canvas, offset = side_by_side(query_image, index_image)
    query_points = np.asarray(query_points, dtype=np.float64).reshape(-1, 2)
    index_points = np.asarray(index_points, dtype=np.float64).reshape(-1, 2) + [offset, 0]
    inliers = (
        np.ones(len(query_points), bool) if inliers is None else np.asarray(inliers, dtype=bool)
    )
    layers = [(~inliers, OUTLIER_COLOUR)] if show_outliers else []
    for selection, colour in layers + [(inliers, INLIER_COLOUR)]:
        for start, end in zip(query_points[selection], index_points[selection]):
            start, end = tuple(int(round(v)) for v in start), tuple(int(round(v)) for v in end)
            cv2.line(canvas, start, end, colour, thickness, cv2.LINE_AA)
            cv2.circle(canvas, start, 2, colour, -1, cv2.LINE_AA)
            cv2.circle(canvas, end, 2, colour, -1, cv2.LINE_AA)
    return canvas


def match_picture(
    query_image,
    query_features,
    index_image,
    index_features,
    options,
    show_outliers=False,
    device="cpu",
    names=(),
):
    """(picture, inlier count) for two images and their (locations, descriptors); names (query,
    index) head the caption."""
    ((query_rows, index_rows),) = putative_matches(
        query_features[1],
        [index_features[1]],
        options.max_distance,
        options.ratio_test,
        options.mutual,
        device,
        options.match_precision,
    )
    query_points = np.asarray(query_features[0])[query_rows]
    index_points = np.asarray(index_features[0])[index_rows]
    inliers = inlier_mask(query_points, index_points, options)
    picture = draw_matches(
        query_image, index_image, query_points, index_points, inliers, show_outliers
    )
    caption = f"{int(inliers.sum())} inliers / {len(inliers)} putative ({options.method})"
    if names:
        caption = f"query {names[0]} (left) vs {names[1]} (right): {caption}"
    # readable, and not wider than small pictures
    scale = float(np.clip(picture.shape[1] / 900, 0.3, 0.7))
    origin = (6, int(8 + 24 * scale))
    put_caption(picture, caption, origin, scale)
    return picture, int(inliers.sum())


def load_image_and_features(store, dataset, name):
    """(uint8 RGB image in the frame of the store's keypoints, (locations, descriptors)) of one
    image."""
    image = read_image(dataset.image_path(name))
    box = store.crop_boxes.get(name)
    if box is not None:
        x1, y1, x2, y2 = (int(value) for value in box)
        image = np.ascontiguousarray(image[y1:y2, x1:x2])
    features = store.local(name)
    return image, (features["locations"], features["descriptors"])


def main(argv=None):
    return run_reporting_errors("matches", _main, argv)


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    parser.add_argument("--query", required=True, help="query image name (as in the ground truth)")
    parser.add_argument("--index", required=True, help="database image name")
    parser.add_argument("--out", default="matches.png", help="output PNG")
    parser.add_argument(
        "--outliers", action="store_true", help="also draw the putative matches that failed"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    args = parser.parse_args(argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    query_store, database_store = open_store_pair(features_dir(cfg), cfg.EVAL.DATASET)
    dataset = RevisitopDataset(cfg.EVAL.DATA_ROOT, split_dataset_name(cfg.EVAL.DATASET)[0])
    query_image, query_features = load_image_and_features(query_store, dataset, args.query)
    index_image, index_features = load_image_and_features(database_store, dataset, args.index)
    picture, inliers = match_picture(
        query_image,
        query_features,
        index_image,
        index_features,
        options_from_cfg(cfg),
        args.outliers,
        names=(args.query, args.index),
    )
    write_png(args.out, picture)
    print(f"{args.out}: {args.query} vs {args.index}, {inliers} inliers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
