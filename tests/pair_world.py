"""A toy training store for the re-ranker tests: landmarks made of a few shared local "parts",
images that see a random subset of their landmark's parts among clutter, and global descriptors
noisy enough that the global ranking mixes landmarks. Written with datasets.features.write_store and
a train_clean.csv, like an extraction of a GLDv2-layout training split."""

import numpy as np

from datasets.features import write_store


def unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def make_pair_store(
    folder, landmarks=12, per_landmark=6, dim=16, global_dim=8, seed=0, global_noise=0.5
):
    """Write the store into folder/store and folder/train_clean.csv; return (store, csv) paths."""
    rng = np.random.default_rng(seed)
    parts = unit(rng.standard_normal((landmarks, 12, dim)))
    centres = unit(rng.standard_normal((landmarks, global_dim)))
    names, globals_, local_features, rows = [], [], [], []
    for landmark in range(landmarks):
        ids = [f"{landmark:04x}{image:04x}{seed:08x}" for image in range(per_landmark)]
        rows.append(f"{100 + landmark}," + " ".join(ids))
        for name in ids:
            seen = parts[landmark, rng.random(12) < 0.6]
            clutter = unit(rng.standard_normal((int(rng.integers(4, 12)), dim)))
            descriptors = unit(np.concatenate([seen + 0.15 * rng.standard_normal(seen.shape),
                                               clutter]))  # fmt: skip
            count = len(descriptors)
            local_features.append({
                "locations": rng.uniform(0, 200, (count, 2)).astype(np.float32),
                "scales": rng.choice([0.5, 0.7071, 1.0, 1.4142], count).astype(np.float32),
                "scores": rng.uniform(0.1, 2.0, count).astype(np.float32),
                "descriptors": descriptors.astype(np.float32),
            })  # fmt: skip
            names.append(name)
            noise = global_noise * rng.standard_normal(global_dim)
            globals_.append(unit(centres[landmark] + noise))
    store = str(folder / "store")
    provenance = {"checkpoint_sha256": f"toy{seed}", "local_scales": [0.5, 0.7071, 1.0, 1.4142]}
    write_store(store, names, np.array(globals_, np.float32), local_features, provenance)
    labels = folder / "train_clean.csv"
    labels.write_text("landmark_id,images\n" + "\n".join(rows) + "\n")
    return store, str(labels)
