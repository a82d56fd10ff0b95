from pathlib import Path

import numpy as np
import pytest

from datasets.revisitop import load_ground_truth
from tools.knn.global_search import order_keys
from tools.revisitop.metrics import (
    RelevantRankCounter,
    compute_ap,
    compute_map,
    protocol_results_from_ranks,
    protocol_results_from_scores,
    relevant_items,
    summarize,
)
from tools.revisitop.protocols import PROTOCOLS, protocol_gnd, protocol_gnds

REVISITOP = Path(__file__).resolve().parents[2] / "shared" / "data" / "revisitop"
needs_shared = pytest.mark.skipif(
    not REVISITOP.is_dir(), reason=f"real revisitop ground truth not at {REVISITOP}"
)
DATASETS = ["roxford5k", "rparis6k"]
KAPPAS = (1, 5, 10)


@pytest.fixture(scope="module", params=DATASETS)
def real(request):
    if not REVISITOP.is_dir():
        pytest.skip(f"real revisitop ground truth not at {REVISITOP}")
    ground_truth = load_ground_truth(REVISITOP / f"gnd_{request.param}.pkl")
    return request.param, ground_truth["gnd"], len(ground_truth["imlist"])


def reference_metrics(ranked, ok, junk, kappas):
    """Straight from the definitions: drop junk from the list, walk it, trapezoids over recall; P@k
    with kq."""
    ok, junk = set(int(i) for i in ok), set(int(i) for i in junk)
    kept = [int(image) for image in ranked if int(image) not in junk]
    hits = [position for position, image in enumerate(kept) if image in ok]
    ap = 0.0
    for found, position in enumerate(hits):
        before = 1.0 if position == 0 else found / position
        after = (found + 1) / (position + 1)
        ap += (before + after) / 2 / len(ok)
    precisions = []
    for k in kappas:
        limit = min(max(hits) + 1, k)
        precisions.append(sum(1 for position in hits if position + 1 <= limit) / limit)
    return ap, precisions


def test_protocol_definitions():
    raw = [{"easy": [1, 2], "hard": [3], "junk": [4]}]
    assert sorted(protocol_gnd(raw, "E")[0]["ok"]) == [1, 2] and sorted(
        protocol_gnd(raw, "E")[0]["junk"]
    ) == [3, 4]
    assert sorted(protocol_gnd(raw, "M")[0]["ok"]) == [1, 2, 3] and sorted(
        protocol_gnd(raw, "M")[0]["junk"]
    ) == [4]
    assert sorted(protocol_gnd(raw, "H")[0]["ok"]) == [3] and sorted(
        protocol_gnd(raw, "H")[0]["junk"]
    ) == [1, 2, 4]
    with pytest.raises(ValueError, match="unknown protocol"):
        protocol_gnd(raw, "X")


def test_compute_ap_by_hand():
    # positives at 0 and 2 of 2: (1 + 1) / 2 / 2 + (1/2 + 2/3) / 2 / 2
    assert compute_ap([0, 2], 2) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4, abs=1e-15)
    assert compute_ap([], 3) == 0.0


def test_perfect_ranking_scores_100_everywhere(real):
    name, gnd_raw, num_database = real
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        ranks = np.empty((num_database, len(gnd)), dtype=np.int64)
        scores = np.random.default_rng(1).random((num_database, len(gnd)), dtype=np.float32)
        for query, entry in enumerate(gnd):
            rest = np.setdiff1d(np.arange(num_database), entry["ok"])
            ranks[:, query] = np.concatenate([entry["ok"], rest])
            scores[entry["ok"], query] += 2.0
        mean_ap, _, mean_pr, _ = compute_map(ranks, gnd, KAPPAS)
        assert mean_ap == pytest.approx(1.0, abs=1e-12) and np.allclose(mean_pr, 1.0), (
            name,
            protocol,
        )
        fast = summarize(protocol_results_from_scores(scores, gnd_raw, KAPPAS))[protocol]
        assert all(value == pytest.approx(100.0, abs=1e-9) for value in fast.values()), (
            name,
            protocol,
            fast,
        )


def test_random_ranking_matches_a_straightforward_implementation(real):
    name, gnd_raw, num_database = real
    rng = np.random.default_rng(7)
    ranks = np.stack([rng.permutation(num_database) for _ in gnd_raw], axis=1)
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        mean_ap, aps, mean_pr, prs = compute_map(ranks, gnd, KAPPAS)
        expected = [
            reference_metrics(ranks[:, q], entry["ok"], entry["junk"], KAPPAS)
            if len(entry["ok"])
            else None
            for q, entry in enumerate(gnd)
        ]
        kept = [e for e in expected if e is not None]
        assert mean_ap == pytest.approx(np.mean([ap for ap, _ in kept]), abs=1e-12)
        assert np.allclose(mean_pr, np.mean([pr for _, pr in kept], axis=0), atol=1e-12, rtol=0)
        for query, item in enumerate(expected):
            if item is not None:
                assert aps[query] == pytest.approx(item[0], abs=1e-12) and np.allclose(
                    prs[query], item[1]
                )
        # a random ranking scores low, but not zero
        assert 0.0 < mean_ap < 0.2, (name, protocol, mean_ap)


