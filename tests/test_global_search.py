import numpy as np
import pytest
import torch

from tests.eval_helpers import unit_rows
from tools.knn.global_search import (
    exact_search,
    faiss_search,
    order_keys,
    score_chunks,
    search,
)
from tools.revisitop.context import global_pass
from tools.revisitop.metrics import compute_map, protocol_results_from_ranks
from tools.revisitop.protocols import protocol_gnds


def _brute_force(queries, database, k):
    scores = queries @ np.asarray(database, dtype=np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_order_keys_sort_like_a_stable_descending_argsort():
    scores = np.array(
        [0.5, -0.0, 0.0, -1.5, 0.5, 2.0, -1.5, np.inf, -np.inf, 1e-30, -1e-30], dtype=np.float32
    )
    indices = np.arange(len(scores))
    by_key = np.argsort(-order_keys(scores, indices), kind="stable")
    assert by_key.tolist() == np.argsort(-scores, kind="stable").tolist()
    with pytest.raises(ValueError, match="NaN"):
        order_keys(np.array([np.nan], dtype=np.float32), [0])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exact_search_matches_brute_force_on_a_memory_mapped_store(tmp_path, dtype):
    rng = np.random.default_rng(0)
    database = unit_rows(rng.standard_normal((1000, 32))).astype(dtype)
    np.save(tmp_path / "db.npy", database)
    database = np.load(tmp_path / "db.npy", mmap_mode="r")
    queries = unit_rows(rng.standard_normal((7, 32)))
    scores, indices = exact_search(queries, database, k=25, chunk_size=333)
    expected_scores, expected_indices = _brute_force(queries, database, 25)
    assert indices.dtype == np.int64 and indices.shape == (7, 25)
    assert np.array_equal(indices, expected_indices)
    assert np.allclose(scores, expected_scores, atol=1e-5)


def test_ties_are_broken_by_database_index_and_k_is_capped():
    database = np.array([[1, 0], [0, 1], [1, 0], [1, 0], [0.6, 0.8]], dtype=np.float32)
    scores, indices = exact_search(
        np.array([[1, 0]], dtype=np.float32), database, k=10, chunk_size=2
    )
    assert indices.tolist() == [[0, 2, 3, 4, 1]]
    assert np.allclose(scores, [[1, 1, 1, 0.6, 0]])


def test_chunks_never_exceed_the_chunk_size():
    database = np.zeros((10, 4), dtype=np.float16)
    shapes = [
        (offset, tuple(scores.shape))
        for offset, scores in score_chunks(np.ones((3, 4)), database, 4)
    ]
    assert shapes == [(0, (3, 4)), (4, (3, 4)), (8, (3, 2))]
    with pytest.raises(ValueError, match="descriptor dimension"):
        next(score_chunks(np.ones((3, 5)), database, 4))


def test_faiss_gives_the_same_top_k():
    rng = np.random.default_rng(1)
    database, queries = (
        unit_rows(rng.standard_normal((500, 16))),
        unit_rows(rng.standard_normal((5, 16))),
    )
    exact = search(queries, database, 20, chunk_size=128)
    approx = faiss_search(queries, database, 20, chunk_size=128)
    assert np.array_equal(exact[1], approx[1]) and np.allclose(exact[0], approx[0], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_search_matches_cpu():
    rng = np.random.default_rng(2)
    database, queries = (
        unit_rows(rng.standard_normal((3000, 64))),
        unit_rows(rng.standard_normal((9, 64))),
    )
    cpu = exact_search(queries, database, 50, chunk_size=1000, device="cpu")
    gpu = exact_search(queries, database, 50, chunk_size=1000, device="cuda")
    assert np.array_equal(cpu[1], gpu[1])


@pytest.mark.parametrize("chunk_size", [3, 7, 100])
def test_ties_at_the_kth_place_keep_the_lowest_database_indices(chunk_size):
    """Twelve exact duplicates of the query's best match (as among a million distractors) and k
    cutting through
    them: the first k in the ranking order are kept, whatever the chunking."""
    rng = np.random.default_rng(4)
    # small integers: every score is exact
    database = rng.integers(-3, 4, (40, 8)).astype(np.float32)
    database[5] = 5.0  # scores 200 with itself, at most 120 with any other row
    query = database[5:6].copy()
    duplicates = rng.choice(np.setdiff1d(np.arange(40), [5]), 11, replace=False)
    database[duplicates] = database[5]
    scores, indices = exact_search(query, database, k=6, chunk_size=chunk_size)
    assert indices.tolist() == [sorted([5, *duplicates.tolist()])[:6]]
    assert np.array_equal(indices, _brute_force(query, database, 6)[1])


def test_streaming_pass_gives_exact_full_database_metrics():
    """One chunked pass (with top-k) gives the same numbers as sorting the full score matrix."""
    rng = np.random.default_rng(3)
    num_database, num_queries = 2000, 6
    database, queries = (
        unit_rows(rng.standard_normal((num_database, 24))),
        unit_rows(rng.standard_normal((num_queries, 24))),
    )
    gnd_raw = []
    for _ in range(num_queries):
        chosen = rng.choice(num_database, 40, replace=False)
        gnd_raw.append({"easy": chosen[:15], "hard": chosen[15:30], "junk": chosen[30:]})
    relevant, top_scores, top_indices = global_pass(
        queries, database, gnd_raw, topk=100, chunk_size=256, device="cpu"
    )
    assert np.array_equal(top_indices, _brute_force(queries, database, 100)[1])
    ranks = np.argsort(-(database @ queries.T), axis=0, kind="stable")
    fast = protocol_results_from_ranks(relevant, gnd_raw)
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        assert fast[protocol][0] == pytest.approx(compute_map(ranks, gnd)[0], abs=1e-9)
