import numpy as np
import pytest
from scipy.spatial import cKDTree

from tools.rerank.matching import putative_matches
from tools.rerank.spatial_verification import (
    VerificationOptions,
    compute_num_inliers,
    count_inliers,
    rerank_with_spatial_verification,
)

HOMOGRAPHY = np.array([[0.9, 0.08, 25.0], [-0.05, 1.1, -15.0], [2e-4, -1e-4, 1.0]])
AFFINE = np.array([[1.2, -0.1, 40.0], [0.15, 0.85, 10.0], [0.0, 0.0, 1.0]])


def _unit(rows):
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _apply(transform, points):
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ transform.T
    return homogeneous[:, :2] / homogeneous[:, 2:]


def planted_pair(seed, planted=60, wrong=40, transform=HOMOGRAPHY, size=300, dim=64):
    """Index image with `size` features; the query holds `planted` matches that map to the index by
    `transform`, `wrong` descriptor matches at random places, and random features that match
    nothing."""
    rng = np.random.default_rng(seed)
    index_descriptors = _unit(rng.standard_normal((size, dim)))
    index_locations = rng.uniform(0, 600, (size, 2))
    chosen = rng.choice(size, planted + wrong, replace=False)
    query_descriptors = _unit(rng.standard_normal((size, dim)))
    noise = 0.05 * rng.standard_normal((len(chosen), dim))
    query_descriptors[: planted + wrong] = _unit(index_descriptors[chosen] + noise)
    query_locations = rng.uniform(0, 600, (size, 2))
    query_locations[:planted] = _apply(np.linalg.inv(transform), index_locations[chosen[:planted]])
    query_locations[:planted] += rng.normal(0, 1.0, (planted, 2))
    return query_locations, query_descriptors, index_locations, index_descriptors


@pytest.mark.parametrize(
    "method, transform", [("degensac", HOMOGRAPHY), ("magsac", HOMOGRAPHY), ("affine", AFFINE)]
)
def test_known_transform_inliers_are_found(method, transform):
    features = planted_pair(0, planted=60, wrong=40, transform=transform)
    inliers = compute_num_inliers(*features, method=method)
    # the 40 wrong matches are rejected (a random one may fall close)
    assert 60 <= inliers <= 63, (method, inliers)
    assert compute_num_inliers(*features, method=method) == inliers  # seeded: repeats exactly


def test_default_options_are_the_documented_ones():
    options = VerificationOptions()
    assert (
        options.method,
        options.max_distance,
        options.ratio_test,
        options.inlier_threshold,
        options.confidence,
        options.max_iters,
    ) == ("degensac", 1.0, 0.0, 20.0, 1.0, 1000)
    with pytest.raises(ValueError, match="method"):
        VerificationOptions(method="lmeds")


def test_unrelated_images_have_few_inliers():
    features = planted_pair(1, planted=0, wrong=80)
    assert compute_num_inliers(*features) < 12


@pytest.mark.parametrize("method", ["degensac", "affine", "magsac"])
def test_too_few_or_degenerate_matches_count_zero(method):
    options = VerificationOptions(method=method)
    rng = np.random.default_rng(2)
    assert count_inliers(rng.uniform(0, 99, (3, 2)), rng.uniform(0, 99, (3, 2)), options) == 0
    # every point the same: no model
    assert count_inliers(np.zeros((30, 2)), np.ones((30, 2)), options) == 0
    points = np.stack([np.arange(30.0), 2 * np.arange(30.0)], axis=1)  # collinear on both sides
    # whatever it is, it does not raise
    assert count_inliers(points, points + 5, options) in range(0, 31)
    broken = rng.uniform(0, 99, (10, 2))
    broken[0, 0] = np.nan
    assert count_inliers(broken, broken, options) == 0


def test_putative_matches_equal_a_kd_tree_with_a_distance_bound():
    query_locations, query_descriptors, _, index_descriptors = planted_pair(3, planted=50, wrong=30)
    unrelated = _unit(np.random.default_rng(4).standard_normal((90, 64)))
    others = [index_descriptors[:0], index_descriptors[:150], unrelated]
    matches = putative_matches(query_descriptors.astype(np.float16), [index_descriptors] + others)
    for (query_rows, index_rows), descriptors in zip(matches, [index_descriptors] + others):
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if len(descriptors) == 0:
            assert len(query_rows) == 0
            continue
        distances, nearest = cKDTree(descriptors).query(
            query_descriptors.astype(np.float16).astype(np.float32), distance_upper_bound=1.0
        )
        expected = np.flatnonzero(np.isfinite(distances))
        assert np.array_equal(query_rows, expected) and np.array_equal(
            index_rows, nearest[expected]
        )
    # the 80 planted ones (a random pair may fall under 1.0 as well)
    assert len(matches[0][0]) >= 80


