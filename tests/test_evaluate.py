import pickle

import numpy as np
import pytest

from core.config import load_cfg
from core.io import read_json
from datasets.features import write_store
from tests.eval_helpers import cpu_eval_options, random_local, unit_rows
from tools.evaluation.benchmarks import open_store_pair
from tools.evaluation.run import evaluate
from tools.extraction.provenance import ProvenanceMismatch
from tools.retrieval.methods import METHODS, format_table, register_method
from tools.revisitop.context import RevisitopContext, global_pass
from tools.revisitop.evaluate import main
from tools.revisitop.metrics import compute_map
from tools.revisitop.protocols import protocol_gnds

PROVENANCE = {
    "config": {"EXTRACT": {"MAX_FEATURES": 100}},
    "checkpoint_sha256": "abc",
    "global_scales": [1.0],
}
HOMOGRAPHY = np.array([[0.95, 0.05, 12.0], [-0.04, 1.05, -8.0], [1e-4, 5e-5, 1.0]])


def make_world(
    root, num_database=40, num_queries=5, distractors=0, database_provenance=PROVENANCE, seed=0
):
    """gnd_tiny.pkl plus stores tiny_query / tiny_database. Easy images are near the query globally;
    hard images are globally random but share 30 local matches (related by HOMOGRAPHY) with the
    query."""
    rng = np.random.default_rng(seed)
    imlist = [f"db_{i:03d}" for i in range(num_database)]
    qimlist = [f"q_{i}" for i in range(num_queries)]
    queries = unit_rows(rng.standard_normal((num_queries, 16)))
    database = unit_rows(rng.standard_normal((num_database + distractors, 16)))
    query_local = [random_local(rng, 200) for _ in qimlist]  # room for 6 x 30 planted matches
    database_local = [random_local(rng, 80) for _ in range(num_database + distractors)]
    gnd = []
    for query in range(num_queries):
        chosen = rng.choice(num_database, 8, replace=False)
        easy, hard, junk = chosen[:3], chosen[3:6], chosen[6:]
        lists = {"easy": easy.tolist(), "hard": hard.tolist(), "junk": junk.tolist()}
        gnd.append({"bbx": [0.0, 0.0, 50.0, 50.0], **lists})
        database[easy] = unit_rows(queries[query] + 0.3 * rng.standard_normal((3, 16)))
        for slot, image in enumerate(np.concatenate([easy, hard])):
            plant_matches(rng, query_local[query], database_local[image], slot)
    with open(root / "gnd_tiny.pkl", "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    names = imlist + [f"distractor_{i}" for i in range(distractors)]
    features = root / "features"
    write_store(features / "tiny_query", qimlist, queries, query_local, provenance=dict(PROVENANCE))
    database_provenance = dict(database_provenance, signature="differs per store")
    write_store(features / "tiny_database", names, database, database_local,
                provenance=database_provenance)  # fmt: skip
    return queries, database, gnd


def plant_matches(rng, query_features, database_features, slot):
    """30 query features of rows slot*30.. become noisy copies of 30 of the database image's,
    their locations mapped by HOMOGRAPHY."""
    rows, source = np.arange(30 * slot, 30 * slot + 30), rng.choice(80, 30, replace=False)
    query_features["descriptors"][rows] = unit_rows(
        database_features["descriptors"][source] + 0.02 * rng.standard_normal((30, 32))
    )
    homogeneous = np.concatenate([database_features["locations"][source], np.ones((30, 1))], axis=1)
    points = homogeneous @ np.linalg.inv(HOMOGRAPHY).T
    query_features["locations"][rows] = points[:, :2] / points[:, 2:]


def _cfg(root, *extra):
    return load_cfg(
        "", cpu_eval_options(root, "tiny", "['global', 'sv']", "EVAL.DATA_ROOT", str(root), *extra)
    )


def test_evaluate_prints_the_table_and_writes_results(tmp_path, capsys):
    queries, database, gnd = make_world(tmp_path)
    results = evaluate(_cfg(tmp_path))
    written = read_json(tmp_path / "out" / "results.json")
    assert set(written.pop("runs")) == {"global", "sv"}  # seconds, queries/s per method
    assert written == results
    assert set(written) == {"global", "sv"}
    for method in written.values():
        assert set(method) == {"E", "M", "H"}
        assert all(set(row) == {"mAP", "mP@1", "mP@5", "mP@10"} for row in method.values())
    ranks = np.argsort(-(database @ queries.T), axis=0, kind="stable")
    for protocol, protocol_gnd in protocol_gnds(gnd).items():
        mean_ap, _, mean_pr, _ = compute_map(ranks, protocol_gnd)
        assert written["global"][protocol]["mAP"] == pytest.approx(100 * mean_ap, abs=1e-9)
        assert written["global"][protocol]["mP@5"] == pytest.approx(100 * mean_pr[1], abs=1e-9)
        # the hard images only become visible through their local matches
        assert written["sv"][protocol]["mAP"] == pytest.approx(100.0)
    assert written["global"]["H"]["mAP"] < 90
    table = capsys.readouterr().out
    assert "tiny: 5 queries, 40 database images" in table and "sv" in table and "mP@10" in table


def test_shortlists_leave_out_each_protocols_junk(tmp_path):
    queries, database, gnd_raw = make_world(tmp_path)
    cfg = _cfg(tmp_path)
    relevant, top_scores, top_indices = global_pass(queries, database, gnd_raw, 40, 16, "cpu")
    query_store, database_store = open_store_pair(tmp_path / "features", "tiny")
    context = RevisitopContext(
        cfg, gnd_raw, query_store, database_store, np.arange(5), relevant, top_scores, top_indices
    )
    lists = context.shortlists(30)
    for protocol, gnd in protocol_gnds(gnd_raw).items():
        for query, entry in enumerate(gnd):
            shortlist = lists[protocol][query]
            assert len(shortlist) == 30 and not np.isin(shortlist, entry["junk"]).any()
            expected = [
                image for image in top_indices[query] if image not in set(entry["junk"].tolist())
            ][:30]
            assert shortlist.tolist() == expected
    assert not np.isin(lists["E"][0], gnd_raw[0]["hard"]).any()  # hard images are junk for Easy
    everything = context.shortlists(38)  # 40 images less Medium's 2 junk ones
    assert len(everything["M"][0]) == 38 and np.isin(gnd_raw[0]["hard"], everything["M"][0]).all()
    assert len(everything["E"][0]) == 35  # less the 2 junk and the 3 hard images


def test_stores_from_different_extractions_are_refused(tmp_path):
    other = {
        "config": {"EXTRACT": {"MAX_FEATURES": 1000}},
        "checkpoint_sha256": "abc",
        "global_scales": [1.0],
    }
    make_world(tmp_path, database_provenance=other)
    with pytest.raises(ProvenanceMismatch, match="config.EXTRACT.MAX_FEATURES"):
        evaluate(_cfg(tmp_path))


def test_distractors_need_the_plus_1m_dataset_name(tmp_path):
    make_world(tmp_path, distractors=25)
    with pytest.raises(ValueError, match=r"\+1m"):
        evaluate(_cfg(tmp_path, "EVAL.METHODS", "['global']"))
    results = evaluate(_cfg(tmp_path, "EVAL.DATASET", "tiny+1m", "EVAL.METHODS", "['global']"))
    assert 0 <= results["global"]["M"]["mAP"] <= 100


def test_methods_can_be_registered(tmp_path):
    make_world(tmp_path)
    register_method("global_again", METHODS["global"])
    try:
        results = evaluate(_cfg(tmp_path, "EVAL.METHODS", "['global', 'global_again']"))
    finally:
        METHODS.pop("global_again")
    assert results["global_again"] == results["global"]
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(_cfg(tmp_path, "EVAL.METHODS", "['nope']"))


def test_cli_runs_and_reports_errors(tmp_path, capsys):
    make_world(tmp_path)
    overrides = [
        "EVAL.DATASET",
        "tiny",
        "EVAL.DATA_ROOT",
        str(tmp_path),
        "EVAL.FEATURES_DIR",
        str(tmp_path / "features"),
        "OUT_DIR",
        str(tmp_path / "cli"),
        "EVAL.METHODS",
        "['global']",
        "EVAL.DEVICE",
        "cpu",
    ]
    assert main(overrides) == 0
    assert (tmp_path / "cli" / "results.json").is_file() and "global" in capsys.readouterr().out
    assert main(overrides[:5] + [str(tmp_path / "nowhere")] + overrides[6:]) == 2
    assert "no feature stores" in capsys.readouterr().err


def test_table_columns_line_up_for_long_method_names():
    values = {"mAP": 12.5, "mP@1": 100.0}
    results = {"untrained_global": {"E": values, "M": values}, "sv": {"E": values, "M": values}}
    lines = format_table(results, "synth").splitlines()
    assert lines[0] == "synth"
    header, rows = lines[1], lines[2:]
    assert len(rows) == 4 and {len(row) for row in rows} == {len(header)}
    for row in rows:  # every number ends under its metric's name
        assert row.split()[-2:] == ["12.50", "100.00"]
        assert row.index("12.50") + len("12.50") == header.index("mAP") + len("mAP")
    assert rows[0].startswith("untrained_global  E")
