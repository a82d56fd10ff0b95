"""The embedded synthetic landmark world: determinism, the real file formats and consistent ground
truth."""

import hashlib
import pickle
import pickletools
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.synthetic import GND_NAME, generate, make_spec
from datasets.synthetic.render import label_view

REPO = Path(__file__).resolve().parents[1]
TINY = make_spec("tiny")


def tree_hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "seed0"
    summary = generate(out, seed=0, size="tiny", workers=1)
    return out, summary


@pytest.fixture(scope="module")
def gnd(world):
    return pickle.loads((world[0] / "test" / GND_NAME).read_bytes())


def test_same_seed_gives_identical_files_with_or_without_a_process_pool(world, tmp_path):
    again = generate(tmp_path / "again", seed=0, size="tiny", workers=2)
    first = tree_hashes(world[0])
    # csv, gnd, info
    assert len(first) == TINY.classes * TINY.train_per_class + TINY.queries + TINY.database + 3
    assert tree_hashes(tmp_path / "again") == first
    assert {k: v for k, v in again.items() if k != "out_dir"} == {
        k: v for k, v in world[1].items() if k != "out_dir"
    }


def test_another_seed_gives_other_images(world, tmp_path):
    generate(tmp_path / "seed1", seed=1, size="tiny", workers=1)
    first, other = tree_hashes(world[0]), tree_hashes(tmp_path / "seed1")
    assert set(first.values()).isdisjoint(other.values())


def test_gnd_is_plain_data_with_consistent_indices(world, gnd):
    opcodes = {
        op.name for op, _, _ in pickletools.genops((world[0] / "test" / GND_NAME).read_bytes())
    }
    assert not opcodes & {
        "GLOBAL",
        "STACK_GLOBAL",
        "REDUCE",
        "BUILD",
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
    }
    assert set(gnd) == {"imlist", "qimlist", "gnd"}
    assert len(gnd["imlist"]) == TINY.database and len(set(gnd["imlist"])) == TINY.database
    assert len(gnd["qimlist"]) == len(gnd["gnd"]) == TINY.queries
    assert set(gnd["imlist"]).isdisjoint(gnd["qimlist"])
    for entry in gnd["gnd"]:
        lists = [entry["easy"], entry["hard"], entry["junk"]]
        indices = [i for values in lists for i in values]
        assert all(type(i) is int and 0 <= i < TINY.database for i in indices)
        assert len(indices) == len(set(indices)), "an image is in two of easy / hard / junk"
        assert entry["easy"] and entry["hard"], "every query needs easy and hard positives"


def test_query_boxes_lie_inside_their_images(world, gnd):
    for name, entry in zip(gnd["qimlist"], gnd["gnd"]):
        image = cv2.imread(str(world[0] / "test" / "jpg" / f"{name}.jpg"))
        x1, y1, x2, y2 = entry["bbx"]
        assert all(type(c) is float for c in entry["bbx"])
        assert 0 <= x1 < x2 <= image.shape[1] and 0 <= y1 < y2 <= image.shape[0]
        assert x2 - x1 >= 8 and y2 - y1 >= 8


def test_every_image_decodes_at_the_requested_size(world, gnd):
    names = gnd["imlist"] + gnd["qimlist"]
    assert sorted(p.stem for p in (world[0] / "test" / "jpg").iterdir()) == sorted(names)
    for path in [world[0] / "test" / "jpg" / f"{n}.jpg" for n in names] + list(
        world[0].glob("train/train/*/*/*/*")
    ):
        image = cv2.imread(str(path))
        assert image is not None and max(image.shape[:2]) == TINY.image_size, path


def test_train_csv_matches_the_gldv2_layout(world):
    root = world[0] / "train"
    lines = (root / "train_clean.csv").read_text().splitlines()
    assert lines[0] == "landmark_id,images"
    listed, landmark_ids = [], []
    for line in lines[1:]:
        landmark_id, images = line.split(",")
        ids = images.split(" ")
        assert len(ids) >= 2 and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
        landmark_ids.append(int(landmark_id))
        listed += ids
    assert len(landmark_ids) == TINY.classes and landmark_ids == sorted(set(landmark_ids))
    on_disk = {str(p.relative_to(root / "train")) for p in (root / "train").rglob("*.jpg")}
    assert on_disk == {f"{i[0]}/{i[1]}/{i[2]}/{i}.jpg" for i in listed} and len(listed) == len(
        on_disk
    )


def _observation(visible, scale=1.0, camera=(0.0, 0.0, -100.0), roll=0.0, blur=0.0, pixels=0.3):
    visible = np.asarray(visible, bool)
    return {
        "visible": visible,
        "scale": np.full(len(visible), scale),
        "camera": np.asarray(camera),
        "roll": roll,
        "blur": blur,
        "pixels": pixels,
    }


class _Flat:  # a landmark reduced to what label_view reads: sample points on the plane z = 0
    sample_world = np.column_stack([np.arange(10.0), np.zeros(10), np.zeros(10)])


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, "easy"),
        ({"visible": [1] * 5 + [0] * 5}, "hard"),  # half of the query's surface
        ({"visible": [1, 1] + [0] * 8}, "junk"),  # a fifth of it
        ({"scale": 3.0}, "hard"),
        ({"camera": (100.0, 0.0, -100.0)}, "hard"),  # 45 degrees around
        ({"roll": 30.0}, "hard"),
        ({"blur": 2.0}, "hard"),
        ({"pixels": 0.01}, "junk"),  # landmark barely visible
    ],
)
def test_labels_follow_overlap_viewpoint_scale_and_visibility(change, expected):
    query = _observation([1] * 10)
    view = _observation(**{"visible": [1] * 10, **change})
    assert label_view(_Flat, query, view) == expected


def test_bad_options_and_existing_output_are_refused(world):
    with pytest.raises(ValueError, match="unknown synthetic option.*colour"):
        make_spec("tiny", colour=3)
    with pytest.raises(ValueError, match="size 'huge' is unknown"):
        make_spec("huge")
    with pytest.raises(ValueError, match="raise database"):
        make_spec("tiny", database=10)
    with pytest.raises(ValueError, match="classes must be a positive integer"):
        make_spec("tiny", classes=0)
    assert generate(world[0], seed=0, size="tiny", workers=1)["reused"]  # the same world: kept
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(world[0], seed=1, size="tiny", workers=1)  # another world


def test_script_writes_a_world_and_reports_it(tmp_path):
    out = tmp_path / "world"
    result = subprocess.run(
        [
            sys.executable,
            "tools/make_synthetic.py",
            "--out",
            str(out),
            "--size",
            "tiny",
            "--classes",
            "3",
            "--train-per-class",
            "2",
            "--workers",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "3 landmarks x 2" in result.stdout and "time:" in result.stdout
    assert len((out / "train" / "train_clean.csv").read_text().splitlines()) == 4
    refused = subprocess.run(
        [sys.executable, "tools/make_synthetic.py", "--out", str(out), "--size", "tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "overwrite" in refused.stderr