def test_matching_near_the_distance_bound_equals_float64_brute_force():
    """The bfloat16 first pass may only drop descriptors that cannot match: check it where it is
    hardest, with nearest-neighbour distances spread tightly around the bound and descriptors of
    uneven length."""
    rng = np.random.default_rng(8)
    index = _unit(rng.standard_normal((400, 128))) * rng.uniform(0.7, 1.3, (400, 1)).astype(
        np.float32
    )
    partners = index[rng.integers(0, 400, 600)]
    query = (
        partners
        + rng.standard_normal((600, 128)).astype(np.float32) * rng.uniform(0.07, 0.1, (600, 1))
    ).astype(np.float32)
    distances = np.linalg.norm(
        query[:, None].astype(np.float64) - index[None].astype(np.float64), axis=2
    )
    nearest = distances.argmin(axis=1)
    first = distances[np.arange(600), nearest]
    assert 100 < np.count_nonzero(np.abs(first - 1.0) < 0.05) and 0.2 < np.mean(first < 1.0) < 0.8
    ((rows, cols),) = putative_matches(query, [index], max_distance=1.0)
    # leave out the few whose float32 and float64 answers may differ
    clear = np.abs(first - 1.0) > 1e-5
    expected = np.flatnonzero((first < 1.0) & clear)
    assert np.array_equal(np.intersect1d(rows, np.flatnonzero(clear)), expected)
    assert np.array_equal(cols[np.isin(rows, expected)], nearest[expected])


def test_ratio_test_and_mutual_check_follow_their_definitions():
    rng = np.random.default_rng(5)
    query, index = _unit(rng.standard_normal((80, 8))), _unit(rng.standard_normal((60, 8)))
    distances = np.linalg.norm(query[:, None] - index[None], axis=2)
    order = np.argsort(distances, axis=1)
    nearest, first, second = (
        order[:, 0],
        distances[np.arange(80), order[:, 0]],
        distances[np.arange(80), order[:, 1]],
    )
    backward = np.argmin(distances, axis=0)
    ((rows, cols),) = putative_matches(query, [index], max_distance=1.2, ratio_test=0.8)
    expected = np.flatnonzero((first < 1.2) & (first < 0.8 * second))
    assert (
        len(expected) > 3
        and np.array_equal(rows, expected)
        and np.array_equal(cols, nearest[expected])
    )
    ((rows, cols),) = putative_matches(query, [index], max_distance=1.2, mutual=True)
    expected = np.flatnonzero((first < 1.2) & (backward[nearest] == np.arange(80)))
    assert len(expected) > 3 and np.array_equal(rows, expected)


def test_rerank_verifies_the_union_once_and_orders_by_inliers_then_global_order():
    planted = [50, 0, 20, 0, 35, 15]
    pairs = [planted_pair(10 + i, planted=count, wrong=10) for i, count in enumerate(planted)]
    # image 6 is a copy of image 1: equal inliers, so the global order must decide
    pairs.append(pairs[1])
    # one query whose features are the concatenation of every pair's query features
    query_locations = np.concatenate([pair[0] for pair in pairs[:6]])
    query_descriptors = np.concatenate([pair[1] for pair in pairs[:6]])
    fetched = []

    def index_local(image):
        fetched.append(image)
        return pairs[image][2], pairs[image][3]

    shortlists = {
        "E": [np.array([1, 0, 2, 6])],
        "M": [np.array([6, 1, 0, 2, 3, 4])],
        "H": [np.array([3, 5, 4])],
    }
    reranked, inliers = rerank_with_spatial_verification(
        shortlists, lambda query: (query_locations, query_descriptors), index_local, progress=False
    )
    assert sorted(fetched) == list(range(7))  # the union of the three shortlists, each pair once
    assert set(inliers) == {(0, image) for image in range(7)}
    for image, count in enumerate(planted):
        assert count <= inliers[(0, image)] <= count + 8, (image, inliers[(0, image)])
    assert inliers[(0, 6)] == inliers[(0, 1)]
    assert reranked["E"][0].tolist() == [0, 2, 1, 6]
    assert reranked["M"][0].tolist()[:3] == [0, 4, 2] and reranked["M"][0].tolist().index(
        6
    ) < reranked["M"][0].tolist().index(1)
    assert reranked["H"][0].tolist() == [4, 5, 3]
    worker_reranked, worker_inliers = rerank_with_spatial_verification(
        shortlists,
        lambda query: (query_locations, query_descriptors),
        index_local,
        num_workers=1,
        progress=False,
    )
    assert worker_inliers == inliers and all(
        np.array_equal(worker_reranked[p][0], reranked[p][0]) for p in "EMH"
    )
