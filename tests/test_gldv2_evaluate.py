"""GLDv2 retrieval through evaluate(): mAP@100 on made-up stores and a made-up solution file, by
hand."""

import numpy as np
import pytest

from core.config import load_cfg
from core.io import read_json
from datasets.features import open_store, write_store
from tests.eval_helpers import cpu_eval_options, random_local, unit_rows
from tools.evaluation.methods import asmk as asmk_methods
from tools.evaluation.run import evaluate
from tools.gldv2.metric import (
    mean_average_precision_at_k,
    predictions_from_ranks,
    read_retrieval_solution,
)
from tools.rerank.asmk_search import index_from_cfg, local_descriptors_of
from tools.revisitop.evaluate import main

PROVENANCE = {
    "config": {"EXTRACT": {"MAX_FEATURES": 100}},
    "checkpoint_sha256": "abc",
    "global_scales": [1.0],
}
HOMOGRAPHY = np.array([[0.9, 0.1, 15.0], [-0.05, 1.1, -6.0], [2e-4, 1e-4, 1.0]])
SOLUTION = """id,images,Usage
q0,i3 i7,Public
q1,i1,Private
q2,None,Ignored
q3,,Public
q4,i2 i5 i9,Private
q5,i0,Public
"""
# q2 is ignored and q3 has no relevant images: both are left out; q5 is not in the query store: it
# scores 0. Index image i is the unit vector e_i, so a query's global ranking is its weighted
# images, then the rest by index.
QUERY_WEIGHTS = {
    "q0": {7: 3.0, 5: 2.0, 3: 1.0},
    "q1": {4: 2.0, 1: 1.0},
    "q2": {0: 1.0},
    "q3": {6: 1.0},
    "q4": {9: 2.0, 8: 1.5, 2: 1.0},
}
# index images sharing 30 geometrically consistent local matches with the query
PLANTED = {"q1": 1, "q4": 5}
# i5 at rank 8 for q4
GLOBAL_AP = {"q0": (1 + 2 / 3) / 2, "q1": 1 / 2, "q4": (1 + 2 / 3 + 3 / 8) / 3, "q5": 0.0}
# i1 and i5 move to the top
SV_AP = {"q0": (1 + 2 / 3) / 2, "q1": 1.0, "q4": (1 + 1 + 3 / 4) / 3, "q5": 0.0}


def make_gldv2(root, store_names=("gldv2_test", "gldv2_index")):
    rng = np.random.default_rng(0)
    index_names = [f"i{i}" for i in range(12)]
    query_names = list(QUERY_WEIGHTS)
    index_global = np.eye(12, 16, dtype=np.float32)
    query_global = np.zeros((len(query_names), 16), np.float32)
    for row, name in enumerate(query_names):
        for image, weight in QUERY_WEIGHTS[name].items():
            query_global[row, image] = weight
    index_local = [random_local(rng, 60) for _ in index_names]
    query_local = [random_local(rng, 60) for _ in query_names]
    for name, image in PLANTED.items():
        features, query = index_local[image], query_local[query_names.index(name)]
        source = rng.choice(60, 30, replace=False)
        query["descriptors"][:30] = unit_rows(
            features["descriptors"][source] + 0.02 * rng.standard_normal((30, 32))
        )
        points = (
            np.concatenate([features["locations"][source], np.ones((30, 1))], axis=1)
            @ np.linalg.inv(HOMOGRAPHY).T
        )
        query["locations"][:30] = points[:, :2] / points[:, 2:]
    features = root / "features"
    write_store(features / store_names[0], query_names, unit_rows(query_global), query_local,
                provenance=PROVENANCE)  # fmt: skip
    write_store(
        features / store_names[1], index_names, index_global, index_local, provenance=PROVENANCE
    )
    (root / "retrieval_solution_v2.1.csv").write_text(SOLUTION)


def _options(root, *extra):
    solution = str(root / "retrieval_solution_v2.1.csv")
    # only the planted copies (distance ~0.1) match; random 32-d pairs under 0.3 practically never
    # occur
    threshold = ["SV.MATCH_THRESHOLD", "0.3"]
    return cpu_eval_options(root, "gldv2", "['global', 'sv']", "EVAL.SOLUTION_FILE", solution,
                            *extra, *threshold)  # fmt: skip


