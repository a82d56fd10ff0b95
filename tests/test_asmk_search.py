import dataclasses
import json
import os

import numpy as np
import pytest
from asmk import ASMKMethod

from core.config import cfg as global_cfg
from tools.rerank.asmk_search import (
    AsmkIndex,
    AsmkParams,
    cache_dir_from_cfg,
    flatten_local,
    params_from_cfg,
)

DIM = 64
LANDMARKS = 6
IMAGES_PER_LANDMARK = 4
PARAMS = AsmkParams(codebook_size=32, train_features=100_000)


def _image(rng, parts, count=48, clutter=8):
    """Descriptors of one view: noisy copies of its landmark's parts plus random clutter, float16 as
    in the store."""
    chosen = parts[rng.integers(len(parts), size=count)] + 0.1 * rng.normal(size=(count, DIM))
    descriptors = np.concatenate([chosen, rng.normal(size=(clutter, DIM))])
    return (descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)).astype(np.float16)


def _dataset(seed=0, trailing_empty=True):
    """Database and query views of synthetic landmarks; some images of both have no local features
    at all."""
    rng = np.random.default_rng(seed)
    parts = rng.normal(size=(LANDMARKS, 12, DIM))
    database, labels = [], []
    for landmark in range(LANDMARKS):
        for _ in range(IMAGES_PER_LANDMARK):
            database.append(_image(rng, parts[landmark]))
            labels.append(landmark)
    empty = np.zeros((0, DIM), np.float16)
    database.insert(5, empty)
    labels.insert(5, -1)
    if trailing_empty:
        database.append(empty)
        labels.append(-1)
    queries = [_image(rng, parts[landmark]) for landmark in range(LANDMARKS)]
    queries.insert(2, empty)
    query_labels = list(range(LANDMARKS))
    query_labels.insert(2, -1)
    return flatten_local(database), np.array(labels), flatten_local(queries), np.array(query_labels)


def _build(database, params=PARAMS, **kwargs):
    descriptors, image_ids, num_images = database
    return AsmkIndex.build(descriptors, image_ids, params, num_images=num_images, **kwargs)


def test_search_ranks_the_landmarks_images_first_and_survives_empty_images():
    database, labels, (q_descriptors, q_ids, num_queries), query_labels = _dataset()
    index = _build(database)
    ranks, scores = index.search(q_descriptors, q_ids, num_queries=num_queries)
    assert ranks.shape == scores.shape == (num_queries, len(labels))
    for query, landmark in enumerate(query_labels):
        if landmark < 0:  # no features: nothing matches, the order is the database order
            assert not scores[query].any() and (ranks[query] == np.arange(len(labels))).all()
            continue
        top = ranks[query, :IMAGES_PER_LANDMARK]
        assert (labels[top] == landmark).all(), (query, top)
        assert scores[query, IMAGES_PER_LANDMARK - 1] > 1.5 * scores[query, IMAGES_PER_LANDMARK]
    assert (np.diff(scores, axis=1) <= 0).all()
    empty_images = np.flatnonzero(labels < 0)
    full = index.score_matrix(q_descriptors, q_ids, num_queries)
    assert not full[:, empty_images].any()
    top3, _ = index.search(q_descriptors, q_ids, topk=3, num_queries=num_queries)
    np.testing.assert_array_equal(top3, ranks[:, :3])


def test_rerank_reorders_only_the_shortlist():
    database, labels, (q_descriptors, q_ids, num_queries), query_labels = _dataset()
    index = _build(database)
    rng = np.random.default_rng(3)
    shortlist = np.stack([rng.permutation(len(labels))[:12] for _ in range(num_queries)])
    for query, landmark in enumerate(
        query_labels
    ):  # make sure two right images sit at the end of the shortlist
        if landmark >= 0:
            right = np.flatnonzero(labels == landmark)[:2]
            others = [item for item in shortlist[query] if item not in right][:10]
            shortlist[query] = np.concatenate([others, right])
    reordered, scores = index.rerank(shortlist, q_descriptors, q_ids)
    assert reordered.shape == scores.shape == shortlist.shape
    for query, landmark in enumerate(query_labels):
        assert sorted(reordered[query]) == sorted(shortlist[query])
        if landmark < 0:  # all scores 0: the global order is kept
            np.testing.assert_array_equal(reordered[query], shortlist[query])
            continue
        in_shortlist = int((labels[shortlist[query]] == landmark).sum())
        assert (labels[reordered[query, :in_shortlist]] == landmark).all()
    with pytest.raises(ValueError, match="outside"):
        index.rerank(shortlist + len(labels), q_descriptors, q_ids)


