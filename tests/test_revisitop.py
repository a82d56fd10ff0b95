import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.revisitop import (
    GroundTruthError,
    RevisitopDataset,
    RevisitopImages,
    gnd_path,
    load_ground_truth,
)
from datasets.safe_pickle import UnsafePickleError

SHARED = Path(__file__).resolve().parents[2] / "shared"
REVISITOP = SHARED / "data" / "revisitop"
needs_shared = pytest.mark.skipif(
    not REVISITOP.is_dir(), reason=f"real revisitop files not available at {REVISITOP}"
)


def _noise(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def _write_dataset(root, boxes, database_size=3, name="tiny"):
    """A revisitop-layout folder: jpg/ with noise images and gnd_<name>.pkl."""
    (root / "jpg").mkdir(parents=True, exist_ok=True)
    imlist = [f"db_{i}" for i in range(database_size)]
    qimlist = [f"query_{i}" for i in range(len(boxes))]
    for seed, image_name in enumerate(imlist + qimlist):
        Image.fromarray(_noise(16, 20, seed)).save(root / "jpg" / f"{image_name}.jpg", quality=90)
    gnd = [{"bbx": box, "easy": [0], "hard": [1], "junk": []} for box in boxes]
    with open(gnd_path(root, name), "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    return imlist, qimlist


def test_gnd_path():
    assert gnd_path("/data/roxford5k", "roxford5k") == os.path.join(
        "/data/roxford5k", "gnd_roxford5k.pkl"
    )


@needs_shared
@pytest.mark.parametrize("name, database_size", [("roxford5k", 4993), ("rparis6k", 6322)])
def test_real_ground_truth_loads_with_boxes_rounded_like_pil(name, database_size):
    checksums = dict(
        reversed(line.split()) for line in (REVISITOP / "SHA256SUMS").read_text().splitlines()
    )
    path = REVISITOP / f"gnd_{name}.pkl"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == checksums[path.name]
    dataset = RevisitopDataset(REVISITOP, name)
    assert len(dataset.query_names) == 70 and len(dataset.gnd) == 70
    assert len(dataset.database_names) == database_size and dataset.crop_queries
    for box, entry in zip(dataset.query_boxes, dataset.gnd):
        assert box == [round(value) for value in entry["bbx"]] and all(
            type(value) is int for value in box
        )
    assert dataset.image_path(dataset.query_names[0]) == str(
        REVISITOP / "jpg" / f"{dataset.query_names[0]}.jpg"
    )


def test_query_crop_equals_the_box_rounded_with_round(tmp_path):
    _write_dataset(tmp_path, boxes=[[2.5, 3.5, 10.5, 12.7], [1.49, 0.0, 19.51, 15.5]])
    dataset = RevisitopDataset(tmp_path, "tiny")
    # round half to even: 2.5 -> 2, 3.5 -> 4
    assert dataset.query_boxes == [[2, 4, 10, 13], [1, 0, 20, 16]]
    full = np.asarray(Image.open(tmp_path / "jpg" / "query_0.jpg").convert("RGB"))
    crop, box = dataset.read_query(0)
    assert box == [2, 4, 10, 13]
    np.testing.assert_array_equal(crop, full[4:13, 2:10])
    pil_crop = np.asarray(
        Image.open(tmp_path / "jpg" / "query_0.jpg").convert("RGB").crop((2.5, 3.5, 10.5, 12.7))
    )
    np.testing.assert_array_equal(crop, pil_crop)  # the benchmark's own example crops this way


def test_boxes_beyond_the_image_are_clipped(tmp_path):
    _write_dataset(tmp_path, boxes=[[-3.2, 5.0, 100.0, 14.0]])
    crop, box = RevisitopDataset(tmp_path, "tiny").read_query(0)
    assert box == [0, 5, 20, 14] and crop.shape == (9, 20, 3)


def test_uncropped_queries_are_announced(tmp_path, caplog):
    _write_dataset(tmp_path, boxes=[[2.0, 3.0, 10.0, 12.0]])
    with caplog.at_level(logging.WARNING, logger="datasets.revisitop"):
        dataset = RevisitopDataset(tmp_path, "tiny", crop_queries=False)
        image, box = dataset.read_query(0)
        dataset.read_query(0)
    assert box is None and image.shape == (16, 20, 3)
    assert sum("NOT cropped" in record.getMessage() for record in caplog.records) == 1


def test_distractors_extend_the_database(tmp_path):
    imlist, _ = _write_dataset(tmp_path / "tiny", boxes=[[2.0, 3.0, 10.0, 12.0]])
    distractor_root = tmp_path / "r1m"
    (distractor_root / "0").mkdir(parents=True)
    Image.fromarray(_noise(8, 9, 99)).save(distractor_root / "0" / "d1.png")
    list_file = tmp_path / "revisitop1m.txt"
    list_file.write_text("0/d1.png\n\n0/d2.jpg\n")
    dataset = RevisitopDataset(
        tmp_path / "tiny", "tiny", distractors=list_file, distractor_root=distractor_root
    )
    assert dataset.database_names == imlist + ["0/d1.png", "0/d2.jpg"]
    assert dataset.image_path("0/d2.jpg") == os.path.join(distractor_root, "0/d2.jpg")
    np.testing.assert_array_equal(dataset.read_database(len(imlist)), _noise(8, 9, 99))

    images = RevisitopImages(dataset, "database")
    assert len(images) == 5
    image, name, crop_box = images[3]
    assert name == "0/d1.png" and crop_box is None and image.shape == (8, 9, 3)
    query_image, query_name, query_box = RevisitopImages(dataset, "query")[0]
    assert (
        query_name == "query_0" and query_box == [2, 3, 10, 12] and query_image.shape == (9, 8, 3)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda data: data.pop("qimlist"), "missing key"),
        (lambda data: data["gnd"][0].update(junk=[7]), r"gnd\[0\]\['junk'\] holds index 7"),
        (lambda data: data["gnd"][0].update(bbx=[5, 5, 1, 9]), r"gnd\[0\]\['bbx'\]"),
        (lambda data: data["gnd"][0].pop("hard"), r"gnd\[0\] lacks hard"),
        (lambda data: data["gnd"].append(data["gnd"][0]), "one entry per query"),
    ],
)
def test_malformed_ground_truth_is_reported_with_the_file(tmp_path, change, message):
    _write_dataset(tmp_path, boxes=[[2.0, 3.0, 10.0, 12.0]])
    path = gnd_path(tmp_path, "tiny")
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    change(data)
    with open(path, "wb") as handle:
        pickle.dump(data, handle)
    with pytest.raises(GroundTruthError, match=message) as caught:
        load_ground_truth(path)
    assert str(path) in str(caught.value)


class _Evil:
    def __reduce__(self):
        return os.system, ("true",)


def test_ground_truth_goes_through_the_restricted_unpickler(tmp_path):
    path = gnd_path(tmp_path, "evil")
    with open(path, "wb") as handle:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": [], "x": _Evil()}, handle)
    with pytest.raises(UnsafePickleError):
        RevisitopDataset(tmp_path, "evil")
