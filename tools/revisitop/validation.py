"""Retrieval-in-the-loop validation: the mAP of the model being trained on a revisitop-format set.

train_delg.py and the demo hand ``build_retrieval_validator`` to the trainer as an evaluator
factory (core/validation.py: the trainer builds each factory's evaluator from its config and calls
it every TRAIN.EVAL_PERIOD epochs and at the end). With TRAIN.RETRIEVAL_EVAL True the main process
extracts the global descriptors of EVAL.DATASET (queries cropped to their boxes,
EXTRACT.GLOBAL_SCALES and EXTRACT.MAX_IMAGE_SIZE, exactly as tools/extractor.py does), scores every
query against the whole database and computes mAP and mP@k for Easy / Medium / Hard with the
evaluation's metrics. Only global search: it shows the training working on the task the model is
for, at the cost of one global-only extraction of the set.

    validator = build_retrieval_validator(cfg)  # None when TRAIN.RETRIEVAL_EVAL is False
    table = validator.table(model, device)  # {"E": {"mAP": %, "mP@1": %, ...}, "M": ..., "H": ...}
    record = validator(model, device, epoch, global_iter)  # the JSON-lines record
    validator.describe(record)  # "on synth: 5 queries, ...: mAP E=.. M=.. H=.."
"""

import os

import numpy as np
import torch

from core.progress import track
from datasets.revisitop import RevisitopDataset, gnd_path
from datasets.transforms import build_normalizer
from tools.extraction.pyramid import ExtractionSettings, extract_image
from tools.extraction.sources import PreparedImages, RevisitopPart, item_loader
from tools.revisitop.context import split_dataset_name
from tools.revisitop.metrics import protocol_results_from_scores, summarize


class RetrievalValidator:
    """Global-search mAP of a model on one revisitop dataset; the images are read again at every
    call."""

    def __init__(
        self, dataset, global_scales, max_image_size, normalizer, kappas=(1, 5, 10), num_workers=0
    ):
        self.dataset = dataset
        self.settings = ExtractionSettings(global_scales=tuple(global_scales), local_scales=())
        self.max_image_size = max_image_size
        self.normalizer = normalizer
        self.kappas = tuple(kappas)
        self.num_workers = num_workers

    @property
    def title(self):
        return (
            f"{self.dataset.name}: {len(self.dataset.query_names)} queries, "
            f"{len(self.dataset.database_names)} database images"
        )

    def descriptors(self, model, device, part):
        """[n, D] float32 L2-normalised global descriptors of the queries or the database, in
        dataset order."""
        images = PreparedImages(RevisitopPart(self.dataset, part), self.max_image_size)
        loader = item_loader(images, self.num_workers)
        rows = []
        # a log line every 30 s off a terminal, a bar on one: minutes for ROxford5k at 1024 px
        for item in track(loader, len(images), f"retrieval validation, {part}", "image"):
            if item["error"] is not None:
                raise ValueError(f"retrieval validation: {item['path']}: {item['error']}")
            image = self.normalizer(item["pixels"].to(device))[None]
            features = extract_image(model, image, tuple(item["image_size"]), None, self.settings)
            rows.append(features["global"])
        return np.stack(rows).astype(np.float32)

    def table(self, model, device):
        """{protocol: {"mAP": %, "mP@k": %}}; the model is put in eval mode and back in its former
        mode."""
        was_training = model.training
        model.eval()
        try:
            queries = self.descriptors(model, device, "query")
            database = self.descriptors(model, device, "database")
        finally:
            model.train(was_training)
        scores = database @ queries.T  # [n_db, n_queries], the benchmark's layout
        return summarize(
            protocol_results_from_scores(scores, self.dataset.gnd, self.kappas), self.kappas
        )

    @torch.no_grad()
    def __call__(self, model, device, epoch, global_iter):
        """The JSON-lines record ("type": "retrieval", mAP and mP@k per protocol)."""
        record = {
            "type": "retrieval",
            "epoch": epoch,
            "iter": global_iter,
            "dataset": self.dataset.name,
        }
        for protocol, row in self.table(model, device).items():
            record.update({f"{metric}_{protocol}": value for metric, value in row.items()})
        return record

    def describe(self, record):
        """The log line's text for a record of __call__."""
        return (
            f"on {self.title}: mAP E={record['mAP_E']:.2f} M={record['mAP_M']:.2f} "
            f"H={record['mAP_H']:.2f}"
        )


def check_retrieval_inputs(cfg):
    """With TRAIN.RETRIEVAL_EVAL: an error naming the keys when EVAL.DATASET is not a
    revisitop-format set without distractors or its ground truth is missing (cheap: train_delg.py
    calls it before any process starts)."""
    if not cfg.TRAIN.RETRIEVAL_EVAL:
        return
    name = cfg.EVAL.DATASET
    if split_dataset_name(name)[1]:
        raise ValueError(
            f"TRAIN.RETRIEVAL_EVAL needs a revisitop-format EVAL.DATASET without distractors "
            f"(roxford5k, rparis6k, synth), got {name!r}"
        )
    if not os.path.isfile(gnd_path(cfg.EVAL.DATA_ROOT, name)):  # also a set of another benchmark
        raise FileNotFoundError(
            f"TRAIN.RETRIEVAL_EVAL: no ground truth {gnd_path(cfg.EVAL.DATA_ROOT, name)} (it needs "
            f"a revisitop-format EVAL.DATASET such as roxford5k, rparis6k, synth: set EVAL.DATASET "
            f"and EVAL.DATA_ROOT, or TRAIN.RETRIEVAL_EVAL False)"
        )


def build_retrieval_validator(cfg):
    """The validator of the EVAL.* dataset, or None when TRAIN.RETRIEVAL_EVAL is False; a missing
    set is an error naming the keys to set."""
    if not cfg.TRAIN.RETRIEVAL_EVAL:
        return None
    check_retrieval_inputs(cfg)
    dataset = RevisitopDataset(
        cfg.EVAL.DATA_ROOT, cfg.EVAL.DATASET, crop_queries=cfg.EXTRACT.CROP_QUERIES
    )
    normalizer = build_normalizer(cfg)
    return RetrievalValidator(
        dataset,
        cfg.EXTRACT.GLOBAL_SCALES,
        cfg.EXTRACT.MAX_IMAGE_SIZE,
        normalizer,
        cfg.EVAL.KAPPAS,
        cfg.DATA_LOADER.NUM_WORKERS,
    )
