"""Choosing the re-ranker's checkpoint and the final score's lambda / gamma on held-out training
landmarks (tools/reranker/mining.py HeldOut), never on the test benchmark.

At every validation of the training loop the evaluator scores each held-out query's global
shortlist with the model (evaluation mode: a binary model uses sign), computes mAP over the
shortlist (positives outside it count as missed) for the global score, the logit alone and every
lambda * global + (1 - lambda) * sigmoid(gamma * logit) of the RERANKER.TRAIN grid, and writes
OUT_DIR/reranker.pth (modeling/reranker_weights.py) when the best combination improves on the best
so far.
"""

import os

import numpy as np
import torch

from core.logging import get_logger
from core.task import to_device
from datasets.features import open_store
from modeling.reranker import combine_scores
from modeling.reranker_inputs import collate_locals, take, top_locals
from modeling.reranker_weights import load_reranker, save_reranker

logger = get_logger(__name__)
WEIGHTS_NAME = "reranker.pth"


def image_batch(store, rows, n, with_global):
    """A LocalBatch of the store rows, each cut to its n best locals."""
    items = [top_locals(store.local_at(int(row)), n) for row in rows]
    glob = np.asarray(store.global_descriptors()[np.asarray(rows)]) if with_global else None
    return collate_locals(items, n=n, global_descriptors=glob)


@torch.no_grad()
def shortlist_logits(model, store, held_out, n_query, n_database, batch_size, device):
    """[Q, S] logits of every held-out query against its shortlist."""
    with_global = model.global_embed is not None
    queries = image_batch(store, held_out.queries, n_query, with_global)
    unique, inverse = np.unique(held_out.shortlist, return_inverse=True)
    database = image_batch(store, unique, n_database, with_global)
    q_index = np.repeat(np.arange(len(held_out.queries)), held_out.shortlist.shape[1])
    d_index = inverse.reshape(-1)
    logits = []
    for start in range(0, len(q_index), batch_size):
        q = take(queries, torch.from_numpy(q_index[start : start + batch_size]))
        d = take(database, torch.from_numpy(d_index[start : start + batch_size]))
        logits.append(model(to_device(q, device), to_device(d, device)).cpu())
    return torch.cat(logits).reshape(held_out.shortlist.shape).numpy()


def average_precisions(scores, positive, total_positives):
    """[Q] AP of each query's shortlist ranked by scores (ties: shortlist order); positives outside
    the shortlist count as missed."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(positive, order, 1).astype(np.float64)
    ranks = np.arange(1, scores.shape[1] + 1)
    precision = np.cumsum(hits, 1) / ranks
    return (precision * hits).sum(1) / np.maximum(total_positives, 1)


def choose_lambda_gamma(global_scores, logits, held_out, lambdas, gammas):
    """(best mAP, lambda, gamma) over the grid, first best in grid order."""
    best = (-1.0, None, None)
    g, z = torch.from_numpy(global_scores), torch.from_numpy(logits)
    for lam in lambdas:
        for gamma in gammas:
            scores = combine_scores(g, z, lam, gamma).numpy()
            value = average_precisions(scores, held_out.positive, held_out.total_positives).mean()
            if value > best[0]:
                best = (float(value), float(lam), float(gamma))
    return best


def held_out_record(model, store, held_out, section, device):
    """The held-out mAPs (global, learned logit, best combination) with lambda and gamma."""
    logits = shortlist_logits(
        model, store, held_out, section.N_QUERY, section.N_DATABASE, section.BATCH_SIZE, device
    )
    ap = lambda scores: float(  # noqa: E731
        average_precisions(scores, held_out.positive, held_out.total_positives).mean()
    )
    combined, lam, gamma = choose_lambda_gamma(
        held_out.scores, logits, held_out, section.TRAIN.LAMBDAS, section.TRAIN.GAMMAS
    )
    return {
        "map_global": 100 * ap(held_out.scores),
        "map_learned": 100 * ap(logits),
        "map_combined": 100 * combined,
        "lambda": lam,
        "gamma": gamma,
        "queries": len(held_out.queries),
    }


class HeldOutSelection:
    """The training loop's evaluator (core/validation.py): held-out mAP, and reranker.pth kept at
    the best validation so far."""

    def __init__(self, cfg, load_held_out):
        self.cfg = cfg
        self.load_held_out = load_held_out  # () -> (HeldOut, number of held-out landmarks)
        self.path = os.path.join(cfg.OUT_DIR, WEIGHTS_NAME)
        self.best = -1.0
        if cfg.TRAIN.AUTO_RESUME and os.path.isfile(self.path):  # a resumed run keeps its best
            self.best = load_reranker(self.path)[1]["selection"]["val_map_combined"]

    def __call__(self, model, device, epoch, global_iter):
        store = open_store(self.cfg.RERANKER.TRAIN.STORE)
        held_out, landmarks = self.load_held_out()
        was_training = model.training
        model.eval()
        try:
            record = held_out_record(model, store, held_out, self.cfg.RERANKER, device)
        finally:
            model.train(was_training)
        record = {"type": "reranker_val", "epoch": epoch, "iter": global_iter, **record}
        record["kept"] = record["map_combined"] > self.best
        if record["kept"]:
            self.best = record["map_combined"]
            self.save(model, store, record, landmarks)
        return record

    def save(self, model, store, record, landmarks):
        selection = {f"val_{key}": record[key] for key in ("map_global", "map_learned")}
        selection |= {
            "val_map_combined": record["map_combined"],
            "iteration": record["iter"],
            "held_out_landmarks": landmarks,
            "val_queries": record["queries"],
        }
        info = {
            "lambda": record["lambda"],
            "gamma": record["gamma"],
            "provenance": store.provenance,
            "training_store": os.path.abspath(store.folder),
            "selection": selection,
        }
        meta = store.meta
        save_reranker(
            self.path, model, self.cfg.RERANKER, meta["local_dim"], meta["global_dim"], info
        )

    @staticmethod
    def describe(record):
        return (
            f"held-out mAP global={record['map_global']:.2f} learned={record['map_learned']:.2f} "
            f"combined={record['map_combined']:.2f} (lambda {record['lambda']}, gamma "
            f"{record['gamma']}){' kept' if record['kept'] else ''}"
        )
