"""Training and validation datasets and loaders; unreadable images are skipped, logged and counted.

A bad image does not stop training by itself: the dataset returns None for it (the path and the
reason go to the log), ``collate_skip_failures`` drops it and reports how many were dropped, and the
trainer feeds the counts to a ``FailureBudget``, which stops the run once failures pass
TRAIN.MAX_BAD_IMAGE_FRACTION.
"""

import atexit
import functools
import gc
import logging
import multiprocessing
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.gldv2 import (
    ClassMapping,
    gldv2_image_path,
    load_gldv2_split,
    read_gldv2_csv,
    split_train_val,
    to_samples,
)
from datasets.image_io import ImageReadError, read_image
from datasets.list_dataset import read_image_list
from datasets.sampling import ResumableDistributedSampler, SeededSamples, mix_seeds
from datasets.transforms import TrainTransform, ValTransform, build_normalizer

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class ImageClassificationDataset(Dataset):
    """(relative image path, class index) samples under ``root``; items (image tensor, label) or
    None."""

    def __init__(self, root, samples, transform, reader=read_image):
        self.root = str(root)
        # numpy arrays rather than a list of tuples: worker processes forked from this one then
        # share the pages instead of copying them as Python's reference counting touches every
        # object
        self.paths = np.array([path.encode("utf-8") for path, _ in samples], dtype=np.bytes_)
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.transform = transform
        self.reader = reader

    def __len__(self):
        return len(self.labels)

    def image_path(self, index):
        return os.path.join(self.root, self.paths[index].decode("utf-8"))

    def __getitem__(self, index):
        try:
            image = self.reader(self.image_path(index))
        except ImageReadError as error:
            logger.warning("skipping unreadable image %s: %s", error.path, error.reason)
            return None
        return self.transform(image), int(self.labels[index])


def collate_skip_failures(batch):
    """Stack the readable items; return (images [B, 3, H, W], labels [B] int64, number of dropped
    items).

    When every item failed, images and labels are empty tensors (the trainer skips the step).
    """
    items = [item for item in batch if item is not None]
    num_failed = len(batch) - len(items)
    if not items:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), num_failed
    images = torch.stack([image for image, _ in items])
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)
    return images, labels, num_failed


class TooManyBadImagesError(RuntimeError):
    """More images failed to decode than the configured fraction allows."""


GRACE_IMAGES = 1000  # the budget's grace: a fraction of at least this many images (or all of them)


class FailureBudget:
    """Counts (seen, failed) images and raises once failed > max_fraction * max(seen, min_images).

    ``min_images`` keeps a few unlucky failures in the first batches from stopping a run: until that
    many images were seen, the allowance is max_fraction * min_images failures.
    """

    def __init__(self, max_fraction, min_images=1000, setting="TRAIN.MAX_BAD_IMAGE_FRACTION"):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"{setting} must be in [0, 1], got {max_fraction}")
        self.max_fraction = max_fraction
        self.min_images = min_images
        self.setting = setting
        self.seen = 0
        self.failed = 0

    @property
    def fraction(self):
        return self.failed / self.seen if self.seen else 0.0

    def update(self, seen, failed):
        """Add counts (seen includes the failed ones); raise TooManyBadImagesError when over the
        budget."""
        self.seen += int(seen)
        self.failed += int(failed)
        if self.failed > self.max_fraction * max(self.seen, self.min_images):
            raise TooManyBadImagesError(
                f"{self.failed} of {self.seen} images ({100 * self.fraction:.2f}%) could not be "
                f"read, more than {self.setting} = {self.max_fraction} allows; the log names each "
                "file and the reason"
            )

    def state_dict(self):
        return {"seen": self.seen, "failed": self.failed}

    def load_state_dict(self, state):
        self.seen, self.failed = int(state["seen"]), int(state["failed"])


# ----------------------------------------------------------------------------------------- builders
def build_failure_budget(cfg, num_images):
    """The bad-image budget of a training set of num_images: failures may reach
    TRAIN.MAX_BAD_IMAGE_FRACTION of the images seen, counted from min(GRACE_IMAGES, num_images)
    images so that one bad image among the first batches does not stop a large run; a set smaller
    than the grace gets no more allowance than its own size gives."""
    return FailureBudget(cfg.TRAIN.MAX_BAD_IMAGE_FRACTION, min_images=min(GRACE_IMAGES, num_images))


def train_data_root(cfg):
    """TRAIN.DATA_ROOT, or datasets/data/<TRAIN.DATASET> in the repository when it is empty."""
    return cfg.TRAIN.DATA_ROOT or str(REPO_ROOT / "datasets" / "data" / cfg.TRAIN.DATASET)


def _split_file(root, split, key):
    path = split if os.path.isabs(split) else os.path.join(root, split)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{key}: split file {path} does not exist")
    return path


def _split_format(cfg, path):
    fmt = cfg.TRAIN.FORMAT
    if fmt == "auto":
        return "gldv2" if path.lower().endswith(".csv") else "list"
    if fmt not in ("gldv2", "list"):
        raise ValueError(f"TRAIN.FORMAT must be gldv2, list or auto, got {fmt!r}")
    return fmt


def load_training_split(cfg):
    """Return (root, train samples, val samples, ClassMapping) of the TRAIN.* dataset."""
    root = train_data_root(cfg)
    path = _split_file(root, cfg.TRAIN.SPLIT, "TRAIN.SPLIT")
    if not 0.0 <= cfg.TRAIN.VAL_FRACTION < 1.0:
        raise ValueError(f"TRAIN.VAL_FRACTION must be in [0, 1), got {cfg.TRAIN.VAL_FRACTION}")
    fmt = _split_format(cfg, path)
    stamp = os.stat(path).st_mtime_ns  # re-read when the file changes
    train, val, mapping = _cached_split(
        path, fmt, cfg.TRAIN.VAL_FRACTION, cfg.TRAIN.SPLIT_SEED, stamp
    )
    return root, train, val, mapping


