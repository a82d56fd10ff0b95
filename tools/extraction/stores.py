"""Where feature stores live and what the extractor calls them: the one place the naming is written.

    output_dir(cfg)      # where the extractor writes: EXTRACT.OUTPUT_DIR, else OUT_DIR/features
    features_dir(cfg)    # where evaluation and search read: EVAL.FEATURES_DIR, else output_dir(cfg)
    query, database = open_first_pair(folder, (("x_query", "x_database"), ...))

A query/database dataset X (revisitop format) is extracted into ``X_query`` and ``X_database``;
other formats (folder, list, gldv2 CSV) give one store named EXTRACT.DATASET. Which stores a
benchmark reads (EVAL.DATASET) its context class says (tools/retrieval/benchmark.py,
tools/evaluation/benchmarks.py: ``open_store_pair(folder, dataset)``).
"""

import os

from datasets.features import open_store

PARTS = ("query", "database")


def output_dir(cfg):
    """The folder the extractor writes its stores into."""
    return cfg.EXTRACT.OUTPUT_DIR or os.path.join(cfg.OUT_DIR, "features")


def features_dir(cfg):
    """The folder evaluation, search and pictures read stores from."""
    return cfg.EVAL.FEATURES_DIR or output_dir(cfg)


def part_store_names(dataset):
    """(query store name, database store name) the extractor gives a revisitop-format dataset."""
    return tuple(f"{dataset}_{part}" for part in PARTS)


def dataset_of_store(store_name):
    """'roxford5k_query' -> 'roxford5k': the dataset a revisitop part store was extracted from."""
    for part in PARTS:
        if store_name.endswith(f"_{part}"):
            return store_name[: -len(part) - 1]
    return store_name


def open_first_pair(folder, pairs):
    """(query store, database store) of the first (query name, database name) of pairs whose two
    folders are under folder; (None, None) when none is."""
    for query_name, database_name in pairs:
        query, database = os.path.join(folder, query_name), os.path.join(folder, database_name)
        if os.path.isdir(query) and os.path.isdir(database):
            return open_store(query), open_store(database)
    return None, None