def test_second_build_reuses_the_cache_and_a_change_rebuilds_it(tmp_path):
    database, _, (q_descriptors, q_ids, num_queries), _ = _dataset()
    first = _build(database, cache_dir=tmp_path)
    assert first.codebook_trained and first.ivf_built
    files = sorted(path for path in tmp_path.rglob("*") if path.is_file())
    stamps = {path: os.stat(path).st_mtime_ns for path in files}
    for path in files:  # our cache holds no pickles
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        else:
            json.loads(path.read_text())

    second = _build(database, cache_dir=tmp_path)
    assert not second.codebook_trained and not second.ivf_built
    assert {path: os.stat(path).st_mtime_ns for path in files} == stamps
    np.testing.assert_array_equal(
        second.score_matrix(q_descriptors, q_ids, num_queries),
        first.score_matrix(q_descriptors, q_ids, num_queries),
    )

    other_kernel = _build(
        database,
        dataclasses.replace(PARAMS, binary=False, train_features=10**6),
        cache_dir=tmp_path,
    )
    assert not other_kernel.codebook_trained and other_kernel.ivf_built

    descriptors, image_ids, num_images = database
    changed = descriptors.copy()
    changed[0] = -changed[0]
    rebuilt = _build((changed, image_ids, num_images), cache_dir=tmp_path)
    assert rebuilt.codebook_trained and rebuilt.ivf_built


def test_inverted_file_equals_the_packages_own():
    database, _, (q_descriptors, q_ids, _), _ = _dataset(trailing_empty=False)
    descriptors, image_ids, num_images = database
    for use_idf in (False, True):
        params = AsmkParams(codebook_size=32, use_idf=use_idf)
        ours = _build(database, params)
        reference = ASMKMethod(params.package_params(), {}, codebook=ours.method.codebook)
        reference = reference.build_ivf(descriptors.astype(np.float32), image_ids.copy())
        _, images, ranks, scores = reference.query_ivf(q_descriptors, q_ids)
        expected = np.zeros((len(images), num_images))
        np.put_along_axis(expected, ranks, scores, axis=1)
        np.testing.assert_allclose(
            ours.score_matrix(q_descriptors, q_ids)[images], expected, atol=1e-6
        )


def test_codebook_sample_follows_the_seed():
    database = _dataset()[0]
    params = AsmkParams(codebook_size=16, train_features=200)
    centroids = [
        _build(database, params, seed=seed).method.codebook.centroids for seed in (0, 0, 1)
    ]
    np.testing.assert_array_equal(centroids[0], centroids[1])
    assert not np.allclose(centroids[0], centroids[2])


def test_params_and_cache_dir_come_from_the_config():
    cfg = global_cfg.clone()
    cfg.ASMK.CODEBOOK_SIZE, cfg.ASMK.BINARY, cfg.ASMK.MULTIPLE_ASSIGNMENT_QUERY = 128, False, 3
    cfg.ASMK.ALPHA, cfg.ASMK.SIMILARITY_THRESHOLD, cfg.ASMK.TRAIN_FEATURES = 2.0, 0.1, 5000
    params = params_from_cfg(cfg)
    assert params == AsmkParams(
        codebook_size=128,
        train_features=5000,
        binary=False,
        multiple_assignment_db=1,
        multiple_assignment_query=3,
        alpha=2.0,
        similarity_threshold=0.1,
    )
    package = params.package_params()
    assert package["train_codebook"]["codebook"]["size"] == 128
    assert package["build_ivf"]["kernel"]["binary"] is False
    assert package["query_ivf"]["similarity"] == {"similarity_threshold": 0.1, "alpha": 2.0}
    cfg.OUT_DIR, cfg.ASMK.CACHE_DIR = "out", ""
    assert cache_dir_from_cfg(cfg) == os.path.join("out", "asmk")
    cfg.ASMK.CACHE_DIR = "elsewhere"
    assert cache_dir_from_cfg(cfg) == "elsewhere"


def test_bad_input_is_named():
    (descriptors, image_ids, num_images), _, (q_descriptors, q_ids, _), _ = _dataset()
    with pytest.raises(ValueError, match="non-decreasing"):
        AsmkIndex.build(descriptors, image_ids[::-1], PARAMS)
    with pytest.raises(ValueError, match="ASMK.CODEBOOK_SIZE"):
        AsmkIndex.build(descriptors[:10], image_ids[:10], PARAMS)
    with pytest.raises(ValueError, match="only 3 images"):
        AsmkIndex.build(descriptors, image_ids, PARAMS, num_images=3)
    index = AsmkIndex.build(descriptors, image_ids, PARAMS, num_images=num_images)
    with pytest.raises(ValueError, match="dimensions"):
        index.score_matrix(q_descriptors[:, :8], q_ids)