def test_gldv2_map_at_100_matches_hand_computed_values(tmp_path, capsys):
    make_gldv2(tmp_path)
    assert main(_options(tmp_path)) == 0
    written = read_json(tmp_path / "out" / "results.json")
    assert set(written.pop("runs")) == {"global", "sv"}  # seconds, queries/s per method
    assert set(written) == {"global", "sv"}
    assert set(written["global"]) == {"gldv2"} and set(written["global"]["gldv2"]) == {"mAP@100"}
    # the mean runs over the 4 solution queries with relevant images (q0, q1, q4 and the missing q5)
    assert written["global"]["gldv2"]["mAP@100"] == pytest.approx(
        100 * np.mean(list(GLOBAL_AP.values()))
    )
    assert written["sv"]["gldv2"]["mAP@100"] == pytest.approx(100 * np.mean(list(SV_AP.values())))
    table = capsys.readouterr().out
    assert "gldv2: 3 queries of 4 in the solution, 12 index images" in table and "mAP@100" in table


def test_gldv2_store_names_and_errors(tmp_path):
    make_gldv2(tmp_path, store_names=("gldv2_query", "gldv2_database"))
    results = evaluate(load_cfg("", _options(tmp_path, "EVAL.METHODS", "['global']")))
    assert results["global"]["gldv2"]["mAP@100"] == pytest.approx(
        100 * np.mean(list(GLOBAL_AP.values()))
    )
    with pytest.raises(FileNotFoundError, match="EVAL.SOLUTION_FILE"):
        evaluate(load_cfg("", _options(tmp_path, "EVAL.SOLUTION_FILE", "")))
    with pytest.raises(FileNotFoundError, match="gldv2_test"):
        evaluate(load_cfg("", _options(tmp_path, "EVAL.FEATURES_DIR", str(tmp_path))))


def test_gldv2_asmk_in_query_batches(tmp_path, monkeypatch):
    make_gldv2(tmp_path)
    # two queries per batch: the 3 queries take 2
    monkeypatch.setattr(asmk_methods, "SCORES_AT_ONCE", 2 * 12)
    methods = "['global', 'asmk', 'asmk_rerank']"
    options = _options(tmp_path, "EVAL.METHODS", methods, "ASMK.CODEBOOK_SIZE", "64",
                       "SV.SHORTLIST", "3")  # fmt: skip
    results = evaluate(load_cfg("", options))
    assert results["global"]["gldv2"]["mAP@100"] == pytest.approx(
        100 * np.mean(list(GLOBAL_AP.values()))
    )

    # the same numbers from an independent index (read from the evaluation's cache) and the metric's
    # functions
    cfg = load_cfg("", options)
    features = tmp_path / "features"
    queries, index = open_store(features / "gldv2_test"), open_store(features / "gldv2_index")
    asmk = index_from_cfg(cfg, index)
    assert not asmk.codebook_trained
    names = ["q0", "q1", "q4"]
    rows = [queries.index_of(name) for name in names]
    scores = asmk.score_matrix(*local_descriptors_of(queries, rows)[:2], num_queries=3)
    solution = read_retrieval_solution(tmp_path / "retrieval_solution_v2.1.csv")

    def map_at_100(ranking):
        predictions = predictions_from_ranks(ranking, names, index.names)
        return 100 * mean_average_precision_at_k(predictions, solution)

    ranking = np.argsort(-scores, axis=1, kind="stable")
    assert results["asmk"]["gldv2"]["mAP@100"] == pytest.approx(map_at_100(ranking))
    global_scores = np.asarray(queries.global_descriptors())[rows] @ np.asarray(
        index.global_descriptors()
    ).T
    global_ranking = np.argsort(-global_scores, axis=1, kind="stable")
    reranked = [
        np.concatenate([top[np.argsort(-row[top], kind="stable")], rest])
        for top, rest, row in zip(global_ranking[:, :3], global_ranking[:, 3:], scores)
    ]
    assert results["asmk_rerank"]["gldv2"]["mAP@100"] == pytest.approx(map_at_100(reranked))
