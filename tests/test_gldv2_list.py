import json
import random
import re

import pytest

from datasets.gldv2 import (
    ClassMapping,
    gldv2_image_path,
    load_gldv2_split,
    read_gldv2_csv,
    split_train_val,
)
from datasets.list_dataset import ParseError, read_image_list

CLEAN = """landmark_id,images
1000,fff0000000000001
7,aaa0000000000001 aaa0000000000002 aaa0000000000003
3,bbb0000000000001 bbb0000000000002
"""

FULL = """id,url,landmark_id
aaa0000000000001,http://x.org/a.jpg,7
fff0000000000001,"http://x.org/with,comma.jpg",1000
bbb0000000000001,http://x.org/b.jpg,3
aaa0000000000002,http://x.org/c.jpg,7
bbb0000000000002,http://x.org/d.jpg,3
aaa0000000000003,http://x.org/e.jpg,7
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_clean_csv_is_parsed_and_landmark_ids_are_remapped_in_ascending_order(tmp_path):
    path = _write(tmp_path, "train_clean.csv", CLEAN)
    images = read_gldv2_csv(path)
    assert images == {
        1000: ["fff0000000000001"],
        7: ["aaa0000000000001", "aaa0000000000002", "aaa0000000000003"],
        3: ["bbb0000000000001", "bbb0000000000002"],
    }
    train, val, mapping = load_gldv2_split(path, val_fraction=0.0, seed=0)
    assert val == [] and mapping.landmark_ids == [3, 7, 1000]
    assert [mapping.index(landmark) for landmark in (3, 7, 1000)] == [0, 1, 2]
    assert mapping.landmark_id(2) == 1000
    assert ("train/b/b/b/bbb0000000000002.jpg", 0) in train
    assert ("train/f/f/f/fff0000000000001.jpg", 2) in train and len(train) == 6


def test_full_csv_gives_the_same_classes_as_the_clean_one(tmp_path):
    clean = read_gldv2_csv(_write(tmp_path, "train_clean.csv", CLEAN))
    full = read_gldv2_csv(_write(tmp_path, "train.csv", FULL))
    assert {label: sorted(ids) for label, ids in full.items()} == {
        label: sorted(ids) for label, ids in clean.items()
    }


def test_image_path_uses_the_first_three_characters():
    assert gldv2_image_path("0123abcd") == "train/0/1/2/0123abcd.jpg"
    assert gldv2_image_path("0123abcd", "index") == "index/0/1/2/0123abcd.jpg"


@pytest.mark.parametrize(
    "name, text, line, bad_text",
    [
        ("train_clean.csv", "landmark_id,images\n1,abc0001\nx,abc0002\n", 3, "x,abc0002"),
        ("train_clean.csv", "landmark_id,images\n1,abc0001\n2,\n", 3, "2,"),
        ("train_clean.csv", "landmark_id,images\n1,abc0001,extra\n", 2, "1,abc0001,extra"),
        ("train_clean.csv", "landmark_id,images\n1,abc0001 a/b\n", 2, "1,abc0001 a/b"),
        (
            "train.csv",
            "id,url,landmark_id\nabc0001,http://u,1\nabc0002,http://u\n",
            3,
            "abc0002,http://u",
        ),
        ("train.csv", "id,url,landmark_id\nabc0001,http://u,None\n", 2, "abc0001,http://u,None"),
        ("train.csv", "id;url;landmark_id\n", 1, "id;url;landmark_id"),
    ],
)
def test_malformed_csv_lines_stop_with_file_and_line(tmp_path, name, text, line, bad_text):
    path = _write(tmp_path, name, text)
    with pytest.raises(ParseError) as caught:
        read_gldv2_csv(path)
    message = str(caught.value)
    assert re.fullmatch(
        rf"{re.escape(str(path))}:{line}: expected .+, got '{re.escape(bad_text)}'", message
    )


def _classes(num_classes, per_class):
    return {
        label: [f"{label:03d}img{i:04d}" for i in range(per_class)] for label in range(num_classes)
    }


def test_split_holds_out_the_fraction_of_each_class_deterministically():
    items = _classes(num_classes=20, per_class=10)
    items[99] = ["single0001"]
    train, val = split_train_val(items, val_fraction=0.2, seed=3)
    assert 99 not in val and train[99] == ["single0001"]
    for label in range(20):
        assert len(val[label]) == 2 and len(train[label]) == 8
        assert sorted(train[label] + val[label]) == items[label]
    assert split_train_val(items, 0.2, seed=3) == (train, val)
    assert split_train_val(items, 0.2, seed=4)[1] != val


def test_split_does_not_depend_on_file_order():
    items = _classes(num_classes=5, per_class=12)
    shuffled = {
        label: random.Random(label).sample(ids, len(ids)) for label, ids in reversed(items.items())
    }
    _, val = split_train_val(items, 0.25, seed=0)
    _, val_shuffled = split_train_val(shuffled, 0.25, seed=0)
    assert {label: sorted(ids) for label, ids in val.items()} == {
        k: sorted(v) for k, v in val_shuffled.items()
    }


def test_split_keeps_one_training_image_and_rejects_bad_fractions():
    train, val = split_train_val({5: ["a01", "a02"]}, val_fraction=0.9, seed=0)
    assert len(train[5]) == 1 and len(val[5]) == 1
    assert split_train_val({5: ["a01", "a02"]}, 0.0, seed=0) == ({5: ["a01", "a02"]}, {})
    with pytest.raises(ValueError, match="fraction"):
        split_train_val({5: ["a01"]}, 1.0, seed=0)


def test_class_mapping_round_trips_through_json(tmp_path):
    mapping = ClassMapping([203093, 5, 17])
    mapping.save(tmp_path / "classes.json")
    loaded = ClassMapping.load(tmp_path / "classes.json")
    assert loaded == mapping and loaded.index(17) == 1 and loaded.num_classes == 3
    with pytest.raises(KeyError, match="not one of the 3 training classes"):
        loaded.index(6)
    (tmp_path / "bad.json").write_text(
        json.dumps({"format": "delg-class-mapping", "landmark_ids": [3, 2]})
    )
    with pytest.raises(ValueError, match="bad.json"):
        ClassMapping.load(tmp_path / "bad.json")


def test_list_file_skips_comments_and_blank_lines_and_allows_spaces_in_paths(tmp_path):
    path = _write(tmp_path, "train_list.txt", "# seed list\n\na/1.jpg 0\n  b/my photo.jpg 12  \n")
    assert read_image_list(path) == [("a/1.jpg", 0), ("b/my photo.jpg", 12)]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("a/1.jpg", "expected 'relative/path.jpg label'"),
        ("a/1.jpg x", "integer label"),
        ("a/1.jpg -1", "non-negative"),
    ],
)
def test_list_file_errors_name_file_and_line(tmp_path, line, expected):
    path = _write(tmp_path, "list.txt", f"ok/1.jpg 0\n# comment\n{line}\n")
    with pytest.raises(ParseError) as caught:
        read_image_list(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:3: expected ") and expected in message
    assert message.endswith(f", got '{line}'")
