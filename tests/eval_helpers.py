"""What the evaluation and search tests on made-up features share: unit rows, random local
features, and evaluation options."""

import numpy as np


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
