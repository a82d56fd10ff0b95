"""The catalog of benchmarks: every benchmark module is imported here (one line each), and
EVAL.DATASET is looked up among their context classes (tools/retrieval/benchmark.py).

    benchmark = benchmark_of(cfg.EVAL.DATASET)   # the context class, e.g. RevisitopContext
    context = benchmark.build(cfg)
    query_store, database_store = open_store_pair(features_dir(cfg), cfg.EVAL.DATASET)
    folder = database_store_folder(cfg)          # what tools/search.py searches

A new benchmark is one module with a context class decorated with ``@register_benchmark(name)`` and
one import line below.
"""

import os

import tools.gldv2.context  # noqa: F401  (gldv2)
import tools.revisitop.context  # noqa: F401  (roxford5k, rparis6k, synth, ..., X+1m)
from core.config import ConfigError
from tools.extraction.stores import features_dir
from tools.retrieval.benchmark import BENCHMARKS


def benchmark_of(dataset):
    """The context class of EVAL.DATASET: a benchmark that takes the name, else the one that takes
    any name."""
    takers = [benchmark for _, benchmark in BENCHMARKS.entries() if benchmark.accepts(dataset)]
    named = [benchmark for benchmark in takers if not benchmark.any_name]
    if not takers:
        raise ConfigError(
            f"EVAL.DATASET: no benchmark takes {dataset!r}; known: {', '.join(BENCHMARKS.names())}"
        )
    return (named or takers)[0]


def open_store_pair(folder, dataset):
    """(query store, database store) of EVAL.DATASET `dataset` under folder."""
    return benchmark_of(dataset).open_stores(folder, dataset)


def database_store_folder(cfg):
    """The EVAL.DATASET database store under features_dir(cfg) (what tools/search.py searches)."""
    folder, dataset = features_dir(cfg), cfg.EVAL.DATASET
    candidates = [database for _, database in benchmark_of(dataset).store_pairs(dataset)]
    for name in candidates:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"no store {' or '.join(candidates)} under {folder} (EVAL.DATASET, EVAL.FEATURES_DIR); "
        f"name one with --store"
    )
