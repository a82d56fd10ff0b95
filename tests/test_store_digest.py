"""A store's arrays are tied to its meta.json (datasets/digests.py): a digest of each array is
recorded at write and checked by size and sampled sha256 at open, so an array swapped in from
another store of the same shape is refused in one line naming the store and the file; a store
written without digests opens with one warning until they are recorded."""

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from datasets.features import FeatureStoreError, concatenate_stores, open_store, write_store
from tests.eval_helpers import random_local, unit_rows


def _store(folder, seed, rows=6, dim=16):
    rng = np.random.default_rng(seed)
    names = [f"img_{i}" for i in range(rows)]
    local = [random_local(rng, 5) for _ in names]
    write_store(folder, names, unit_rows(rng.standard_normal((rows, dim))), local)
    return folder


@pytest.mark.parametrize("array", ["global.npy", "local_descriptors.npy", "local_locations.npy"])
def test_an_array_from_another_store_of_the_same_shape_is_refused(tmp_path, array):
    ours, other = _store(tmp_path / "ours", 0), _store(tmp_path / "other", 1)
    open_store(ours)
    shutil.copyfile(other / array, ours / array)
    with pytest.raises(FeatureStoreError) as error:
        open_store(ours)
    message = str(error.value)
    assert "\n" not in message
    assert str(ours / array) in message and f"the store {ours} " in message


def test_a_large_array_is_checked_by_sampled_pages(tmp_path):
    """A 4 MiB global.npy (over the 1 MiB read whole) swapped for another one is still refused."""
    ours = _store(tmp_path / "ours", 0, rows=2048, dim=512)
    other = _store(tmp_path / "other", 1, rows=2048, dim=512)
    assert (ours / "global.npy").stat().st_size > 4 * 2**20
    shutil.copyfile(other / "global.npy", ours / "global.npy")
    with pytest.raises(FeatureStoreError, match="sampled sha256"):
        open_store(ours)


def test_digests_are_recorded_by_every_writer(tmp_path):
    first, second = _store(tmp_path / "a", 0), _store(tmp_path / "b", 1)
    joined = tmp_path / "joined"
    concatenate_stores(joined, [open_store(first), open_store(second)])
    for folder in (first, joined):
        digests = json.loads((folder / "meta.json").read_text())["digests"]
        assert sorted(digests) == sorted(path.name for path in folder.glob("*.npy"))
    store = open_store(joined)
    assert len(store.array_sha256("global")) == 64


def test_a_store_without_digests_opens_with_one_warning_until_they_are_recorded(tmp_path, caplog):
    from datasets.features import record_digests

    ours, other = _store(tmp_path / "ours", 0), _store(tmp_path / "other", 1)
    meta = json.loads((ours / "meta.json").read_text())
    del meta["digests"]
    (ours / "meta.json").write_text(json.dumps(meta))
    caplog.set_level(logging.WARNING)
    store = open_store(ours)
    open_store(ours)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and str(ours) in warnings[0] and "record_digests" in warnings[0]
    # derived data are still keyed by the content: the file's sha256, computed
    assert (
        store.array_sha256("global")
        == hashlib.sha256((ours / "global.npy").read_bytes()).hexdigest()
    )
    record_digests(ours)
    shutil.copyfile(other / "global.npy", ours / "global.npy")
    with pytest.raises(FeatureStoreError, match="global.npy"):
        open_store(ours)
