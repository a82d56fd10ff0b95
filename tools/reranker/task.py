"""The re-ranker as a task of the one training loop (core/task.py): mined pairs from a training
store, the re-ranker, binary cross-entropy, and the held-out selection as the loop's evaluator.

tools/train_reranker.py hands RERANKER_TASK and build_selection to core.trainer.train_in_process.
"""

import os

import numpy as np
import torch.nn.functional as F
from torch import nn

from core import distributed as dist
from core.logging import get_logger
from core.task import TrainingData, TrainingTask
from datasets.features import open_store
from datasets.loader import build_failure_budget, make_train_loader
from modeling.reranker import build_reranker
from tools.reranker.mining import (
    held_out_landmarks,
    held_out_set,
    load_mined,
    mine,
    save_mined,
    store_labels,
)
from tools.reranker.pairs import PairDataset, collate_pairs
from tools.reranker.selection import HeldOutSelection

logger = get_logger(__name__)


def training_store(cfg):
    """The training store, checked: global and local features."""
    folder = cfg.RERANKER.TRAIN.STORE
    if not folder:
        raise ValueError("RERANKER.TRAIN.STORE: name the feature store of the training split")
    store = open_store(folder)
    if not (store.has_global and store.has_local):
        raise ValueError(f"RERANKER.TRAIN.STORE {folder}: global and local features needed")
    return store


def mining_key(cfg, store):
    t = cfg.RERANKER.TRAIN
    return {
        "store": os.path.abspath(store.folder),
        "images": len(store),
        "global_sha256": store.array_sha256("global"),
        "labels": os.path.abspath(t.LABELS),
        **{k: t[k] for k in ("TOP_K", "MIN_POSITIVES", "VAL_FRACTION", "VAL_SHORTLIST")},
        "VAL_QUERIES": t.VAL_QUERIES,
        "seed": cfg.RNG_SEED,
    }


def mined_sets(cfg):
    """(Mined, HeldOut, held-out landmark count): mined by the main process into OUT_DIR/mining
    (reused when its key matches), read by all."""
    store, t = training_store(cfg), cfg.RERANKER.TRAIN
    folder, key = os.path.join(cfg.OUT_DIR, "mining"), mining_key(cfg, store)
    labels = store_labels(store.names, t.LABELS)
    val_landmarks = held_out_landmarks(labels, t.VAL_FRACTION, cfg.RNG_SEED)
    if dist.is_main_process() and load_mined(folder, key) is None:
        descriptors = store.global_descriptors()
        device = dist.resolve_device(t.SEARCH_DEVICE)
        train_rows = np.flatnonzero(~np.isin(labels, val_landmarks))
        mined = mine(descriptors, labels, train_rows, t.TOP_K, t.MIN_POSITIVES, t.SEARCH_CHUNK,
                     device)  # fmt: skip
        held_out = held_out_set(descriptors, labels, val_landmarks, t.VAL_SHORTLIST,
                                t.VAL_QUERIES, cfg.RNG_SEED, t.SEARCH_CHUNK, device)  # fmt: skip
        save_mined(folder, key, mined, held_out)
        logger.info(
            "mined %s: %d of %d training images are anchors (>= %d positives in their top-%d); "
            "%d held-out landmarks, %d queries",
            store.folder, len(mined.anchors), len(train_rows), t.MIN_POSITIVES, t.TOP_K,
            len(val_landmarks), len(held_out.queries),
        )  # fmt: skip
    dist.barrier()
    loaded = load_mined(folder, key)
    if loaded is None:
        raise FileNotFoundError(f"{folder}: the mined sets are missing or stale")
    if len(loaded[0].anchors) == 0:
        raise ValueError(
            f"RERANKER.TRAIN.MIN_POSITIVES {t.MIN_POSITIVES}: no anchor of {store.folder} has "
            f"that many positives in its top-{t.TOP_K}; lower it or raise RERANKER.TRAIN.TOP_K"
        )
    return (*loaded, len(val_landmarks))


def build_pair_data(cfg, rank, world, pin_memory):
    mined, _, _ = mined_sets(cfg)
    if cfg.TRAIN.BATCH_SIZE % world:
        raise ValueError(
            f"TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE} is not divisible by the {world} processes"
        )
    r = cfg.RERANKER
    dataset = PairDataset(r.TRAIN.STORE, mined, r.N_QUERY, r.N_DATABASE, r.TRAIN.N_DATABASE_MIN,
                          r.GLOBAL_TOKEN)  # fmt: skip
    loader = make_train_loader(dataset, cfg.TRAIN.BATCH_SIZE // world, cfg.DATA_LOADER.NUM_WORKERS,
                               collate_pairs, cfg.RNG_SEED, rank, world, pin_memory)  # fmt: skip
    logger.info("%d anchors, 2 pairs each (a positive, a hard negative)", len(dataset))
    landmarks = np.unique(
        store_labels(open_store(r.TRAIN.STORE).names, r.TRAIN.LABELS)[mined.anchors]
    )
    return TrainingData(loader, None, [int(x) for x in landmarks],
                        build_failure_budget(cfg, len(dataset)))  # fmt: skip


def build_pair_model(cfg):
    meta = training_store(cfg).meta
    return build_reranker(cfg, meta["local_dim"], meta["global_dim"])


class PairLoss(nn.Module):
    """Binary cross-entropy of the pair logits against same landmark (1) or not (0)."""

    def forward(self, outputs, targets):
        loss = F.binary_cross_entropy_with_logits(outputs["logits"], targets)
        return loss, {"bce": loss.detach()}


def build_pair_loss(cfg):
    return PairLoss()


def pair_forward(net, inputs, targets):
    query, database = inputs
    return {"logits": net(query, database)}


def pair_statistics(outputs, targets):
    wrong = (outputs["logits"].detach() > 0).float() != targets
    return {"pair_err": 100.0 * wrong.float().sum()}


RERANKER_TASK = TrainingTask(
    build_data=build_pair_data,
    build_model=build_pair_model,
    build_loss=build_pair_loss,
    forward=pair_forward,
    batch_statistics=pair_statistics,
    log_fields={"pair_err": "pair_err"},
)


def build_selection(cfg):
    """The evaluator factory (core/validation.py): held-out selection of checkpoint and lambda."""

    def held_out():
        _, held, landmarks = mined_sets_cached(cfg)
        return held, landmarks

    return HeldOutSelection(cfg, held_out)


def mined_sets_cached(cfg):
    """The mined sets as the main process left them (no barrier: the evaluator runs alone)."""
    store = training_store(cfg)
    loaded = load_mined(os.path.join(cfg.OUT_DIR, "mining"), mining_key(cfg, store))
    labels = store_labels(store.names, cfg.RERANKER.TRAIN.LABELS)
    count = len(held_out_landmarks(labels, cfg.RERANKER.TRAIN.VAL_FRACTION, cfg.RNG_SEED))
    return (*loaded, count)