def test_two_roxford_queries_without_easy_images_are_left_out_of_easy():
    if not REVISITOP.is_dir():
        pytest.skip(f"real revisitop ground truth not at {REVISITOP}")
    gnd_raw = load_ground_truth(REVISITOP / "gnd_roxford5k.pkl")["gnd"]
    ranks = np.tile(np.arange(4993)[:, None], (1, 70))
    mean_ap, aps, mean_pr, prs = compute_map(ranks, protocol_gnd(gnd_raw, "E"), KAPPAS)
    left_out = np.flatnonzero(np.isnan(aps))
    assert len(left_out) == 2 and all(len(gnd_raw[q]["easy"]) == 0 for q in left_out)
    assert np.isnan(prs[left_out]).all()
    assert mean_ap == pytest.approx(np.nanmean(aps), abs=1e-15)
    assert mean_ap != pytest.approx(np.nansum(aps) / 70)  # the mean divides by 68, not 70
    assert not np.isnan(compute_map(ranks, protocol_gnd(gnd_raw, "M"), KAPPAS)[1]).any()


@pytest.mark.parametrize("quantise", [None, 16])
def test_fast_path_equals_compute_map_on_random_scores(real, quantise):
    name, gnd_raw, num_database = real
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((num_database, len(gnd_raw))).astype(np.float32)
    if quantise:  # many exact ties: the fast path must break them like a stable argsort (by index)
        scores = np.round(scores * quantise) / quantise
    ranks = np.argsort(-scores, axis=0, kind="stable")
    fast = protocol_results_from_scores(scores, gnd_raw, KAPPAS, chunk_size=1500)
    fast_transposed = protocol_results_from_scores(
        scores.T.copy(), gnd_raw, KAPPAS, chunk_size=4096, num_buckets=64
    )
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        expected = compute_map(ranks, gnd, KAPPAS)
        for result in (fast[protocol], fast_transposed[protocol]):
            assert abs(result[0] - expected[0]) < 1e-9
            assert np.allclose(result[1], expected[1], atol=1e-9, rtol=0, equal_nan=True)
            assert np.allclose(result[2], expected[2], atol=1e-9, rtol=0)
            assert np.allclose(result[3], expected[3], atol=1e-9, rtol=0, equal_nan=True)


def test_junk_is_ignored_per_protocol():
    # query 0: easy {0, 1}, hard {2, 3}, junk {4}; the ranking puts junk and hard images first
    gnd_raw = [{"easy": [0, 1], "hard": [2, 3], "junk": [4]}]
    ranking = np.array([4, 2, 3, 0, 1, 5, 6, 7])[:, None]
    easy = compute_map(ranking, protocol_gnd(gnd_raw, "E"))[0]
    medium = compute_map(ranking, protocol_gnd(gnd_raw, "M"))[0]
    hard = compute_map(ranking, protocol_gnd(gnd_raw, "H"))[0]
    assert (
        easy == pytest.approx(1.0) and medium == pytest.approx(1.0) and hard == pytest.approx(1.0)
    )
    # one negative first: junk 4 must not push positives down
    ranking = np.array([5, 4, 0, 1, 2, 3, 6, 7])[:, None]
    assert compute_map(ranking, protocol_gnd(gnd_raw, "E"))[1][0] == pytest.approx(
        reference_metrics(ranking[:, 0], [0, 1], [4, 2, 3], KAPPAS)[0]
    )
    hard_ap = (0 / 1 + 1 / 2) / 2 / 2 + (
        1 / 2 + 2 / 3
    ) / 2 / 2  # hard images at 1 and 2 once junk is gone
    assert compute_map(ranking, protocol_gnd(gnd_raw, "H"))[1][0] == pytest.approx(hard_ap)


def test_truncated_ranking_without_positives_scores_zero():
    gnd = [{"ok": np.array([9]), "junk": np.array([], dtype=np.int64)}]
    mean_ap, _, mean_pr, _ = compute_map(np.array([[0], [1], [2]]), gnd)
    assert mean_ap == 0.0 and np.all(mean_pr == 0.0)


def test_reranked_shortlist_positions_equal_an_explicit_reranking():
    rng = np.random.default_rng(5)
    num_database, shortlist = 300, 20
    gnd_raw = [
        {"easy": rng.choice(num_database, 6, replace=False).tolist(), "hard": [], "junk": []}
        for _ in range(4)
    ]
    for entry in gnd_raw:  # disjoint hard and junk lists
        rest = np.setdiff1d(np.arange(num_database), entry["easy"])
        entry["hard"], entry["junk"] = rest[:5].tolist(), rest[5:9].tolist()
    scores = rng.standard_normal((num_database, 4)).astype(np.float32)
    for query, entry in enumerate(gnd_raw):
        scores[entry["easy"] + entry["hard"] + entry["junk"], query] += 1.5
    order = np.argsort(-scores, axis=0, kind="stable")
    items = relevant_items(gnd_raw)
    counter = RelevantRankCounter(
        items, [scores[ids, q] for q, ids in enumerate(items)], num_database
    )
    counter.add(0, scores.T)
    relevant = counter.result()
    shortlists, explicit = {}, {}
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        shortlists[protocol], columns = [], []
        for query, entry in enumerate(gnd):
            column = order[:, query]
            non_junk = column[~np.isin(column, entry["junk"])]
            top = rng.permutation(non_junk[:shortlist])  # any re-ordering of the shortlist
            shortlists[protocol].append((top, order_keys(scores[top, query], top)))
            columns.append(np.concatenate([top, column[~np.isin(column, top)]]))
        explicit[protocol] = np.stack(columns, axis=1)
    fast = protocol_results_from_ranks(relevant, gnd_raw, KAPPAS, shortlists)
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        expected = compute_map(explicit[protocol], gnd, KAPPAS)
        assert abs(fast[protocol][0] - expected[0]) < 1e-12
        assert np.allclose(fast[protocol][3], expected[3])
    assert set(summarize(fast)) == set(PROTOCOLS)
