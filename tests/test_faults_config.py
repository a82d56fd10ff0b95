"""Config and data-list faults: duplicate YAML keys, every preset under yacs' own merge_from_file,
the training length given on the command line, an unterminated CSV quote, sparse list labels."""

import logging
from pathlib import Path

import pytest

from core.config import _DEFAULTS, ConfigError, load_cfg
from datasets.gldv2 import read_gldv2_csv
from datasets.list_dataset import ParseError
from datasets.loader import load_training_split

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(str(path.relative_to(REPO)) for path in (REPO / "configs").rglob("*.yaml"))


def test_duplicate_yaml_key_is_refused_with_file_and_lines(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(
        "OPTIM:\n  BASE_LR: 0.1\n  MOMENTUM: 0.9\n  BASE_LR: 0.01\nTRAIN:\n  FLIP: True\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_cfg(str(path))
    assert f"{path}:4: key 'BASE_LR' given twice (first at line 2)" in str(caught.value)
    path.write_text("TRAIN:\n  FLIP: True\nTRAIN:\n  FLIP: False\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:3: key 'TRAIN' given twice"):
        load_cfg(str(path))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_merges_with_plain_yacs(preset):
    config = _DEFAULTS.clone()
    config.merge_from_file(str(REPO / preset))  # what a pycls user calls
    ours = load_cfg(str(REPO / preset))
    assert config.dump() == ours.dump()


def test_max_epoch_on_the_command_line_wins_over_the_presets_max_iter():
    preset = str(REPO / "configs" / "synthetic" / "demo.yaml")
    assert load_cfg(preset).OPTIM.MAX_ITER > 0
    cfg = load_cfg(preset, ["OPTIM.MAX_EPOCH", "1"])
    assert cfg.OPTIM.MAX_EPOCH == 1 and cfg.OPTIM.MAX_ITER == 0
    both = load_cfg(preset, ["OPTIM.MAX_EPOCH", "1", "OPTIM.MAX_ITER", "5"])
    assert both.OPTIM.MAX_ITER == 5


def test_unterminated_csv_quote_is_reported_at_its_line(tmp_path):
    path = tmp_path / "train_clean.csv"
    rows = ["landmark_id,images", "1,abc def", '2,"ghi jkl'] + [f"{i},img{i}" for i in range(3, 9)]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ParseError) as caught:
        read_gldv2_csv(str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:3: a quote opened on this line is not closed")
    assert "img5" not in message and "\n" not in message


def test_sparse_list_labels_are_announced(tmp_path, caplog):
    labels = [0, 3, 17, 1000, 5000, 70000, 120000, 189347]
    (tmp_path / "list.txt").write_text(
        "".join(f"img{i}.jpg {label}\n" for i, label in enumerate(labels))
    )
    cfg = load_cfg(
        "",
        ["TRAIN.DATA_ROOT", str(tmp_path), "TRAIN.SPLIT", "list.txt", "TRAIN.VAL_FRACTION", "0.0"],
    )
    with caplog.at_level(logging.WARNING):
        _, train, _, mapping = load_training_split(cfg)
    assert mapping.num_classes == 189348 and len(train) == 8
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "8 distinct labels up to 189347" in warning and "189348 classes" in warning
    assert "Number the labels 0..7" in warning
