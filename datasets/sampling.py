"""The training order and seeding, so that batches depend only on (seed, epoch, position), never on
global state (datasets/loader.py make_train_loader builds the loader from them).

Exact resume needs three things from the data side, all here:
- the order: each epoch is a permutation drawn from (seed, epoch), cut into equal shares per
  process;
- resuming mid-epoch skips the consumed batches by starting the sampler at an offset, without
  decoding them;
- the augmentation: every sample's random crop is drawn from RNGs seeded with (seed, epoch, position
  in the epoch), so it is the same whichever worker decodes it, however many workers there are, and
  after a resume.
"""

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableDistributedSampler(Sampler):
    """Per epoch, a seeded permutation of range(num_samples) cut to whole batches for every process.

    Yields (dataset index, epoch, position) with position the sample's place in the epoch's
    permutation (unique over processes). set_epoch(epoch, start_batch) selects the epoch and skips
    its first start_batch batches.
    """

    def __init__(self, num_samples, batch_size, num_replicas=1, rank=0, seed=0, shuffle=True):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.batches_per_epoch = num_samples // (batch_size * num_replicas)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training set has {num_samples} images, fewer than one batch of {batch_size} "
                f"images for each of {num_replicas} processes; lower TRAIN.BATCH_SIZE"
            )
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch, start_batch=0):
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(
                f"start batch {start_batch} is outside the epoch's {self.batches_per_epoch} batches"
            )
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_permutation(self, epoch):
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator()
        generator.manual_seed(mix_seeds(self.seed, epoch, 0x5EED))
        return torch.randperm(self.num_samples, generator=generator)

    def __len__(self):
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self):
        used = self.batches_per_epoch * self.batch_size * self.num_replicas
        mine = self.epoch_permutation(self.epoch)[:used][self.rank :: self.num_replicas].tolist()
        for i in range(self.start_batch * self.batch_size, len(mine)):
            yield mine[i], self.epoch, i * self.num_replicas + self.rank


class SeededSamples(Dataset):
    """Wraps a dataset so that item (index, epoch, position) is produced under RNGs seeded from
    those numbers."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch, position = key
        with seeded_rngs(mix_seeds(self.seed, epoch, position)):
            return self.dataset[index]


@contextlib.contextmanager
def seeded_rngs(seed):
    """Seed torch, NumPy and Python RNGs for the block, then put the previous states back."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


def mix_seeds(*numbers):
    """A 63-bit seed from a few integers (SplitMix64-style), so nearby inputs give unrelated
    streams."""
    value = 0
    for number in numbers:
        value = (value ^ (number & 0xFFFFFFFFFFFFFFFF)) + 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value >> 1
