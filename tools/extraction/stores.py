"""Where feature stores live and what they are called: the one place the naming is written.

    output_dir(cfg)      # where the extractor writes: EXTRACT.OUTPUT_DIR, else OUT_DIR/features
    features_dir(cfg)    # where evaluation and search read: EVAL.FEATURES_DIR, else output_dir(cfg)
    query, database = open_store_pair(features_dir(cfg), cfg.EVAL.DATASET)

A revisitop-format dataset X is extracted into ``X_query`` and ``X_database``; ``X+1m`` (X with the
revisitop1m distractors) reads ``X+1m_*`` stores when they exist, else those of X. GLDv2 reads
``gldv2_test`` / ``gldv2_index`` (extract test.csv and index.csv under those EXTRACT.DATASET
names), or ``gldv2_query`` / ``gldv2_database``. Other formats (folder, list, gldv2 CSV) give one
store named EXTRACT.DATASET.
"""

import os

from datasets.features import open_store

DISTRACTOR_SUFFIX = "+1m"
GLDV2 = "gldv2"  # the EVAL.DATASET name of Google Landmarks v2 retrieval
GLDV2_STORE_NAMES = (("gldv2_test", "gldv2_index"), ("gldv2_query", "gldv2_database"))
PARTS = ("query", "database")


def output_dir(cfg):
    """The folder the extractor writes its stores into."""
    return cfg.EXTRACT.OUTPUT_DIR or os.path.join(cfg.OUT_DIR, "features")


def features_dir(cfg):
    """The folder evaluation, search and pictures read stores from."""
    return cfg.EVAL.FEATURES_DIR or output_dir(cfg)


def split_dataset_name(name):
    """'roxford5k+1m' -> ('roxford5k', True); 'rparis6k' -> ('rparis6k', False)."""
    if name.endswith(DISTRACTOR_SUFFIX):
        return name[: -len(DISTRACTOR_SUFFIX)], True
    return name, False


def part_store_names(dataset):
    """(query store name, database store name) the extractor gives a revisitop-format dataset."""
    return tuple(f"{dataset}_{part}" for part in PARTS)


def dataset_of_store(store_name):
    """'roxford5k_query' -> 'roxford5k': the dataset a revisitop part store was extracted from."""
    for part in PARTS:
        if store_name.endswith(f"_{part}"):
            return store_name[: -len(part) - 1]
    return store_name


def store_pair_names(dataset):
    """The (query, database) store names EVAL.DATASET may be read from, in order of preference."""
    if dataset == GLDV2:
        return GLDV2_STORE_NAMES
    base, _ = split_dataset_name(dataset)
    return tuple(part_store_names(name) for name in dict.fromkeys([dataset, base]))


def _missing_pair(folder, dataset):
    if dataset == GLDV2:
        expected = " or ".join(f"{query} + {index}" for query, index in GLDV2_STORE_NAMES)
        return FileNotFoundError(
            f"no GLDv2 feature stores {expected} under {folder} (EVAL.FEATURES_DIR; extract "
            f"test.csv and index.csv with EXTRACT.FORMAT gldv2 and those EXTRACT.DATASET names)"
        )
    return FileNotFoundError(
        f"no feature stores {dataset}_query / {dataset}_database under {folder} "
        f"(EVAL.FEATURES_DIR; run tools/extractor.py first)"
    )


def open_store_pair(folder, dataset):
    """(query store, database store) of EVAL.DATASET under folder (see the module docstring)."""
    for query_name, database_name in store_pair_names(dataset):
        query, database = os.path.join(folder, query_name), os.path.join(folder, database_name)
        if os.path.isdir(query) and os.path.isdir(database):
            return open_store(query), open_store(database)
    raise _missing_pair(folder, dataset)


def database_store_folder(cfg):
    """The EVAL.DATASET database store under features_dir(cfg) (what tools/search.py searches)."""
    folder = features_dir(cfg)
    candidates = [database for _, database in store_pair_names(cfg.EVAL.DATASET)]
    for name in candidates:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"no store {' or '.join(candidates)} under {folder} (EVAL.DATASET, EVAL.FEATURES_DIR); "
        f"name one with --store"
    )
