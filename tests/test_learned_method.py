"""The learned re-ranker's evaluation methods (tools/evaluation/methods/learned.py): lambda = 1 is
the global ranking, the shortlists are sv's, the binary path scores sign codes, stores of another
extraction are refused; compositions and the benchmark script run."""

import numpy as np
import pytest
import torch

from core.config import load_cfg
from datasets.features import open_store, write_store
from modeling.reranker import build_reranker
from modeling.reranker_inputs import collate_locals, top_locals
from modeling.reranker_weights import save_reranker
from tests.eval_helpers import cpu_eval_options
from tests.test_evaluate import PROVENANCE, make_world
from tests.tiny import run_benchmark
from tools.evaluation.methods import learned as learned_methods
from tools.evaluation.methods.learned import coder
from tools.evaluation.run import build_context, evaluate
from tools.extraction.provenance import ProvenanceMismatch
from tools.rerank import learned
from tools.rerank.compact_codes import binary_codes, float16_codes
from tools.retrieval import methods as retrieval_methods

TINY_MODEL = [
    *("RERANKER.DIM", "16", "RERANKER.DEPTH", "1", "RERANKER.HEADS", "2"),
    *("RERANKER.FFN_DIM", "32", "RERANKER.BITS", "16"),
]
SHORTLIST = 20


def save_model(path, binary=False, provenance=PROVENANCE, lam=0.5):
    cfg = load_cfg("", TINY_MODEL)
    cfg.RERANKER.BINARY = binary
    torch.manual_seed(0)
    model = build_reranker(cfg, 32, 16)
    info = {"lambda": lam, "gamma": 1.0, "provenance": provenance, "training_store": "train"}
    return save_reranker(str(path), model, cfg.RERANKER, 32, 16, info)


def _cfg(root, methods, weights, *extra):
    return load_cfg(
        "",
        cpu_eval_options(
            root,
            "tiny",
            str(list(methods)),
            "EVAL.DATA_ROOT",
            str(root),
            "SV.SHORTLIST",
            str(SHORTLIST),
            "RERANKER.SHORTLIST",
            str(SHORTLIST),
            "RERANKER.WEIGHTS",
            str(weights),
            "RERANKER.N_QUERY",
            "40",
            "RERANKER.N_DATABASE",
            "20",
            "RERANKER.BATCH_SIZE",
            "7",
            "RERANKER.DEVICE",
            "cpu",
            *extra,
        ),
    )


@pytest.fixture
def world(tmp_path):
    make_world(tmp_path)
    return tmp_path, save_model(tmp_path / "reranker.pth")


def test_lambda_one_reproduces_the_global_ranking_exactly(world):
    root, weights = world
    same = evaluate(_cfg(root, ["global", "learned"], weights, "RERANKER.LAMBDA", "1.0"))
    assert same["learned"] == same["global"]
    moved = evaluate(_cfg(root, ["global", "learned"], weights, "RERANKER.LAMBDA", "0.0"))
    assert moved["learned"] != moved["global"]  # the logits alone re-order the shortlists


def test_the_shortlist_of_each_protocol_is_svs(world, monkeypatch):
    root, weights = world
    seen = {}
    sv = retrieval_methods.rerank_with_spatial_verification
    rerank = learned_methods.rerank_shortlists

    def sv_spy(shortlists, *args, **kwargs):
        seen["sv"] = shortlists
        return sv(shortlists, *args, **kwargs)

    def learned_spy(shortlists, *args):
        seen["learned"] = shortlists
        return rerank(shortlists, *args)

    monkeypatch.setattr(retrieval_methods, "rerank_with_spatial_verification", sv_spy)
    monkeypatch.setattr(learned_methods, "rerank_shortlists", learned_spy)
    evaluate(_cfg(root, ["sv", "learned"], weights))
    assert set(seen["learned"]) == set(seen["sv"]) == {"E", "M", "H"}
    for protocol, per_query in seen["sv"].items():
        assert len(per_query) == len(seen["learned"][protocol]) == 5
        for ours, theirs in zip(seen["learned"][protocol], per_query):
            assert len(ours) == SHORTLIST
            np.testing.assert_array_equal(ours, theirs)


