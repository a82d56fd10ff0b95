"""The evaluation's two extension points, each used from this file alone and run through the real
evaluation script (tools/revisitop/evaluate.py -> tools/evaluation/run.py): a benchmark (a context
class registered with ``register_benchmark``) and a re-ranking method (``register_method``)."""

import json

import numpy as np
import pytest
import torch

from core.io import read_json
from datasets.features import write_store
from tests.eval_helpers import cpu_eval_options, unit_rows
from tests.test_evaluate import make_world
from tools.extraction.stores import features_dir
from tools.knn.global_search import exact_search
from tools.rerank.query_expansion import alpha_query_expansion
from tools.retrieval.benchmark import BENCHMARKS, BenchmarkContext, register_benchmark
from tools.retrieval.methods import METHODS, register_method
from tools.revisitop.evaluate import main
from tools.revisitop.metrics import compute_map
from tools.revisitop.protocols import protocol_gnds

TOY = "toylabels"  # EVAL.DATASET of the toy benchmark
STORES = ("toy_queries", "toy_gallery")


class ToyContext(BenchmarkContext):
    """A benchmark of labelled images: a database image is relevant to a query of the same label;
    the metric is the mean average precision over the whole ranking."""

    ranking_depth = None  # results_from_ranking reads whole rankings

    @classmethod
    def accepts(cls, dataset):
        return dataset == TOY

    @classmethod
    def store_pairs(cls, dataset):
        return (STORES,)

    @classmethod
    def build(cls, cfg):
        query_store, database_store = cls.open_stores(features_dir(cfg), cfg.EVAL.DATASET)
        labels = read_json(f"{cfg.EVAL.DATA_ROOT}/toy_labels.json")
        return cls(cfg, query_store, database_store, labels)

    def __init__(self, cfg, query_store, database_store, labels):
        self.cfg, self.query_store, self.database_store = cfg, query_store, database_store
        self.query_rows = np.arange(len(query_store))
        database_labels = np.array([labels[name] for name in database_store.names])
        self.relevant = [database_labels == labels[name] for name in query_store.names]
        self.device, self.local, self.cache = torch.device("cpu"), None, {}
        self.title = f"{TOY}: {len(query_store)} queries, {len(database_store)} images"
        self.rank(self.query_descriptors, self.database_descriptors)

    def rank(self, queries, database):
        self.top_scores, self.top_indices = (
            np.asarray(result) for result in exact_search(queries, database, len(database))
        )

    def shortlists(self, size):
        return {TOY: [ranked[:size] for ranked in self.top_indices]}

    def results_from_ranking(self, ranks):
        return {
            TOY: [
                average_precision(relevant[ranked])
                for relevant, ranked in zip(self.relevant, ranks)
            ]
        }

    def global_results(self):
        return self.results_from_ranking(self.top_indices)

    def results_with_reranked(self, reranked):
        ranks = [
            np.concatenate([shortlist, ranked[~np.isin(ranked, shortlist)]])
            for ranked, shortlist in zip(self.top_indices, reranked[TOY])
        ]
        return self.results_from_ranking(ranks)

    def summarize(self, results):
        return {TOY: {"mAP": 100.0 * float(np.mean(results[TOY]))}}

    def search_again(self, queries, database):
        derived = self.derived()
        derived.rank(queries, database)
        return derived


@pytest.fixture
def toy_benchmark():
    register_benchmark(TOY)(ToyContext)
    yield
    BENCHMARKS.remove(TOY)


def make_toy(root, seed=3):
    """Two stores of 8 queries and 60 gallery images in 4 labels (noisy label centres) and their
    labels; returns (queries, gallery, query labels, gallery labels)."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((4, 16)))
    query_labels, gallery_labels = rng.integers(0, 4, 8), rng.integers(0, 4, 60)
    queries = unit_rows(centres[query_labels] + 0.9 * rng.standard_normal((8, 16)))
    gallery = unit_rows(centres[gallery_labels] + 0.9 * rng.standard_normal((60, 16)))
    query_names, gallery_names = [f"q{i}" for i in range(8)], [f"g{i}" for i in range(60)]
    write_store(root / "features" / STORES[0], query_names, queries)
    write_store(root / "features" / STORES[1], gallery_names, gallery)
    labels = dict(
        zip(query_names + gallery_names, [*query_labels.tolist(), *gallery_labels.tolist()])
    )
    (root / "toy_labels.json").write_text(json.dumps(labels))
    return queries, gallery, query_labels, gallery_labels


def average_precision(hits):
    """AP of one ranking's relevance flags (every relevant image is somewhere in the ranking)."""
    positions = np.flatnonzero(hits)
    return float(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))


