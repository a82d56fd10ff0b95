"""Training the re-ranker from a store (tools/reranker, tools/train_reranker.py): mining with the
exact k-NN, training pairs, exact resume on the one training loop, held-out selection of the
checkpoint and of lambda / gamma, and a mismatched label file refused."""

import os

import numpy as np
import pytest
import torch

from core import trainer
from core.checkpoint import list_checkpoints, read_training_checkpoint
from core.config import load_cfg
from datasets.features import open_store
from datasets.sampling import seeded_rngs
from modeling.reranker_weights import load_reranker
from tests.pair_world import make_pair_store
from tests.tiny import signal_at_step
from tools.reranker.mining import held_out_landmarks, held_out_set, mine, store_labels
from tools.reranker.pairs import PairDataset, collate_pairs
from tools.reranker.task import RERANKER_TASK, build_selection

PRESET = "configs/reranker/synthetic_demo.yaml"
TOTAL, STOP_AT = 8, 5  # 3 iterations per epoch: the stop is mid-epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_pair_store(tmp_path_factory.mktemp("pairs"), landmarks=12, per_landmark=6)


def options(world, out_dir, *extra):
    store, labels = world
    return [
        "RERANKER.TRAIN.STORE", store, "RERANKER.TRAIN.LABELS", labels, "OUT_DIR", str(out_dir),
        "RERANKER.DIM", "16", "RERANKER.FFN_DIM", "32", "RERANKER.N_QUERY", "12",
        "RERANKER.N_DATABASE", "8", "RERANKER.TRAIN.N_DATABASE_MIN", "3",
        "RERANKER.TRAIN.TOP_K", "10", "RERANKER.TRAIN.MIN_POSITIVES", "2",
        "RERANKER.TRAIN.VAL_FRACTION", "0.2", "RERANKER.TRAIN.VAL_SHORTLIST", "10",
        "RERANKER.TRAIN.VAL_QUERIES", "8", "RERANKER.TRAIN.GAMMAS", "[1.0, 4.0]",
        "RERANKER.TRAIN.LAMBDAS", "[0.0, 0.5]", "RERANKER.XY_ENCODING", "True",
        "RERANKER.GLOBAL_TOKEN", "True",
        "TRAIN.BATCH_SIZE", "8", "OPTIM.MAX_ITER", str(TOTAL), "TRAIN.EVAL_PERIOD", "2",
        "TRAIN.CHECKPOINT_PERIOD", "100", "TRAIN.CHECKPOINT_ITERS", "0", "TRAIN.CPU_THREADS", "1",
        "LOG_PERIOD", "1", "LOG_DEST", "file", *extra,
    ]  # fmt: skip


def train(opts):
    return trainer.train_in_process(load_cfg(PRESET, opts).dump(), [build_selection], RERANKER_TASK)


def test_mining_keeps_anchors_with_enough_positives_and_never_the_anchor(world):
    store = open_store(world[0])
    labels = store_labels(store.names, world[1])
    descriptors = np.asarray(store.global_descriptors())
    rows = np.arange(0, len(labels), 2)  # a subset: neighbours come from it only
    mined = mine(descriptors, labels, rows, top_k=6, min_positives=2)
    similarity = descriptors[rows] @ descriptors[rows].T
    np.fill_diagonal(similarity, -np.inf)
    expected = rows[np.argsort(-similarity, axis=1, kind="stable")[:, :6]]
    positives = (labels[expected] == labels[rows][:, None]).sum(1)
    keep = (positives >= 2) & (positives < 6)
    assert 0 < keep.sum() < len(rows)  # the rule removes some anchors here
    assert mined.anchors.tolist() == rows[keep].tolist()
    assert np.array_equal(mined.neighbours, expected[keep])
    assert not (mined.neighbours == mined.anchors[:, None]).any()
    assert np.array_equal(
        mined.positive, labels[mined.neighbours] == labels[mined.anchors][:, None]
    )


def test_held_out_queries_are_held_out_landmarks_only(world):
    store = open_store(world[0])
    labels = store_labels(store.names, world[1])
    val = held_out_landmarks(labels, 0.25, seed=1)
    assert len(val) == 3 and held_out_landmarks(labels, 0.25, seed=1).tolist() == val.tolist()
    held = held_out_set(np.asarray(store.global_descriptors()), labels, val, 5, 7, 1, 64, "cpu")
    assert len(held.queries) == 7 and np.isin(labels[held.queries], val).all()
    assert not (held.shortlist == held.queries[:, None]).any()
    assert (held.total_positives == 5).all()  # 6 images per landmark, the query excluded


