"""ASMK in the evaluation pipeline: the synthetic preset's four methods through evaluate.py, the
shared cached index, and ASMK ranking images that share local descriptors with the query first.

The synthetic run uses an untrained tiny model, so its numbers say nothing about quality (that
comparison needs a trained model: the demo issue); what it checks is the wiring: rows, results.json,
the cache, and that the asmk and asmk_rerank numbers are those of ASMK's own ranking.
"""

import pickle
from pathlib import Path

import numpy as np
import pytest

from core.config import load_cfg
from core.io import read_json
from datasets.features import open_store, write_store
from tests.eval_helpers import unit_rows
from tests.tiny import TINY_PRESET, extract_tiny_world
from tools.rerank.asmk_search import index_from_cfg, local_descriptors_of
from tools.revisitop.evaluate import main
from tools.revisitop.metrics import compute_map, summarize
from tools.revisitop.protocols import PROTOCOLS, protocol_gnd

SHORTLIST = 8  # of the 30 database images: asmk_rerank then differs from asmk


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The tiny synthetic set extracted with the preset and a tiny untrained model: (options, output
    folder)."""
    root = tmp_path_factory.mktemp("asmk_synthetic")
    return extract_tiny_world(root, "SV.SHORTLIST", str(SHORTLIST)), root / "out"


def _ranks_to_results(ranks, gnd_raw, kappas=(1, 5, 10)):
    """summarize()d E/M/H results of whole rankings [n_queries, n_db], through the benchmark's
    compute_map."""
    return summarize(
        {
            protocol: compute_map(np.asarray(ranks).T, protocol_gnd(gnd_raw, protocol), kappas)
            for protocol in PROTOCOLS
        },
        kappas,
    )


def _asmk_scores(cfg, query_store, database_store, query_rows):
    """ASMK scores [n_q, n_db] from an index of its own, not the evaluation's object (it must hit
    the cache)."""
    index = index_from_cfg(cfg, database_store)
    # the evaluation left both in ASMK.CACHE_DIR
    assert not index.codebook_trained and not index.ivf_built
    query_descriptors, query_ids, num_queries = local_descriptors_of(query_store, query_rows)
    return index.score_matrix(query_descriptors, query_ids, num_queries)


def _reranked_results(global_ranks, asmk_scores, gnd_raw, size):
    """summarize()d results when, per protocol, the first `size` non-junk images of each global
    ranking are stably re-sorted by ASMK score and the rest keep their order (junk goes last:
    compute_map ignores it anyway)."""
    results = {}
    for protocol in PROTOCOLS:
        gnd = protocol_gnd(gnd_raw, protocol)
        ranks = []
        for ranked, scores, entry in zip(global_ranks, asmk_scores, gnd):
            junk = np.isin(ranked, entry["junk"])
            kept = ranked[~junk]
            top = kept[:size][np.argsort(-scores[kept[:size]], kind="stable")]
            ranks.append(np.concatenate([top, kept[size:], ranked[junk]]))
        results[protocol] = compute_map(np.array(ranks).T, gnd)
    return summarize(results)


def _assert_close(results, expected):
    for protocol in PROTOCOLS:
        for metric, value in expected[protocol].items():
            assert results[protocol][metric] == pytest.approx(value, abs=1e-9), (protocol, metric)


def test_synthetic_preset_reports_asmk_through_evaluate_py(synthetic, capsys):
    options, out = synthetic
    assert main(["--cfg", TINY_PRESET, *options]) == 0
    results = read_json(out / "results.json")
    assert list(results.pop("runs")) == ["global", "sv", "asmk", "asmk_rerank"]
    assert list(results) == ["global", "sv", "asmk", "asmk_rerank"]
    for by_protocol in results.values():
        assert set(by_protocol) == set(PROTOCOLS)
        assert all(0 <= row["mAP"] <= 100 for row in by_protocol.values())
    table = capsys.readouterr().out
    rows = {tuple(line.split()[:2]) for line in table.splitlines()}
    assert all((method, protocol) in rows for method in results for protocol in PROTOCOLS)

    cfg = load_cfg(TINY_PRESET, options)
    assert list((out / "asmk").glob("codebook-*/centroids.npy"))
    assert list((out / "asmk").glob("ivf-*/meta.json"))
    query_store = open_store(out / "features" / "synth_query")
    database_store = open_store(out / "features" / "synth_database")
    with open(Path(cfg.EVAL.DATA_ROOT) / "gnd_synth.pkl", "rb") as handle:
        ground_truth = pickle.load(handle)
    query_rows = [query_store.index_of(name) for name in ground_truth["qimlist"]]
    assert database_store.names == ground_truth["imlist"]
    scores = _asmk_scores(cfg, query_store, database_store, query_rows)
    # asmk: the whole database by ASMK score (ties by index); asmk_rerank: the SV.SHORTLIST first
    # non-junk images of the global ranking re-sorted by ASMK score
    gnd = ground_truth["gnd"]
    asmk_ranks = np.argsort(-scores, axis=1, kind="stable")
    _assert_close(results["asmk"], _ranks_to_results(asmk_ranks, gnd))
    queries = np.asarray(query_store.global_descriptors())[query_rows]
    global_scores = queries @ np.asarray(database_store.global_descriptors()).T
    global_ranks = np.argsort(-global_scores, axis=1, kind="stable")
    _assert_close(results["asmk_rerank"], _reranked_results(global_ranks, scores, gnd, SHORTLIST))

    # a second evaluation reuses the codebook and the inverted file (its log goes to stdout, see
    # setup_logging)
    assert main(["--cfg", TINY_PRESET, *options, "EVAL.METHODS", "['asmk', 'asmk_rerank']"]) == 0
    log = capsys.readouterr().out
    assert "codebook read from" in log and "inverted file read from" in log
    # results.json merges per method: asmk rows replaced (the same numbers), global and sv kept
    assert "replaced: asmk, asmk_rerank; kept: global, sv" in log
    again = read_json(out / "results.json")
    assert list(again.pop("runs")) == ["global", "sv", "asmk", "asmk_rerank"]
    assert again == results


# ---------------------------------------------------------------------------------- known structure
def _local(descriptors, rng):
    count = len(descriptors)
    return {
        "locations": rng.uniform(0, 100, (count, 2)).astype(np.float32),
        "scales": np.ones(count, np.float32),
        "scores": np.ones(count, np.float32),
        "descriptors": descriptors,
    }


def make_shared_descriptor_world(root, num_database=40, num_queries=4, seed=0):
    """Random global descriptors; each query's local descriptors are noisy copies of 12 descriptors
    of each of its 6 positives (4 easy, 2 hard), the negatives share none. Returns the raw gnd."""
    rng = np.random.default_rng(seed)
    database_local = [unit_rows(rng.standard_normal((50, 32))) for _ in range(num_database)]
    query_local, gnd = [], []
    for _ in range(num_queries):
        chosen = rng.choice(num_database, 7, replace=False)
        gnd.append(
            {
                "bbx": [0.0, 0.0, 50.0, 50.0],
                "easy": chosen[:4].tolist(),
                "hard": chosen[4:6].tolist(),
                "junk": chosen[6:].tolist(),
            }
        )
        copies = [database_local[image][rng.choice(50, 12, replace=False)] for image in chosen[:6]]
        query_local.append(unit_rows(np.concatenate(copies) + 0.05 * rng.standard_normal((72, 32))))
    imlist, qimlist = (
        [f"db_{i:03d}" for i in range(num_database)],
        [f"q_{i}" for i in range(num_queries)],
    )
    with open(root / "gnd_shared.pkl", "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    provenance = {"config": {"MODEL": {"DEPTH": 18}}, "checkpoint_sha256": "made-up"}
    for role, names, local in (
        ("query", qimlist, query_local),
        ("database", imlist, database_local),
    ):
        global_descriptors = unit_rows(rng.standard_normal((len(names), 16)))
        local_features = [_local(descriptors, rng) for descriptors in local]
        write_store(root / "features" / f"shared_{role}", names, global_descriptors,
                    local_features, provenance=provenance)  # fmt: skip
    return gnd


def test_asmk_ranks_images_sharing_descriptors_first(tmp_path, capsys):
    gnd = make_shared_descriptor_world(tmp_path)
    options = [
        "EVAL.DATASET",
        "shared",
        "EVAL.DATA_ROOT",
        str(tmp_path),
        "EVAL.FEATURES_DIR",
        str(tmp_path / "features"),
        "OUT_DIR",
        str(tmp_path / "out"),
        "EVAL.DEVICE",
        "cpu",
        "EVAL.METHODS",
        "['global', 'asmk', 'asmk_rerank']",
        "ASMK.CODEBOOK_SIZE",
        "256",
        "SV.SHORTLIST",
        "10",
    ]
    assert main(options) == 0
    results = read_json(tmp_path / "out" / "results.json")
    for protocol in PROTOCOLS:  # every positive of every protocol ranks above every negative
        assert results["asmk"][protocol]["mAP"] == pytest.approx(100.0)
    assert results["global"]["M"]["mAP"] < 50

    # asmk_rerank re-orders only the global top 10 (junk left out); positives below keep their
    # global positions
    cfg = load_cfg("", options)
    query_store = open_store(tmp_path / "features" / "shared_query")
    database_store = open_store(tmp_path / "features" / "shared_database")
    scores = _asmk_scores(cfg, query_store, database_store, np.arange(len(query_store)))
    global_scores = (
        np.asarray(query_store.global_descriptors())
        @ np.asarray(database_store.global_descriptors()).T
    )
    global_ranks = np.argsort(-global_scores, axis=1, kind="stable")
    _assert_close(results["asmk_rerank"], _reranked_results(global_ranks, scores, gnd, 10))
    assert results["global"]["M"]["mAP"] < results["asmk_rerank"]["M"]["mAP"] < 100

    capsys.readouterr()
    assert main([*options, "ASMK.CODEBOOK_SIZE", "4096", "OUT_DIR", str(tmp_path / "big")]) == 2
    assert "ASMK.CODEBOOK_SIZE=4096" in capsys.readouterr().err
