"""What the evaluation and search tests on made-up features share: unit rows, random local
features, evaluation options and an ASMK index read back from the evaluation's cache."""

import numpy as np

from tools.rerank.asmk_search import (
    AsmkIndex,
    cache_dir_from_cfg,
    local_descriptors_of,
    params_from_cfg,
)


def unit_rows(rows):
    """The rows scaled to unit L2 norm, as float32."""
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def random_local(rng, count, dim=32):
    """Local features of a made-up image: `count` random places in 200 x 200 px, unit scales and
    scores, random unit descriptors."""
    return {
        "locations": rng.uniform(0, 200, (count, 2)).astype(np.float32),
        "scales": np.ones(count, np.float32),
        "scores": np.ones(count, np.float32),
        "descriptors": unit_rows(rng.standard_normal((count, dim))),
    }


def cpu_eval_options(root, dataset, methods, *extra):
    """Options that evaluate `methods` on `dataset` on the CPU, from the stores in root/features
    into root/out; `extra` adds or overrides."""
    return [
        "EVAL.DATASET",
        dataset,
        "EVAL.FEATURES_DIR",
        str(root / "features"),
        "OUT_DIR",
        str(root / "out"),
        "EVAL.METHODS",
        methods,
        "EVAL.DEVICE",
        "cpu",
        "DEVICE",
        "cpu",
        *extra,
    ]


def cached_asmk_index(cfg, database_store):
    """The ASMK index of `database_store` built as the evaluation builds it, independently of it (an
    evaluation that ran before leaves its codebook and inverted file in the cache)."""
    descriptors, image_ids, count = local_descriptors_of(database_store)
    return AsmkIndex.build(
        descriptors,
        image_ids,
        params_from_cfg(cfg),
        cache_dir=cache_dir_from_cfg(cfg),
        seed=cfg.ASMK.SEED,
        num_images=count,
    )