def test_pairs_are_a_positive_and_a_negative_and_repeat_under_a_seed(world):
    store = open_store(world[0])
    labels = store_labels(store.names, world[1])
    mined = mine(np.asarray(store.global_descriptors()), labels, np.arange(len(labels)), 10, 2)
    dataset = PairDataset(world[0], mined, 12, 8, 3, with_global=False)
    with seeded_rngs(7):
        first = [dataset[i] for i in range(4)]
    with seeded_rngs(7):
        again = [dataset[i] for i in range(4)]
    (query, database), targets, failed = collate_pairs(first)
    assert targets.tolist() == [1.0, 0.0] * 4 and failed == 0
    assert query.descriptors.shape[0] == database.descriptors.shape[0] == 8
    counts = (~database.padding).sum(1)
    assert ((counts >= 1) & (counts <= 8)).all() and (~query.padding).sum(1).max() <= 12
    for a, b in zip(first, again, strict=True):
        assert all(np.array_equal(x["descriptors"], y["descriptors"]) for x, y in zip(a[1], b[1]))


def final_weights(out_dir):
    _, path = list_checkpoints(str(out_dir))[-1]
    state = read_training_checkpoint(path)
    return state["position"], state["model"]


def test_training_resumes_exactly_and_keeps_the_selected_model(world, tmp_path):
    assert train(options(world, tmp_path / "straight")) == 0
    with signal_at_step(STOP_AT):
        assert train(options(world, tmp_path / "resumed")) == 0
    assert list_checkpoints(str(tmp_path / "resumed"))[-1][0] == STOP_AT
    assert train(options(world, tmp_path / "resumed", "TRAIN.AUTO_RESUME", "True")) == 0
    position, weights = final_weights(tmp_path / "resumed")
    straight_position, straight = final_weights(tmp_path / "straight")
    assert position == straight_position and position["global_iter"] == TOTAL
    assert weights.keys() == straight.keys()
    assert all(torch.equal(weights[k], straight[k]) for k in weights)

    model, info = load_reranker(str(tmp_path / "resumed" / "reranker.pth"))
    _, straight_info = load_reranker(str(tmp_path / "straight" / "reranker.pth"))
    assert info["selection"] == straight_info["selection"]
    assert info["lambda"] in (0.0, 0.5) and info["gamma"] in (1.0, 4.0)
    assert info["provenance"] == open_store(world[0]).provenance
    assert info["config"]["N_DATABASE"] == 8 and info["selection"]["held_out_landmarks"] == 2
    log = (tmp_path / "straight" / "stdout.log").read_text()
    assert "pair_err=" in log and "held-out mAP global=" in log


def test_a_label_file_that_misses_store_images_is_refused(world, tmp_path):
    short = tmp_path / "short.csv"
    lines = open(world[1]).read().splitlines()
    short.write_text("\n".join(lines[:-1]) + "\n")
    opts = options(world, tmp_path / "run", "RERANKER.TRAIN.LABELS", str(short))
    assert train(opts) == trainer.EXIT_CONFIG
    log = (tmp_path / "run" / "stdout.log").read_text()
    assert "RERANKER.TRAIN.LABELS" in log and "not listed" in log


def test_the_training_split_csv_is_an_extraction_source(world):
    from tools.extraction.sources import gldv2_images

    images = gldv2_images(world[1], "/gld/train")
    assert images.names == open_store(world[0]).names  # the store's order: the CSV's order
    assert images.path(0) == os.path.join(
        "/gld/train", *images.names[0][:3], f"{images.names[0]}.jpg"
    )


def test_two_cpu_processes_train_through_the_command(world, tmp_path):
    """tools/train_reranker.py with NUM_GPUS 2 on CPU (gloo DDP): the main process mines, both
    train, the main process selects; the command exits 0 and reranker.pth loads."""
    import socket
    import subprocess
    import sys

    from tests.tiny import REPO

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = str(sock.getsockname()[1])
    opts = options(world, tmp_path, "NUM_GPUS", "2", "PORT", port, "OPTIM.MAX_ITER", "4")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_NTASKS")}
    done = subprocess.run(
        [sys.executable, "tools/train_reranker.py", "--cfg", PRESET, *opts],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    model, info = load_reranker(str(tmp_path / "reranker.pth"))
    assert info["selection"]["iteration"] == 4
    log = (tmp_path / "stdout.log").read_text()
    assert "process 0 of 2 on cpu" in log
