"""What a benchmark is: one context class, registered under the benchmark's name (detectron2's
DatasetCatalog and evaluator in one).

    @register_benchmark("mybench")
    class MyContext(BenchmarkContext):
        @classmethod
        def accepts(cls, dataset):      # does EVAL.DATASET `dataset` name this benchmark?
            return dataset == "mybench"

        @classmethod
        def store_pairs(cls, dataset):  # the (query, database) store names, in order of preference
            return (("mybench_query", "mybench_database"),)

        @classmethod
        def build(cls, cfg):            # the context of cfg.EVAL.DATASET: ground truth, stores,
            ...                         # the global search

        # and the context methods of tools/retrieval/methods.EvaluationContext: shortlists,
        # global_results, results_with_reranked, results_from_ranking, summarize, search_again

The class owns everything that differs between benchmarks: the names it takes, its store names, its
ground truth, its metric and how it searches again with new descriptors (query expansion, DBA).
Nothing outside its module names it: tools/evaluation/benchmarks.py imports every benchmark module
and looks EVAL.DATASET up here (a benchmark that names the dataset, else the one that takes any
name: revisitop, whose sets are any folder with a gnd_<name>.pkl).
"""

import copy

import numpy as np

from modeling.registry import Registry
from tools.extraction.stores import open_first_pair

BENCHMARKS = Registry("benchmark", "EVAL.DATASET")


def register_benchmark(name):
    """Class decorator: make the context class a benchmark (tools/evaluation/benchmarks.py)."""
    return BENCHMARKS.register(name)


def query_descriptors(store, rows):
    """[len(rows), D] float32 global descriptors of these rows of a store."""
    return np.asarray(store.global_descriptors(), dtype=np.float32)[rows]


class BenchmarkContext:
    """The base of a benchmark's context class: the descriptors read from its stores, the copy a
    second search starts from, and the defaults of the class methods the catalog asks."""

    any_name = False  # True: the benchmark of every name no other benchmark accepts

    @classmethod
    def accepts(cls, dataset):
        """Whether EVAL.DATASET `dataset` is this benchmark's."""
        raise NotImplementedError

    @classmethod
    def store_pairs(cls, dataset):
        """((query store, database store), ...) names under the features folder, preferred first."""
        raise NotImplementedError

    @classmethod
    def missing_stores(cls, folder, dataset):
        """The message when none of store_pairs(dataset) is under folder."""
        pairs = cls.store_pairs(dataset)
        expected = " or ".join(f"{query} / {database}" for query, database in pairs)
        return (
            f"no feature stores {expected} under {folder} (EVAL.FEATURES_DIR; run "
            f"tools/extractor.py first)"
        )

    @classmethod
    def open_stores(cls, folder, dataset):
        """(query store, database store) of the first of store_pairs(dataset) under folder."""
        query, database = open_first_pair(folder, cls.store_pairs(dataset))
        if query is None:
            raise FileNotFoundError(cls.missing_stores(folder, dataset))
        return query, database

    @classmethod
    def build(cls, cfg):
        """The context of cfg.EVAL.DATASET (ground truth, stores, the global search)."""
        raise NotImplementedError

    @property
    def query_descriptors(self):
        return query_descriptors(self.query_store, self.query_rows)

    @property
    def database_descriptors(self):
        return self.database_store.global_descriptors()

    def derived(self):
        """A copy to hold another ranking: stores, ground truth and local features shared, the
        method cache its own."""
        other = copy.copy(self)
        other.cache = {}
        return other
