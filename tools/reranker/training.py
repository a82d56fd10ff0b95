"""Training the re-ranker: the launch (tools/train_reranker.py, NUM_GPUS processes or torchrun) and
the in-process call the demo makes. Both run core.trainer.train_in_process with the re-ranker task;
the result is OUT_DIR/reranker.pth (the checkpoint and lambda / gamma chosen on held-out training
landmarks)."""

import os

from core import distributed
from core.checkpoint import list_checkpoints
from core.trainer import train_in_process
from tools.reranker.selection import WEIGHTS_NAME
from tools.reranker.task import RERANKER_TASK, build_selection

EVALUATOR_FACTORIES = [build_selection]


def launch(cfg):
    """NUM_GPUS processes here (or this one under torchrun / srun); returns the exit code."""
    return distributed.launch(
        train_in_process,
        (cfg.dump(), EVALUATOR_FACTORIES, RERANKER_TASK),
        cfg.NUM_GPUS,
        cfg.HOST,
        cfg.PORT,
        cfg.DIST_BACKEND,
        cfg.DEVICE,
    )


def train_reranker(cfg, log=print):
    """Train in this process (continuing a run found in OUT_DIR); return the path of
    reranker.pth."""
    cfg = cfg.clone()
    cfg.TRAIN.AUTO_RESUME = bool(list_checkpoints(cfg.OUT_DIR)) or cfg.TRAIN.AUTO_RESUME
    if cfg.TRAIN.AUTO_RESUME:
        log(f"[reranker] continuing the training in {cfg.OUT_DIR}")
    code = train_in_process(cfg.dump(), EVALUATOR_FACTORIES, RERANKER_TASK)
    path = os.path.join(cfg.OUT_DIR, WEIGHTS_NAME)
    if code != 0 or not os.path.isfile(path):
        raise RuntimeError(f"re-ranker training stopped with exit code {code}; see the log above")
    return path
