"""Training pairs of the re-ranker: per anchor one positive and one hard negative from its mined
top-K, each database side cut to a random count of locals (one model serves several database
budgets), the query side to N_QUERY. Random choices come from the RNGs the training loader seeds
per (seed, epoch, position) (datasets/sampling.py), so batches repeat after a resume."""

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.features import open_store
from modeling.reranker_inputs import collate_locals, top_locals


class PairDataset(Dataset):
    """Item i: anchor i's (query, positive) and (query, negative) pairs as top_locals dicts, with
    the global descriptors when with_global."""

    def __init__(self, store_folder, mined, n_query, n_database, n_database_min, with_global):
        if not 1 <= n_database_min <= n_database:
            raise ValueError(
                f"RERANKER.TRAIN.N_DATABASE_MIN {n_database_min}: expected 1 to "
                f"RERANKER.N_DATABASE ({n_database})"
            )
        self.folder = store_folder
        self.mined = mined
        self.n_query, self.n_database, self.n_database_min = n_query, n_database, n_database_min
        self.with_global = with_global
        self._store = None

    @property
    def store(self):  # opened in each worker: memory maps do not travel between processes
        if self._store is None:
            self._store = open_store(self.folder)
        return self._store

    def __len__(self):
        return len(self.mined.anchors)

    def _image(self, row, n):
        item = top_locals(self.store.local_at(int(row)), n)
        if self.with_global:
            item["global"] = np.asarray(self.store.global_descriptors()[int(row)], np.float32)
        return item

    def __getitem__(self, index):
        positive = self.mined.positive[index]
        neighbours = self.mined.neighbours[index]
        pos = neighbours[np.random.choice(np.flatnonzero(positive))]
        neg = neighbours[np.random.choice(np.flatnonzero(~positive))]
        counts = np.random.randint(self.n_database_min, self.n_database + 1, size=2)
        query = self._image(self.mined.anchors[index], self.n_query)
        return query, [self._image(pos, counts[0]), self._image(neg, counts[1])]


def collate_pairs(batch):
    """((query LocalBatch [2B], database LocalBatch [2B]), targets [2B] float: 1 positive, 0
    negative, number of failed items 0) as the training loop expects."""
    queries = [query for query, _ in batch for _ in range(2)]
    database = [image for _, images in batch for image in images]
    targets = torch.tensor([1.0, 0.0] * len(batch))
    return (_collate(queries), _collate(database)), targets, 0


def _collate(items):
    glob = np.stack([item["global"] for item in items]) if "global" in items[0] else None
    return collate_locals(items, global_descriptors=glob)
