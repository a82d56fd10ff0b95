import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from datasets.loader import make_train_loader
from datasets.sampling import ResumableDistributedSampler, SeededSamples


def test_processes_get_disjoint_whole_batches_of_one_permutation():
    samplers = [
        ResumableDistributedSampler(23, batch_size=4, num_replicas=2, rank=r, seed=7)
        for r in (0, 1)
    ]
    for sampler in samplers:
        sampler.set_epoch(3)
    shares = [list(sampler) for sampler in samplers]
    assert [len(share) for share in shares] == [8, 8] and samplers[0].batches_per_epoch == 2
    indices = [index for share in shares for index, _, _ in share]
    # 23 images, 2 processes x 2 batches x 4: the rest waits for another epoch
    assert len(set(indices)) == 16
    positions = sorted(position for share in shares for _, _, position in share)
    assert positions == list(range(16)) and all(
        epoch == 3 for share in shares for _, epoch, _ in share
    )
    permutation = samplers[0].epoch_permutation(3).tolist()
    assert all(permutation[position] == index for share in shares for index, _, position in share)


def test_epochs_differ_and_repeat_with_the_seed():
    sampler = ResumableDistributedSampler(50, batch_size=5, seed=1)
    again = ResumableDistributedSampler(50, batch_size=5, seed=1)
    assert torch.equal(sampler.epoch_permutation(0), again.epoch_permutation(0))
    assert not torch.equal(sampler.epoch_permutation(0), sampler.epoch_permutation(1))


def test_start_batch_skips_the_consumed_batches():
    sampler = ResumableDistributedSampler(40, batch_size=4, num_replicas=2, rank=1, seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start_batch=3)
    assert list(sampler) == whole[12:] and len(sampler) == 8
    with pytest.raises(ValueError, match="outside the epoch"):
        sampler.set_epoch(2, start_batch=6)


def test_too_small_dataset_names_the_batch_size():
    with pytest.raises(ValueError, match="TRAIN.BATCH_SIZE"):
        ResumableDistributedSampler(7, batch_size=4, num_replicas=2)


class RandomItems(Dataset):
    """Each item draws from all three global RNGs, as augmentations do."""

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.tensor([index, torch.rand(()).item(), np.random.rand(), random.random()])


def test_seeded_items_ignore_global_state_and_leave_it_untouched():
    items = SeededSamples(RandomItems(), seed=5)
    torch.manual_seed(0)
    first = items[(3, 1, 7)]
    state = torch.get_rng_state()
    torch.manual_seed(123)
    np.random.seed(123)
    assert torch.equal(items[(3, 1, 7)], first)
    assert not torch.equal(items[(3, 1, 8)], first)  # another position, another draw
    torch.manual_seed(0)
    items[(3, 1, 7)]
    assert torch.equal(torch.get_rng_state(), state)


def test_loader_batches_are_the_same_with_and_without_workers():
    def batches(workers, start_batch):
        loader = make_train_loader(RandomItems(), 3, workers, torch.stack, seed=9)
        loader.sampler.set_epoch(1, start_batch)
        return list(loader)

    straight = batches(0, 0)
    resumed = batches(2, 2)
    assert len(straight) == 4 and len(resumed) == 2
    assert all(torch.equal(a, b) for a, b in zip(straight[2:], resumed))
