"""Non-finite global descriptors: found with one vectorised test, reported naming the store and the
image.

A NaN or infinite component anywhere in a descriptor makes every score of that descriptor
non-finite, so the search checks the cheap sum of each score chunk and looks for the culprit rows
only when the sum is not finite; the caller, who knows the store, turns the rows into image names:

    with naming_stores(query_store, query_rows, database_store):
        ...search...
"""

from contextlib import contextmanager

import numpy as np
import torch

from datasets.features import FeatureStoreError

NAMED = 3  # images named in the message; the count says how many more


class NonFiniteDescriptors(ValueError):
    """Rows (of the array the search was given) whose global descriptor holds NaN or infinity."""

    def __init__(self, side, rows):
        self.side, self.rows = side, [int(row) for row in rows]
        super().__init__(
            f"{side} descriptor rows {self.rows[:NAMED]}{_more(self.rows)} are not finite "
            "(NaN or infinity)"
        )

    def in_store(self, store, store_rows=None):
        """The FeatureStoreError naming the store folder and the images; store_rows maps the rows
        of the searched array to the store's (None: the same)."""
        rows = [int(store_rows[row]) if store_rows is not None else row for row in self.rows]
        names = ", ".join(repr(store.names[row]) for row in rows[:NAMED])
        return FeatureStoreError(
            f"{store.folder}: the global descriptor of image {names}{_more(rows)} is not finite "
            "(NaN or infinity); the store is damaged or its model diverged: extract it again"
        )

    def in_stores(self, query_store, query_rows, database_store):
        """in_store of the side at fault: the queries (rows query_rows of query_store) or the
        database."""
        if self.side == "query":
            return self.in_store(query_store, query_rows)
        return self.in_store(database_store)


@contextmanager
def naming_stores(query_store, query_rows, database_store):
    """Inside, a NonFiniteDescriptors becomes the FeatureStoreError naming the store and the image
    (query_rows: the store rows of the searched queries)."""
    try:
        yield
    except NonFiniteDescriptors as error:
        raise error.in_stores(query_store, query_rows, database_store) from None


def _more(rows):
    return f" and {len(rows) - NAMED} more" if len(rows) > NAMED else ""


def non_finite_rows(array):
    """Indices of the rows of a [n, d] array or tensor holding a NaN or an infinity."""
    if isinstance(array, torch.Tensor):
        return (~torch.isfinite(array).all(dim=1)).nonzero().squeeze(1).cpu().numpy()
    return np.flatnonzero(~np.isfinite(np.asarray(array)).all(axis=1))


def check_finite(array, side, offset=0):
    """Raise NonFiniteDescriptors naming the rows (plus offset) of array that are not finite."""
    bad = non_finite_rows(array)
    if len(bad):
        raise NonFiniteDescriptors(side, bad + offset)


def check_scores(scores, database_rows, offset):
    """After scoring a chunk: when the scores are not all finite, the database rows at fault (the
    queries were checked before)."""
    if not bool(torch.isfinite(scores.sum())) and not bool(torch.isfinite(scores).all()):
        check_finite(database_rows, "database", offset)
