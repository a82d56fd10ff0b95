"""alpha-QE, alpha-DBA and SuperGlobal against direct implementations of their formulas (NumPy,
float64, one row at a time, stable argsort for the ranking order), on random data with negative
similarities and on data with exact ties."""

import numpy as np
import pytest
import torch

from tools.knn.global_search import first_k
from tools.rerank import database_augmentation as dba
from tools.rerank.database_augmentation import augment_blocks, database_augmentation
from tools.rerank.query_expansion import alpha_query_expansion
from tools.rerank.superglobal import reranked_order, superglobal_rerank


def _unit(rows):
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _random(rng, count, dim=16):
    return _unit(rng.standard_normal((count, dim)))


def _tied(rng, count, dim=16):
    """Entries +-0.25 in 16 dimensions: unit norm exactly and every inner product a multiple of
    1/16, exact in float32, so many scores tie; some rows are exact duplicates."""
    rows = rng.choice([-0.25, 0.25], size=(count, dim)).astype(np.float32)
    rows[count // 2 :: 5] = rows[1]
    return rows


def _weights(similarities, alpha, negative):
    if negative == "clamp":
        return np.maximum(similarities, 0.0) ** alpha
    return np.sign(similarities) * np.abs(similarities) ** alpha


def _first(scores, count):
    """Positions of the `count` first items: score descending, ties by lowest position."""
    return np.argsort(-scores, kind="stable")[:count]


def _normalise(vector):
    return vector / np.linalg.norm(vector)


def reference_qe(queries, database, k, alpha, negative):
    database = database.astype(np.float64)
    out = []
    for query in queries.astype(np.float64):
        scores = database @ query
        total = query.copy()
        for j in _first(scores, k):
            total += _weights(scores[j], alpha, negative) * database[j]
        out.append(_normalise(total))
    return np.array(out)


def reference_dba(database, k, alpha, negative):
    database = database.astype(np.float64)
    out = []
    for i, row in enumerate(database):
        scores = database @ row
        scores[i] = -np.inf  # the image itself comes first, weight 1
        total = row.copy()
        for j in _first(scores, k - 1):
            total += _weights(scores[j], alpha, negative) * database[j]
        out.append(_normalise(total))
    return np.array(out)


def reference_superglobal(query, shortlisted, k, beta):
    x = shortlisted.astype(np.float64)
    similarities = x @ x.T
    refined = []
    for i in range(len(x)):
        scores = similarities[i].copy()
        scores[i] = -np.inf
        neighbours = _first(scores, k)
        weights = np.concatenate([[1.0], beta * similarities[i, neighbours]])
        rows = np.concatenate([x[i : i + 1], x[neighbours]])
        refined.append((weights[:, None] * rows).sum(axis=0) / weights.sum())
    refined = np.array(refined)
    first_scores = refined @ query
    expanded = refined[_first(first_scores, k + 1)].max(axis=0)
    return (first_scores + refined @ expanded) / 2


@pytest.mark.parametrize("data", [_random, _tied])
@pytest.mark.parametrize(("alpha", "negative"), [(3.0, "clamp"), (3.0, "sign"), (2.0, "sign")])
@pytest.mark.parametrize("k", [1, 3, 40])
def test_alpha_qe_matches_the_formula(data, alpha, negative, k):
    rng = np.random.default_rng(k)
    database, queries = data(rng, 40), data(rng, 6)
    expanded = alpha_query_expansion(queries, database, k, alpha, negative, chunk_size=7)
    np.testing.assert_allclose(
        expanded, reference_qe(queries, database, k, alpha, negative), atol=2e-6
    )
    np.testing.assert_allclose(np.linalg.norm(expanded, axis=1), 1.0, atol=1e-6)


def test_alpha_qe_negative_rules_differ_when_negative_neighbours_count():
    rng = np.random.default_rng(1)
    database, queries = _random(rng, 10), _random(rng, 4)
    clamp = alpha_query_expansion(queries, database, 10, 2.0, "clamp")
    sign = alpha_query_expansion(queries, database, 10, 2.0, "sign")
    assert np.abs(clamp - sign).max() > 1e-3
    with pytest.raises(ValueError, match="clamp"):
        alpha_query_expansion(queries, database, 2, 3.0, "absolute")


@pytest.mark.parametrize("data", [_random, _tied])
@pytest.mark.parametrize(("alpha", "negative"), [(3.0, "clamp"), (2.0, "sign")])
@pytest.mark.parametrize("k", [1, 2, 10, 57])
def test_alpha_dba_matches_the_formula(data, alpha, negative, k):
    database = data(np.random.default_rng(k), 57)
    augmented = database_augmentation(database, k, alpha, negative, chunk_size=16)
    np.testing.assert_allclose(augmented, reference_dba(database, k, alpha, negative), atol=2e-6)


@pytest.mark.parametrize("data", [_random, _tied])
def test_alpha_dba_chunked_equals_unchunked_exactly(data):
    database = data(np.random.default_rng(5), 203)
    whole = database_augmentation(database, 10, 3.0, chunk_size=1000)
    for chunk_size in (7, 64, 202):
        assert np.array_equal(
            database_augmentation(database, 10, 3.0, chunk_size=chunk_size), whole
        )


@pytest.mark.parametrize("data", [_random, _tied])
def test_alpha_dba_segment_filter_matches_the_formula(data, monkeypatch):
    """Blocks of a multiple of SEGMENT rows go through the segment filter once a top-k is full, for
    the block's rows and for its columns; with exact ties and duplicates it still equals the
    formula, and the plain path (blocks of 100 rows) bit for bit."""
    database = data(np.random.default_rng(8), 4 * dba.SEGMENT + 37)
    merged = []
    original = dba._merge_segments
    monkeypatch.setattr(dba, "_merge_segments", lambda *args: merged.append(1) or original(*args))
    augmented = database_augmentation(database, 6, 3.0, chunk_size=dba.SEGMENT)
    assert len(merged) >= 6  # rows and columns of the later block pairs
    np.testing.assert_allclose(augmented, reference_dba(database, 6, 3.0, "clamp"), atol=2e-6)
    merged.clear()
    assert np.array_equal(database_augmentation(database, 6, 3.0, chunk_size=100), augmented)
    assert not merged


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_alpha_dba_gpu_matches_cpu():
    """The same neighbours on CUDA, through the segment filter and the plain path alike."""
    database = _tied(np.random.default_rng(9), 6 * dba.SEGMENT + 11)
    for chunk_size in (dba.SEGMENT, 100):
        cpu = database_augmentation(database, 8, 3.0, chunk_size=chunk_size, device="cpu")
        gpu = database_augmentation(database, 8, 3.0, chunk_size=chunk_size, device="cuda")
        np.testing.assert_allclose(gpu, cpu, atol=1e-6)


def test_alpha_dba_blocks_skipped_as_done_leave_the_others_unchanged():
    database = _random(np.random.default_rng(6), 100)
    whole = database_augmentation(database, 5, 3.0, chunk_size=16)
    blocks = list(augment_blocks(database, 5, 3.0, chunk_size=16, done={0, 48, 96}))
    assert [start for start, _, _ in blocks] == [16, 32, 64, 80]
    for start, stop, rows in blocks:
        assert np.array_equal(rows, whole[start:stop])


@pytest.mark.parametrize("data", [_random, _tied])
@pytest.mark.parametrize(("k", "beta"), [(9, 0.15), (3, 1.0), (0, 0.5)])
def test_superglobal_matches_the_formula(data, k, beta):
    rng = np.random.default_rng(k)
    database, queries = data(rng, 80), data(rng, 4)
    shortlist = np.stack([_first(database @ query, 30) for query in queries])
    scores = superglobal_rerank(queries, database, shortlist, k, beta)
    assert scores.shape == (4, 30)
    for query, ids, row in zip(queries, shortlist, scores):
        expected = reference_superglobal(query.astype(np.float64), database[ids], k, beta)
        np.testing.assert_allclose(row, expected, atol=2e-6)


def test_superglobal_without_neighbours_keeps_the_descriptors_and_adds_the_best_image():
    """K = 0, beta = 0: the refinement is the identity (s_i = q . x_i, which alone would keep the
    initial order); the expansion still adds the first image's similarity x_1 . x_i."""
    rng = np.random.default_rng(3)
    database, queries = _random(rng, 50), _random(rng, 3)
    shortlist = np.stack([_first(database @ query, 20) for query in queries])
    scores = superglobal_rerank(queries, database, shortlist, 0, 0.0)
    for query, ids, row in zip(queries, shortlist, scores):
        shortlisted = database[ids].astype(np.float64)
        initial = shortlisted @ query
        np.testing.assert_allclose(row, (initial + shortlisted @ shortlisted[0]) / 2, atol=2e-6)
        # the top image keeps its place: both of its terms are the largest
        assert reranked_order(ids, row)[0] == ids[0]


def test_reranked_order_breaks_ties_by_initial_position():
    ids = np.array([7, 3, 9, 1])
    assert reranked_order(ids, np.array([0.5, 0.9, 0.5, 0.9])).tolist() == [3, 1, 7, 9]


@pytest.mark.parametrize("k", [0, 1, 3, 9, 20])
def test_first_k_keeps_the_lowest_indices_among_ties_at_the_kth_place(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(50, 20)).astype(np.float32)  # ties everywhere
    values, indices = first_k(torch.from_numpy(scores), torch.arange(20).unsqueeze(0), k)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    assert np.array_equal(np.sort(indices.numpy(), axis=1), np.sort(expected, axis=1))
    assert np.array_equal(values.numpy(), np.take_along_axis(scores, indices.numpy(), 1))
