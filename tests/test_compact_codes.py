"""Compact database codes of the learned re-ranker (tools/rerank/compact_codes.py): the first
N_DATABASE local features by attention in float16 and as packed sign bits, derived once per store
content beside the store, the same arrays in memory for on-demand features."""

import os

import numpy as np
import pytest

from datasets.features import open_store, write_store
from tests.eval_helpers import random_local, unit_rows
from tools.rerank import compact_codes
from tools.rerank.compact_codes import (
    binary_codes,
    bytes_per_image,
    codes_from_reader,
    float16_codes,
)

SCALES = np.array([0.5, 0.7071, 1.0, 1.4142], np.float32)


def make_store(folder, seed=0, counts=(12, 3, 0, 7)):
    rng = np.random.default_rng(seed)
    local = []
    for count in counts:
        features = random_local(rng, count, dim=16)
        features["scores"] = rng.permutation(count).astype(np.float32)  # distinct scores
        features["scales"] = rng.choice(SCALES, count)
        local.append(features)
    names = [f"im_{i}" for i in range(len(counts))]
    write_store(folder, names, unit_rows(rng.standard_normal((len(counts), 8))), local)
    return open_store(folder), local


def test_float16_codes_hold_each_images_first_features_by_attention(tmp_path):
    store, local = make_store(tmp_path / "db")
    codes = float16_codes(store, 5)
    assert os.path.dirname(codes.folder) == str(tmp_path / "db") + ".compact"
    assert codes.arrays["descriptors"].dtype == np.float16
    batch = codes.take(np.array([3, 0, 1, 2]))
    for slot, row in enumerate([3, 0, 1, 2]):
        features = local[row]
        order = np.argsort(-features["scores"])[:5]
        kept = len(order)
        assert (~batch["padding"][slot]).sum() == kept
        np.testing.assert_allclose(
            batch["descriptors"][slot, :kept],
            features["descriptors"][order].astype(np.float16).astype(np.float32),
        )
        assert not batch["descriptors"][slot, kept:].any()
        expected_scales = np.rint(2 * np.log2(features["scales"][order])) + 4
        np.testing.assert_array_equal(batch["scales"][slot, :kept], expected_scales)
        np.testing.assert_allclose(
            batch["locations"][slot, :kept], features["locations"][order], atol=0.07
        )


def test_codes_are_derived_once_per_content_and_count(tmp_path, monkeypatch):
    store, _ = make_store(tmp_path / "db")
    first = float16_codes(store, 5)
    monkeypatch.setattr(compact_codes, "fill", lambda *args: pytest.fail("rebuilt"))
    assert float16_codes(open_store(tmp_path / "db"), 5).folder == first.folder
    monkeypatch.undo()
    assert float16_codes(store, 4).folder != first.folder
    other, _ = make_store(tmp_path / "other", seed=1)  # other content: another key
    assert os.path.basename(float16_codes(other, 5).folder) != os.path.basename(first.folder)
    assert sorted(os.listdir(tmp_path / "db.compact"))[0].startswith("float16-")


def test_damaged_codes_are_built_again(tmp_path):
    store, _ = make_store(tmp_path / "db")
    first = float16_codes(store, 5)
    expected = np.asarray(first.arrays["descriptors"]).copy()
    path = os.path.join(first.folder, "descriptors.npy")
    damaged = np.load(path)
    damaged[0, 0] = 0.5
    np.save(path, damaged)
    again = float16_codes(open_store(tmp_path / "db"), 5)
    assert again.folder == first.folder
    np.testing.assert_array_equal(again.arrays["descriptors"], expected)


def test_binary_codes_are_the_packed_signs_of_the_coder_and_read_back_as_plus_minus_one(tmp_path):
    store, local = make_store(tmp_path / "db")
    codes = float16_codes(store, 5)
    projection = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)

    def coder(descriptors):
        return np.where(descriptors @ projection > 0, 1.0, -1.0)

    bits = binary_codes(codes, coder, "weights-digest")
    assert os.path.dirname(bits.folder) == os.path.dirname(codes.folder)
    assert bits.arrays["descriptors"].shape == (4, 5, 4)  # 32 bits = 4 bytes per feature
    batch, floats = bits.take(np.arange(4)), codes.take(np.arange(4))
    assert set(np.unique(batch["descriptors"])) == {-1.0, 1.0}
    expected = np.where(floats["descriptors"] @ projection > 0, 1.0, -1.0)
    real = ~floats["padding"]
    np.testing.assert_array_equal(batch["descriptors"][real], expected[real])
    np.testing.assert_array_equal(batch["padding"], floats["padding"])
    assert binary_codes(codes, coder, "other weights").folder != bits.folder


def test_codes_of_on_demand_features_equal_the_stored_codes(tmp_path):
    store, _ = make_store(tmp_path / "db")
    rows = np.array([3, 1])
    in_memory = codes_from_reader(store.local_at, rows, 5, 16)
    assert in_memory.folder is None
    on_disk = float16_codes(store, 5)
    for field, value in in_memory.take(rows).items():
        np.testing.assert_array_equal(value, on_disk.take(rows)[field])
    with pytest.raises(KeyError, match="row 0"):
        in_memory.take(np.array([0]))


def test_bytes_per_image_of_the_documented_budgets():
    assert bytes_per_image(50, 128)["binary"] == 800  # 50 x 128 bits
    assert bytes_per_image(50, 128)["float16"] == 12800
    assert bytes_per_image(100, 128)["binary_with_side"] == 1600 + 100 * 5 + 4