def mean_average_precision(queries, gallery, query_labels, gallery_labels):
    ranks = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    hits = [gallery_labels[row] == label for row, label in zip(ranks, query_labels)]
    return 100.0 * np.mean([average_precision(flags) for flags in hits])


def test_a_benchmark_registered_here_is_evaluated_by_the_real_script(
    tmp_path, toy_benchmark, capsys
):
    queries, gallery, query_labels, gallery_labels = make_toy(tmp_path)
    options = cpu_eval_options(tmp_path, TOY, "['global', 'qe']", "EVAL.DATA_ROOT", str(tmp_path))
    assert main([*options, "RERANK.QE_K", "2"]) == 0
    written = read_json(tmp_path / "out" / "results.json")
    assert written["runs"]["global"]["dataset"] == TOY
    expected = mean_average_precision(queries, gallery, query_labels, gallery_labels)
    assert written["global"] == {TOY: {"mAP": pytest.approx(expected)}}
    # qe searched again through the benchmark's own search_again: the mAP of the expanded queries
    expanded = alpha_query_expansion(queries, gallery, 2, 3.0)
    expected_qe = mean_average_precision(expanded, gallery, query_labels, gallery_labels)
    assert written["qe"] == {TOY: {"mAP": pytest.approx(expected_qe)}}
    assert expected_qe != pytest.approx(expected)  # the second search changed the ranking
    table = capsys.readouterr().out
    assert f"{TOY}: 8 queries, 60 images" in table
    assert any(line.split()[:2] == ["qe", TOY] for line in table.splitlines())


def test_without_its_registration_the_name_is_a_revisitop_set(tmp_path, capsys):
    make_toy(tmp_path)
    options = cpu_eval_options(tmp_path, TOY, "['global']", "EVAL.DATA_ROOT", str(tmp_path))
    assert main(options) == 2  # revisitop, the benchmark of any other name, wants its ground truth
    assert f"gnd_{TOY}.pkl: file does not exist" in capsys.readouterr().err


SHORTLIST = 10


def reverse_shortlist(context):
    """A toy re-ranking method: the first SHORTLIST images of each protocol's ranking, reversed."""
    shortlists = context.shortlists(SHORTLIST)
    reversed_lists = {
        protocol: [ids[::-1] for ids in lists] for protocol, lists in shortlists.items()
    }
    return context.results_with_reranked(reversed_lists)


def reversed_map(queries, database, gnd_raw, protocol):
    """mAP by hand of the ranking whose first SHORTLIST non-junk images are reversed."""
    gnd = protocol_gnds(gnd_raw)[protocol]
    ranks = []
    for query, entry in enumerate(gnd):
        order = np.argsort(-(database @ queries[query]), kind="stable")
        kept = order[~np.isin(order, entry["junk"])]
        ranks.append(np.concatenate([kept[:SHORTLIST][::-1], kept[SHORTLIST:], entry["junk"]]))
    return 100.0 * compute_map(np.stack(ranks).T, gnd)[0]


def test_a_method_registered_here_is_a_row_of_the_real_table(tmp_path, capsys):
    queries, database, gnd_raw = make_world(tmp_path)
    register_method("reverse_shortlist", reverse_shortlist)
    try:
        options = cpu_eval_options(
            tmp_path, "tiny", "['global', 'reverse_shortlist']", "EVAL.DATA_ROOT", str(tmp_path)
        )
        assert main(options) == 0
    finally:
        METHODS.pop("reverse_shortlist")
    written = read_json(tmp_path / "out" / "results.json")
    assert "reverse_shortlist" in written["runs"]
    for protocol in ("E", "M", "H"):
        row, global_row = written["reverse_shortlist"][protocol], written["global"][protocol]
        assert row["mAP"] == pytest.approx(reversed_map(queries, database, gnd_raw, protocol))
        # the easy images lead the global ranking: reversing its head pushes them down
        if protocol != "H":
            assert row["mAP"] < global_row["mAP"]
    table = capsys.readouterr().out
    assert sum(line.startswith("reverse_shortlist ") for line in table.splitlines()) == 3
