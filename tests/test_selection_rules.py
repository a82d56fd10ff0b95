"""Selection rules (EXTRACT.SELECTION): a rule written and registered in this file runs through a
real extraction; a rule owns the checks of its keys; provenance records every EXTRACT key but the
run-only ones, and a store of another rule is refused naming the key."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import ConfigError, load_cfg
from datasets.features import open_store
from tests.tiny import TINY_R18
from tools.extraction.provenance import (
    EXTRACT_BOTH,
    EXTRACT_GLOBAL_ONLY,
    EXTRACT_LOCAL_ONLY,
    EXTRACT_RUN_KEYS,
    LOCAL_ONLY_KEYS,
    RUN_KEYS,
    ProvenanceMismatch,
    check_store_pair,
    difference,
    recorded_extract_keys,
)
from tools.extraction.pyramid import ExtractionSettings
from tools.extraction.runner import build_settings, run_extraction
from tools.extraction.selection import (
    SELECTION_RULES,
    SelectionRule,
    by_score,
    merge_candidates,
    selected_rows,
)
from tools.extraction.selection_rules import selection_rule


class EveryOther(SelectionRule):
    """A toy rule: the candidates at or above the threshold by decreasing score, every other one
    kept (the 1st, 3rd, ...), at most MAX_FEATURES."""

    keys = ("ATTENTION_THRESHOLD", "MAX_FEATURES")
    checks = {"MAX_FEATURES": (lambda value: value >= 1, "at least 1")}

    def select(self, candidates, values):
        merged = merge_candidates(candidates)
        keep = by_score(merged, values["ATTENTION_THRESHOLD"])[::2]
        return selected_rows(merged, keep[: values["MAX_FEATURES"]])


@pytest.fixture
def every_other():
    SELECTION_RULES.register("every_other")(EveryOther)
    yield
    SELECTION_RULES.remove("every_other")


def _options(data_root, out_dir, *extra):
    return [
        *TINY_R18,
        "MODEL.NUM_CLASSES", "0",
        "MODEL.HEADS.REDUCTION_DIM", "32",
        "MODEL.LOCAL.ATTENTION_DIM", "16",
        "MODEL.LOCAL.DESCRIPTOR_DIM", "16",
        "DEVICE", "cpu",
        "DATA_LOADER.NUM_WORKERS", "0",
        "EXTRACT.ATTENTION_THRESHOLD", "0.0",
        "EXTRACT.GLOBAL_SCALES", "[1.0]",
        "EXTRACT.LOCAL_SCALES", "[0.7071, 1.0]",
        "EXTRACT.FORMAT", "folder",
        "EXTRACT.DATASET", "set",
        "EXTRACT.DATA_ROOT", str(data_root),
        "EXTRACT.OUTPUT_DIR", str(out_dir),
        *extra,
    ]  # fmt: skip


def _extract(data_root, out_dir, *extra):
    exit_code, _ = run_extraction(load_cfg("", _options(data_root, out_dir, *extra)))
    assert exit_code == 0
    return open_store(out_dir / "set")


def _images(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(64, 96), (80, 64)]):
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.uint8)
        Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(root / f"{index}.png")
    return root


def test_a_rule_registered_here_selects_in_a_real_extraction_and_is_recorded(tmp_path, every_other):
    images = _images(tmp_path / "images")
    official = _extract(images, tmp_path / "official")
    toy = _extract(images, tmp_path / "toy", "EXTRACT.SELECTION", "every_other")
    np.testing.assert_array_equal(toy.global_descriptors(), official.global_descriptors())
    for name in official.names:
        everything, kept = official.local(name), toy.local(name)
        assert len(everything["scores"]) >= 8  # every cell: the threshold is 0, the budget 1000
        for field in ("locations", "scales", "scores", "descriptors"):
            np.testing.assert_array_equal(kept[field], everything[field][::2], err_msg=field)
    recorded = toy.provenance["config"]["EXTRACT"]
    assert recorded["SELECTION"] == "every_other"
    assert (recorded["ATTENTION_THRESHOLD"], recorded["MAX_FEATURES"]) == (0.0, 1000)
    with pytest.raises(ProvenanceMismatch, match=r"config\.EXTRACT\.SELECTION is 'official'"):
        check_store_pair(official, toy)
    # the rule decides local features only: a comparison of global descriptors accepts the pair
    assert difference(official.provenance, toy.provenance, RUN_KEYS + LOCAL_ONLY_KEYS) is None


def test_every_extract_key_is_run_only_or_recorded_in_exactly_one_class():
    classes = (EXTRACT_RUN_KEYS, EXTRACT_GLOBAL_ONLY, EXTRACT_LOCAL_ONLY, EXTRACT_BOTH)
    extract = load_cfg().EXTRACT
    for key in extract:
        assert sum(key in keys for keys in classes) == 1, f"EXTRACT.{key} is not classified once"
    recorded = recorded_extract_keys(extract)
    assert not set(recorded) & set(EXTRACT_RUN_KEYS)
    assert set(recorded) | set(EXTRACT_RUN_KEYS) == set(extract) - {"SELECTION"}
    # stores of one run: other images, folders and shards, the same record
    elsewhere = ["EXTRACT.DATASET", "rparis6k", "EXTRACT.DATA_ROOT", "/data", "EXTRACT.OUTPUT_DIR"]
    elsewhere += ["/out", "EXTRACT.SHARD_SIZE", "7", "EXTRACT.DISTRACTORS", "1m.txt"]
    assert recorded_extract_keys(load_cfg("", elsewhere).EXTRACT) == recorded


def test_official_records_stay_those_of_older_stores_and_other_rules_are_told_apart():
    recorded = recorded_extract_keys(load_cfg().EXTRACT)
    # the EXTRACT keys stores recorded before selection rules existed: official-rule stores keep
    # their records (and so their run signatures and on-demand cache keys)
    assert set(recorded) == {
        "GLOBAL", "LOCAL", "GLOBAL_SCALES", "LOCAL_SCALES", "MAX_IMAGE_SIZE", "ATTENTION_THRESHOLD",
        "MAX_FEATURES", "NMS_IOU", "FLOAT16", "CROP_QUERIES", "RESIZE", "SIZE_ROUNDING", "MIN_SIZE",
        "LOCATIONS",
    }  # fmt: skip
    older = {"config": {"EXTRACT": recorded}}
    other = load_cfg("", ["EXTRACT.SELECTION", "every_other"]).EXTRACT
    toy = {"config": {"EXTRACT": recorded_extract_keys(other)}}
    assert toy["config"]["EXTRACT"]["SELECTION"] == "every_other"
    assert difference(older, {"config": {"EXTRACT": dict(recorded)}}) is None
    assert difference(older, toy) == ("config.EXTRACT.SELECTION", "official", "every_other")


def test_a_rule_checks_its_own_keys_in_one_place(every_other):
    def settings(*options):
        return build_settings(load_cfg("", list(options)))

    for key, value, expected in (("MAX_FEATURES", "0", "at least 1"), ("NMS_IOU", "1.5", "in")):
        with pytest.raises(ConfigError, match=f"EXTRACT.{key} must be {expected}"):
            settings(f"EXTRACT.{key}", value)
    with pytest.raises(ConfigError, match="EXTRACT.MAX_FEATURES must be at least 1"):
        ExtractionSettings(max_features=0)
    with pytest.raises(ConfigError, match="EXTRACT.SELECTION: unknown selection rule 'nope'"):
        settings("EXTRACT.SELECTION", "nope")
    # the toy rule reads no NMS_IOU, so its value does not matter; MAX_FEATURES it checks itself
    assert settings("EXTRACT.SELECTION", "every_other", "EXTRACT.NMS_IOU", "5.0").nms_iou == 5.0
    with pytest.raises(ConfigError, match="EXTRACT.MAX_FEATURES must be at least 1"):
        settings("EXTRACT.SELECTION", "every_other", "EXTRACT.MAX_FEATURES", "0")


class EveryNth(SelectionRule):
    """A toy rule with a key of its own: every EXTRACT.EVERY-th candidate by decreasing score."""

    keys = ("EVERY",)
    checks = {"EVERY": (lambda value: value >= 1, "at least 1")}

    def select(self, candidates, values):
        merged = merge_candidates(candidates)
        return selected_rows(merged, by_score(merged, 0.0)[:: values["EVERY"]])


def test_a_rule_with_a_key_of_its_own_gets_it_checked_recorded_and_passed_to_it():
    SELECTION_RULES.register("every_nth")(EveryNth)
    try:
        cfg = load_cfg("", ["EXTRACT.SELECTION", "every_nth"])
        cfg.EXTRACT.EVERY = 3  # a new rule's key would have its default in core/config.py
        settings = build_settings(cfg)
        assert recorded_extract_keys(cfg.EXTRACT)["EVERY"] == 3
        level = {
            "locations": torch.zeros(7, 2),
            "boxes": torch.zeros(7, 4),
            "scales": torch.ones(7),
            "scores": torch.arange(7.0),
            "descriptors": torch.ones(7, 4),
        }
        selected = selection_rule("every_nth").select([level], settings.selection_values())
        assert selected["scores"].tolist() == [6.0, 3.0, 0.0]
        cfg.EXTRACT.EVERY = 0
        with pytest.raises(ConfigError, match="EXTRACT.EVERY must be at least 1, got 0"):
            build_settings(cfg)
        with pytest.raises(ValueError, match="reads EXTRACT.EVERY"):
            ExtractionSettings(selection="every_nth")
    finally:
        SELECTION_RULES.remove("every_nth")
