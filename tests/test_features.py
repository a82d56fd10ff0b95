import json

import numpy as np
import pytest

from datasets.features import FeatureStoreError, concatenate_stores, open_store, write_store


def _local(rng, count, dim=8):
    descriptors = rng.normal(size=(count, dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return {
        "locations": rng.uniform(0, 100, size=(count, 2)),
        "scales": np.full(count, 0.5),
        "scores": rng.uniform(size=count),
        "descriptors": descriptors,
    }


def test_round_trip_reads_each_image_back(tmp_path):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    local = [_local(rng, 5), _local(rng, 0), _local(rng, 3)]
    global_descriptors = rng.normal(size=(3, 4)).astype(np.float32)
    write_store(
        tmp_path,
        names,
        global_descriptors,
        local,
        provenance={"model": "x"},
        crop_boxes={"a": [1, 2, 3, 4]},
    )
    store = open_store(tmp_path)
    assert store.names == names
    np.testing.assert_array_equal(store.global_descriptors(), global_descriptors)
    assert store.local("b")["descriptors"].shape == (0, 8)
    read = store.local("c")
    assert read["descriptors"].dtype == np.float16
    np.testing.assert_allclose(read["descriptors"], local[2]["descriptors"], atol=1e-3)
    np.testing.assert_allclose(read["locations"], local[2]["locations"], rtol=1e-6)
    assert store.crop_boxes == {"a": [1, 2, 3, 4]} and store.provenance == {"model": "x"}


def test_store_files_are_not_pickles(tmp_path):
    rng = np.random.default_rng(1)
    write_store(tmp_path, ["a"], rng.normal(size=(1, 4)), [_local(rng, 2)])
    for path in tmp_path.glob("*.npy"):
        np.load(path, allow_pickle=False)
    json.loads((tmp_path / "meta.json").read_text())


def test_global_only_store_refuses_local_reads(tmp_path):
    write_store(tmp_path, ["a", "b"], np.ones((2, 3)))
    store = open_store(tmp_path)
    with pytest.raises(FeatureStoreError, match="global-only"):
        store.local("a")
    with pytest.raises(FeatureStoreError, match="no image named"):
        store.index_of("zzz")


def test_incomplete_or_inconsistent_store_is_reported(tmp_path):
    with pytest.raises(FeatureStoreError, match="no meta.json"):
        open_store(tmp_path)
    with pytest.raises(FeatureStoreError, match="2 global descriptors for 3 image names"):
        write_store(tmp_path, ["a", "b", "c"], np.ones((2, 3)))


def test_float16_store_of_1000_features_costs_at_most_270_kib(tmp_path):
    rng = np.random.default_rng(2)
    write_store(tmp_path, ["a"], None, [_local(rng, 1000, dim=128)], float16=True)
    # 256 KB of descriptors + 16 KB of geometry
    assert open_store(tmp_path).bytes_per_image() <= 270 * 1024


def test_concatenated_stores_equal_one_store_written_whole(tmp_path):
    rng = np.random.default_rng(3)
    names = [f"im{i}" for i in range(5)]
    local = [_local(rng, count) for count in (4, 0, 2, 3, 1)]
    global_descriptors = rng.normal(size=(5, 6)).astype(np.float32)
    write_store(tmp_path / "whole", names, global_descriptors, local)
    write_store(tmp_path / "a", names[:2], global_descriptors[:2], local[:2])
    write_store(tmp_path / "b", names[2:], global_descriptors[2:], local[2:])
    concatenate_stores(
        tmp_path / "joined", [open_store(tmp_path / "a"), open_store(tmp_path / "b")]
    )
    whole, joined = open_store(tmp_path / "whole"), open_store(tmp_path / "joined")
    assert joined.names == names
    np.testing.assert_array_equal(joined.global_descriptors(), whole.global_descriptors())
    for name in names:
        for field, values in whole.local(name).items():
            np.testing.assert_array_equal(joined.local(name)[field], values)
    rows, offsets = joined.local_rows()
    assert offsets.tolist() == [0, 4, 4, 6, 9, 10] and rows["descriptors"].shape == (10, 8)


def test_stores_of_different_kinds_are_not_joined(tmp_path):
    write_store(tmp_path / "a", ["a"], np.ones((1, 3)))
    write_store(tmp_path / "b", ["b"], np.ones((1, 3)), [_local(np.random.default_rng(0), 2)])
    with pytest.raises(FeatureStoreError, match="with and without"):
        concatenate_stores(tmp_path / "c", [open_store(tmp_path / "a"), open_store(tmp_path / "b")])


def test_a_store_rewritten_in_place_does_not_open_while_half_written(tmp_path, monkeypatch):
    """A crash between the arrays of a rewrite must not leave the old meta.json over new arrays."""
    import datasets.features as features

    rng = np.random.default_rng(3)
    write_store(tmp_path, ["a", "b"], rng.normal(size=(2, 4)), [_local(rng, 3), _local(rng, 2)])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(features, "_write_local", crash)
    with pytest.raises(OSError, match="disk full"):
        write_store(tmp_path, ["a", "b", "c"], rng.normal(size=(3, 4)), [_local(rng, 1)] * 3)
    with pytest.raises(FeatureStoreError, match="no meta.json"):
        open_store(tmp_path)
