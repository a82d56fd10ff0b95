"""The qe, dba, dba_qe, superglobal and composed methods through evaluate(): each result equals the
direct formulas ranked over the whole database (a '+1m' database whose distractors are in the
store), the DBA cache beside the store is reused and resumes, results.json records timings and
settings."""

import logging

import numpy as np
import pytest

from core.config import load_cfg
from core.io import read_json
from tests.eval_helpers import cpu_eval_options
from tests.test_evaluate import make_world
from tests.test_gldv2_evaluate import _options as gldv2_options
from tests.test_gldv2_evaluate import make_gldv2
from tests.test_rerank_functions import reference_dba, reference_qe, reference_superglobal
from tools.evaluation.methods.expansion import superglobal_shortlists
from tools.evaluation.run import build_context, evaluate
from tools.rerank import dba_cache
from tools.rerank.database_augmentation import database_augmentation
from tools.revisitop.metrics import compute_map
from tools.revisitop.protocols import protocol_gnds

DISTRACTORS = 20
SG = {"M": 25, "K": 3, "beta": 0.15}


def _cfg(root, methods, *extra):
    return load_cfg(
        "",
        cpu_eval_options(
            root,
            "tiny+1m",
            str(list(methods)),
            "EVAL.DATA_ROOT",
            str(root),
            "RERANK.QE_K",
            "3",
            "RERANK.DBA_K",
            "4",
            "RERANK.DBA_CHUNK",
            "16",
            "RERANK.SG_SHORTLIST",
            str(SG["M"]),
            "RERANK.SG_K",
            str(SG["K"]),
            *extra,
        ),
    )


def _map(ranks_per_query, gnd):
    """{protocol: mAP in percent} of whole rankings (one array of database rows per query)."""
    ranks = np.stack(ranks_per_query).T
    return {
        protocol: 100 * compute_map(ranks, protocol_gnd)[0]
        for protocol, protocol_gnd in protocol_gnds(gnd).items()
    }


def _ranking(queries, database):
    return [np.argsort(-(database @ query), kind="stable") for query in queries]


def _superglobal_ranks(queries, database, gnd, protocol, convention):
    ranks = []
    for query, ranked in zip(queries, _ranking(queries, database)):
        if convention == "protocol":
            junk = protocol_gnds(gnd)[protocol][len(ranks)]["junk"]
            candidates = ranked[~np.isin(ranked, junk)]
        else:
            candidates = ranked
        shortlist = candidates[: SG["M"]]
        scores = reference_superglobal(query.astype(np.float64), database[shortlist], SG["K"], 0.15)
        reordered = shortlist[np.argsort(-scores, kind="stable")]
        ranks.append(np.concatenate([reordered, ranked[~np.isin(ranked, shortlist)]]))
    return ranks


@pytest.fixture
def world(tmp_path):
    queries, database, gnd = make_world(tmp_path, distractors=DISTRACTORS)
    return tmp_path, queries.astype(np.float64), database.astype(np.float64), gnd


def test_expansions_equal_the_formulas_over_the_whole_database(world, caplog):
    root, queries, database, gnd = world
    caplog.set_level(logging.INFO)
    methods = ["global", "qe", "dba", "dba_qe", "dba_qe+sv"]
    results = evaluate(_cfg(root, methods))
    augmented = reference_dba(database, 4, 3.0, "clamp")
    expected = {
        "qe": _map(_ranking(reference_qe(queries, database, 3, 3.0, "clamp"), database), gnd),
        "dba": _map(_ranking(queries, augmented), gnd),
        "dba_qe": _map(_ranking(reference_qe(queries, augmented, 3, 3.0, "clamp"), augmented), gnd),
    }
    for method, by_protocol in expected.items():
        for protocol, value in by_protocol.items():
            assert results[method][protocol]["mAP"] == pytest.approx(value, abs=1e-9), method
    # spatial verification on top of the expanded ranking finds the hard images (local matches)
    assert all(results["dba_qe+sv"][protocol]["mAP"] == pytest.approx(100.0) for protocol in "EMH")
    assert results["dba_qe"]["H"]["mAP"] < 90

    # the augmented database covers the distractors too and is cached beside the store
    cached = list((root / "features").glob("tiny_database.dba/*/augmented.npy"))
    assert len(cached) == 1
    np.testing.assert_allclose(np.load(cached[0]), augmented, atol=2e-6)
    assert np.load(cached[0]).shape[0] == 40 + DISTRACTORS
    assert "DBA cache written" in caplog.text and "DBA cache reused" not in caplog.text

    written = read_json(root / "out" / "results.json")
    assert {method: written[method] for method in methods} == results
    for method in methods:
        run = written["runs"][method]
        assert run["seconds"] > 0 and run["queries_per_s"] > 0, method
    assert written["runs"]["dba_qe+sv"]["settings"] == {
        "negative": "clamp",
        "qe_k": 3,
        "qe_alpha": 3.0,
        "dba_k": 4,
        "dba_alpha": 3.0,
        "then": "sv",
    }

    caplog.clear()
    second = evaluate(_cfg(root, ["dba", "dba_qe"]))
    assert f"DBA cache reused: {cached[0].parent}" in caplog.text
    assert "DBA cache written" not in caplog.text
    assert second == {method: results[method] for method in ("dba", "dba_qe")}