@functools.lru_cache(maxsize=2)  # the train and val builders share one parse of a 1.6M-image CSV
def _cached_split(path, fmt, val_fraction, seed, stamp):
    if fmt == "gldv2":
        return load_gldv2_split(path, val_fraction, seed)
    samples = read_image_list(path)
    paths_by_label = {}
    for image_path, label in samples:
        paths_by_label.setdefault(label, []).append(image_path)
    mapping = ClassMapping.identity(max(paths_by_label) + 1)
    if len(paths_by_label) < mapping.num_classes:
        logger.warning(
            "%s: %d distinct labels up to %d; list labels are class indices as they are (as in the "
            "seed project), so the classifier gets %d classes of which %d have no image. Number "
            "the labels 0..%d for a head of %d classes",
            path,
            len(paths_by_label),
            mapping.num_classes - 1,
            mapping.num_classes,
            mapping.num_classes - len(paths_by_label),
            len(paths_by_label) - 1,
            len(paths_by_label),
        )
    train, val = split_train_val(paths_by_label, val_fraction, seed)
    return to_samples(train, mapping), to_samples(val, mapping), mapping


def build_train_dataset(cfg):
    """Return (ImageClassificationDataset with the training augmentation, ClassMapping)."""
    root, train, _, mapping = load_training_split(cfg)
    transform = TrainTransform(cfg.TRAIN.IM_SIZE, build_normalizer(cfg), flip=cfg.TRAIN.FLIP)
    logger.info(
        "training set: %d images of %d classes under %s", len(train), mapping.num_classes, root
    )
    return ImageClassificationDataset(root, train, transform), mapping


def build_val_dataset(cfg):
    """Return (validation ImageClassificationDataset or None when there is none, ClassMapping of
    training).

    TEST.SPLIT names a list or GLDv2 csv under TEST.DATA_ROOT (default: the training root) whose
    labels are mapped through the training classes; when empty, the held-out TRAIN.VAL_FRACTION of
    the training split.
    """
    root, _, val, mapping = load_training_split(cfg)
    if cfg.TEST.SPLIT:
        root = cfg.TEST.DATA_ROOT or root
        val = _read_test_split(_split_file(root, cfg.TEST.SPLIT, "TEST.SPLIT"), mapping)
    if not val:
        logger.info("no validation images (TRAIN.VAL_FRACTION is 0 and TEST.SPLIT is empty)")
        return None, mapping
    transform = ValTransform(cfg.TEST.IM_SIZE, build_normalizer(cfg))
    return ImageClassificationDataset(root, val, transform), mapping


def _read_test_split(path, mapping):
    if path.lower().endswith(".csv"):
        images = read_gldv2_csv(path)
        labelled = [
            (gldv2_image_path(image_id), label) for label, ids in images.items() for image_id in ids
        ]
    else:
        labelled = read_image_list(path)
    try:
        return [(image_path, mapping.index(label)) for image_path, label in labelled]
    except KeyError as error:
        raise ValueError(f"TEST.SPLIT {path}: {error.args[0]}") from None


# ------------------------------------------------------------------------------------------ loaders
def init_worker(_worker_id):
    """worker_init_fn of every DataLoader (training, validation, extraction).

    Seeds numpy and random from the per-worker seed torch already derived, and ignores SIGTERM and
    SIGUSR1: preemption signals are for the main process, which checkpoints and then shuts the
    workers down (a worker that inherited its handler would log the signal once more; one killed by
    it would turn a clean stop into a DataLoader error).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@atexit.register  # runs before torch's and multiprocessing's exit functions, registered earlier
def _stop_workers_at_exit():
    """Workers ignore SIGTERM (init_worker), and multiprocessing's exit function ends daemonic
    children with SIGTERM, then waits for them: when an error keeps a loader's iterator alive (a
    traceback cycle, a persistent iterator), the process would wait forever. Every live iterator
    shuts its workers down as it would when deleted; a daemonic child left after that is killed."""
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    for item in gc.get_objects():  # those kept alive by a cycle only are listed too
        if type(item) is _MultiProcessingDataLoaderIter:  # type(): no property of any object runs
            item._shutdown_workers()
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def _per_process_batch(total, world_size, key):
    if total % world_size:
        raise ValueError(f"{key} = {total} is not divisible by the {world_size} processes")
    return total // world_size


def build_val_loader(cfg, dataset, rank, world_size, pin_memory=False):
    """Loader over this rank's share (every world_size-th image, none repeated) in a fixed order."""
    batch_size = _per_process_batch(cfg.TEST.BATCH_SIZE, world_size, "TEST.BATCH_SIZE")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=list(range(rank, len(dataset), world_size)),
        num_workers=cfg.DATA_LOADER.NUM_WORKERS,
        pin_memory=pin_memory,
        collate_fn=collate_skip_failures,
        worker_init_fn=init_worker,
    )


def make_train_loader(
    dataset, batch_size, num_workers, collate_fn, seed, rank=0, world_size=1, pin_memory=False
):
    """DataLoader over the dataset with the resumable sampler; call loader.sampler.set_epoch before
    each epoch."""
    sampler = ResumableDistributedSampler(len(dataset), batch_size, world_size, rank, seed)
    generator = torch.Generator()  # so building workers draws no number from the global RNG
    generator.manual_seed(mix_seeds(seed, rank, 0x10AD))
    return DataLoader(
        SeededSamples(dataset, seed),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=True,
        worker_init_fn=init_worker,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