def test_the_binary_path_scores_the_sign_codes(tmp_path):
    make_world(tmp_path)
    weights = save_model(tmp_path / "binary.pth", binary=True)
    model = learned_methods.load_reranker(weights)[0]
    store = open_store(tmp_path / "features" / "tiny_database")
    codes = binary_codes(float16_codes(store, 20), coder(model, "cpu"), "digest")
    queries = open_store(tmp_path / "features" / "tiny_query")
    batch = learned.query_batches(queries.local_at, 2, 40)
    pairs = np.array([[0, 3], [1, 7], [0, 11]])
    logits = learned.pair_logits(model, batch, codes, pairs, 2, "cpu", coded=True)
    database = collate_locals([top_locals(store.local_at(row), 20) for row in pairs[:, 1]], n=20)
    query = learned._select(batch, torch.from_numpy(pairs[:, 0]), "cpu")
    with torch.no_grad():
        signed = model(query, database)  # eval mode: the model takes the sign itself
        model.train()
        straight_through = model(query, database)  # training: the signs, erf's gradient
        model.binary.straight_through = False
        surrogate = model(query, database)  # training on erf itself: not what the codes give
    ours = np.array([logits[(int(q), int(row))] for q, row in pairs])
    np.testing.assert_allclose(ours, signed.numpy(), atol=1e-5)
    np.testing.assert_allclose(ours, straight_through.numpy(), atol=1e-5)
    assert not np.allclose(ours, surrogate.numpy(), atol=1e-4)
    assert set(np.unique(codes.take(pairs[:, 1])["descriptors"])) <= {-1.0, 0.0, 1.0}


def test_learned_binary_evaluates_beside_learned_and_after_an_expansion(world, tmp_path):
    root, weights = world
    binary = save_model(tmp_path / "binary.pth", binary=True)
    methods = ["global", "learned", "learned_binary", "dba_qe+learned"]
    cfg = _cfg(root, methods, weights, "RERANKER.BINARY_WEIGHTS", str(binary), "RERANK.DBA_K", "4")
    results = evaluate(cfg)
    assert set(results) == set(methods)
    folders = sorted(path.name.split("-")[0] for path in (root / "features").glob("*.compact/*"))
    assert folders == ["binary", "float16"]  # beside the database store, derived once each


def test_a_float_model_is_refused_for_the_binary_method(world):
    root, weights = world
    with pytest.raises(ValueError, match="learned_binary needs a binary one"):
        evaluate(_cfg(root, ["learned_binary"], weights))


def test_stores_of_another_extraction_than_the_training_features_are_refused(tmp_path):
    make_world(tmp_path)
    other = dict(PROVENANCE, checkpoint_sha256="another model")
    weights = save_model(tmp_path / "reranker.pth", provenance=other)
    with pytest.raises(ProvenanceMismatch, match="checkpoint_sha256") as refused:
        evaluate(_cfg(tmp_path, ["learned"], weights))
    assert "reranker.pth" in str(refused.value) and "tiny_query" in str(refused.value)


def test_the_benchmark_runs_and_prints_its_headline(tmp_path):
    options = ["--shortlist", "3", "--repeats", "1", *TINY_MODEL, "RERANKER.N_QUERY", "30"]
    lines = run_benchmark("learned", options, tmp_path)
    assert lines[-1].startswith("ratio: ") and float(lines[-1].split()[1]) > 0
    assert any("N_DATABASE  50: float16  12800 B" in line for line in lines)


class OnDemandStub:
    """The evaluation's local access with a global-only database: what `sv` reads on demand,
    here served from the full store, recording which rows were prepared."""

    def __init__(self, local, full_store):
        self.local, self.full_store, self.prepared = local, full_store, []

    def prepare_queries(self):
        return self.local.prepare_queries()

    def prepare_database(self, rows):
        self.prepared.append(np.asarray(rows))

    def reader(self, part):
        return self.local.reader(part) if part == "query" else self.full_store


def test_a_global_only_database_is_read_through_the_on_demand_path(world):
    root, weights = world
    cfg = _cfg(root, ["learned"], weights)
    context = build_context(cfg)
    stored, _ = learned_methods.rerank_learned(context, False)
    full = context.database_store
    names = full.names
    write_store(root / "global_only", names, np.asarray(full.global_descriptors()), None)
    context.database_store = open_store(root / "global_only")
    context.local = OnDemandStub(context.local, full)
    on_demand, settings = learned_methods.rerank_learned(context, False)
    assert settings["codes"].startswith("in memory")
    shortlisted = np.unique(np.concatenate([np.concatenate(lists) for lists in stored.values()]))
    np.testing.assert_array_equal(np.concatenate(context.local.prepared), shortlisted)
    for protocol, per_query in stored.items():
        for ours, theirs in zip(on_demand[protocol], per_query):
            np.testing.assert_array_equal(ours, theirs)