@pytest.mark.parametrize("convention", ["protocol", "shared"])
def test_superglobal_follows_the_shortlist_convention(world, convention):
    root, queries, database, gnd = world
    results = evaluate(_cfg(root, ["superglobal"], "RERANK.SG_CONVENTION", convention))
    for protocol in ("E", "M", "H"):
        ranks = _superglobal_ranks(queries, database, gnd, protocol, convention)
        expected = _map(ranks, gnd)[protocol]
        assert results["superglobal"][protocol]["mAP"] == pytest.approx(expected, abs=1e-9)
    settings = read_json(root / "out" / "results.json")["runs"]["superglobal"]["settings"]
    assert settings == {"M": SG["M"], "K": SG["K"], "beta": 0.15, "shortlist": convention}


def test_the_shared_shortlist_keeps_junk_and_is_one_list_for_every_protocol(world):
    root, queries, database, gnd = world
    context = build_context(_cfg(root, ["superglobal"]))
    shared = superglobal_shortlists(context, SG["M"], "shared")
    ours = superglobal_shortlists(context, SG["M"], "protocol")
    for query, ranked in enumerate(_ranking(queries, database)):
        assert all(np.array_equal(shared[p][query], ranked[: SG["M"]]) for p in "EMH")
        for protocol, per_query in ours.items():
            junk = protocol_gnds(gnd)[protocol][query]["junk"]
            assert np.array_equal(per_query[query], ranked[~np.isin(ranked, junk)][: SG["M"]])
            assert not np.isin(per_query[query], junk).any()
    assert any(np.isin(shared["M"][q], entry["junk"]).any() for q, entry in enumerate(gnd))


def test_unknown_compositions_are_refused_with_the_valid_names(world):
    root = world[0]
    with pytest.raises(ValueError, match=r"sv\+qe.*dba_qe\+sv"):
        evaluate(_cfg(root, ["sv+qe"]))
    with pytest.raises(ValueError, match="SG_CONVENTION"):
        evaluate(_cfg(root, ["superglobal"], "RERANK.SG_CONVENTION", "public"))


def test_an_interrupted_augmentation_resumes(tmp_path, monkeypatch, caplog):
    """An interrupted run leaves its finished blocks; the next run keeps them whatever its block
    size and equals an uninterrupted run bit for bit."""
    caplog.set_level(logging.INFO)
    rng = np.random.default_rng(0)
    database = rng.standard_normal((60, 8)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    written, real_write = [], dba_cache.write_npy

    def write_two_blocks(path, array):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, array)

    monkeypatch.setattr(dba_cache, "write_npy", write_two_blocks)
    with pytest.raises(KeyboardInterrupt):
        dba_cache.cached_augmentation(database, "sha", str(tmp_path / "cache"), 5, chunk_size=16)
    monkeypatch.setattr(dba_cache, "write_npy", real_write)
    augmented, folder = dba_cache.cached_augmentation(
        database, "sha", str(tmp_path / "cache"), 5, chunk_size=24
    )
    assert "DBA resumed: 2 blocks (32 of 60 rows)" in caplog.text
    assert np.array_equal(augmented, database_augmentation(database, 5, chunk_size=16))
    assert read_json(f"{folder}/meta.json")["identity"]["source_sha256"] == "sha"
    assert not (tmp_path / "cache" / f"{folder}.partial").exists()


def test_gldv2_expansions_and_superglobal_rank_like_the_formulas(tmp_path):
    make_gldv2(tmp_path)
    methods = ["global", "qe", "dba_qe", "superglobal", "qe+sv"]
    options = gldv2_options(tmp_path, "EVAL.METHODS", str(methods), "RERANK.DBA_K", "3")
    cfg = load_cfg("", options + ["RERANK.SG_SHORTLIST", "6", "RERANK.SG_K", "2"])
    results = evaluate(cfg)
    assert list(results) == methods and all(set(row) == {"gldv2"} for row in results.values())
    context = build_context(cfg)
    queries = context.query_descriptors.astype(np.float64)
    database = np.asarray(context.database_descriptors, dtype=np.float64)
    augmented = reference_dba(database, 3, 3.0, "clamp")
    rankings = {
        "qe": _ranking(reference_qe(queries, database, 2, 3.0, "clamp"), database),
        "dba_qe": _ranking(reference_qe(queries, augmented, 2, 3.0, "clamp"), augmented),
    }
    for method, ranks in rankings.items():
        expected = context.summarize(context.results_from_ranking(np.stack(ranks)[:, :100]))
        assert results[method]["gldv2"] == pytest.approx(expected["gldv2"]), method
    reordered = []
    for query, ranked in zip(queries, _ranking(queries, database)):
        scores = reference_superglobal(query, database[ranked[:6]], 2, 0.15)
        reordered.append(ranked[:6][np.argsort(-scores, kind="stable")])
    expected = context.summarize(context.results_with_reranked({"gldv2": reordered}))
    assert results["superglobal"]["gldv2"] == pytest.approx(expected["gldv2"])
