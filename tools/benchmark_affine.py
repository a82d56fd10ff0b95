"""Benchmark: our ``SV.METHOD affine`` against the official DELG re-ranking's geometric
verification on real photos (scikit-image's sample images), inlier counts per pair.

Official procedure (``detect_to_retrieve/image_reranking.py``, ``MatchFeatures``): the nearest
index descriptor of each query descriptor within distance 1.0 (``scipy.spatial.cKDTree``), no
score below 4 putative matches, then ``skimage.measure.ransac((index points, query points),
AffineTransform, min_samples=3, residual_threshold=20, max_trials=1000)``; the score is the number
of inliers. Ours: ``compute_num_inliers(..., method="affine")`` with the same settings. Features:
OpenCV SIFT (at most --features per image), L2-normalised. Pairs (query, index): same scene = a
photo and a known warp of it, and the two views of scikit-image's stereo motorcycle; different
scenes = two different photos, among them the repeated textures brick, grass and gravel.

    python tools/benchmark_affine.py [--features 1000] [--seeds 3]

Prints one row per pair (mean over seeds of both procedures) and the means per kind; last line:
``ratio: <our mean / official mean over all pairs>``. Needs scikit-image (a test-only dependency).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import warnings  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from core.hardware import describe_machine  # noqa: E402
from tools.rerank.spatial_verification import compute_num_inliers  # noqa: E402

DISTANCE, RESIDUAL, TRIALS = 1.0, 20.0, 1000
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "brick", "grass", "gravel")
# (query, index) pairs; "warp:<photo>" is the photo under WARP
SAME_SCENE = [
    ("astronaut", "warp:astronaut"),
    ("coffee", "warp:coffee"),
    ("chelsea", "warp:chelsea"),
    ("rocket", "warp:rocket"),
    ("camera", "warp:camera"),
    ("brick", "warp:brick"),
    ("motorcycle_left", "motorcycle_right"),
]
DIFFERENT_SCENES = [
    ("astronaut", "coffee"),
    ("coffee", "rocket"),
    ("chelsea", "camera"),
    ("rocket", "astronaut"),
    ("camera", "coins"),
    ("coins", "chelsea"),
    ("brick", "astronaut"),
    ("astronaut", "brick"),
    ("brick", "camera"),
    ("grass", "coffee"),
    ("coffee", "gravel"),
    ("gravel", "brick"),
]
# rotation about 11 degrees, scale about 0.86, shear and a translation, then a mild perspective
WARP = np.array([[0.82, -0.2, 40.0], [0.16, 0.86, 25.0], [1.5e-4, -1e-4, 1.0]])


def _gray(name):
    from skimage import data

    if name.startswith("motorcycle"):
        left, right, _ = data.stereo_motorcycle()
        image = left if name == "motorcycle_left" else right
    else:
        image = getattr(data, name.removeprefix("warp:"))()
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    if name.startswith("warp:"):
        image = cv2.warpPerspective(image, WARP, (image.shape[1], image.shape[0]))
    return image


def sift_features(name, max_features):
    """(locations [n, 2] (x, y), L2-normalised descriptors [n, 128] float32) of a named image."""
    keypoints, descriptors = cv2.SIFT_create(nfeatures=max_features).detectAndCompute(
        _gray(name), None
    )
    locations = np.array([keypoint.pt for keypoint in keypoints], np.float64)
    descriptors = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
    return locations[:max_features], descriptors[:max_features].astype(np.float32)


def official_putative(query, index):
    """(query points, index points) of the official KD-tree matching."""
    _, nearest = cKDTree(index[1]).query(query[1], distance_upper_bound=DISTANCE)
    found = nearest != len(index[1])
    return query[0][found], index[0][nearest[found]]


def official_inliers(query, index, seed):
    """The official score: scikit-image's RANSAC from the index to the query points."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    query_points, index_points = official_putative(query, index)
    if len(query_points) <= 3:
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, inliers = ransac(
            (index_points, query_points),
            AffineTransform,
            min_samples=3,
            residual_threshold=RESIDUAL,
            max_trials=TRIALS,
            rng=seed,
        )
    return 0 if inliers is None else int(np.sum(inliers))


def our_inliers(query, index, seed):
    return compute_num_inliers(
        query[0],
        query[1],
        index[0],
        index[1],
        method="affine",
        max_distance=DISTANCE,
        inlier_threshold=RESIDUAL,
        max_iters=TRIALS,
        seed=seed,
    )


def pair_table(pairs, max_features, seeds):
    """[(query, index, putative matches, official mean, our mean)] over the given seeds."""
    cache = {}

    def features(name):
        if name not in cache:
            cache[name] = sift_features(name, max_features)
        return cache[name]

    rows = []
    for query_name, index_name in pairs:
        query, index = features(query_name), features(index_name)
        official = np.mean([official_inliers(query, index, seed) for seed in range(seeds)])
        ours = np.mean([our_inliers(query, index, seed) for seed in range(seeds)])
        rows.append(
            (query_name, index_name, len(official_putative(query, index)[0]), official, ours)
        )
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=1000, help="SIFT features per image")
    parser.add_argument("--seeds", type=int, default=3, help="RANSAC seeds per pair")
    args = parser.parse_args(argv)
    print("| kind | query | index | putative | official inliers | ours | ours / official |")
    print("|---|---|---|---|---|---|---|")
    totals = {}
    for kind, pairs in (("same scene", SAME_SCENE), ("different scenes", DIFFERENT_SCENES)):
        rows = pair_table(pairs, args.features, args.seeds)
        for query, index, putative, official, ours in rows:
            ratio = ours / official if official else float("nan")
            print(
                f"| {kind} | {query} | {index} | {putative} | {official:.1f} | {ours:.1f} | "
                f"{ratio:.2f} |"
            )
        totals[kind] = (np.mean([row[3] for row in rows]), np.mean([row[4] for row in rows]))
    for kind, (official, ours) in totals.items():
        print(f"{kind}: mean official {official:.1f}, ours {ours:.1f} ({ours / official:.3f})")
    official_all = np.mean([official for official, _ in totals.values()])
    ours_all = np.mean([ours for _, ours in totals.values()])
    print(describe_machine())
    print(f"ratio: {ours_all / official_all:.3f}")


if __name__ == "__main__":
    main()
