"""Stores <-> the official per-image files on the tiny synthetic world: export -> import gives the
same arrays bit for bit and the same evaluation numbers for every method; a folder with a missing
and a corrupt file is imported with both listed and counted."""

import json
import os
import shutil

import numpy as np
import pytest

from core.config import load_cfg
from datasets.features import LOCAL_FIELDS, open_store
from tests.tiny import TINY_PRESET, extract_tiny_world
from tools import import_official_features
from tools.evaluation.run import evaluate
from tools.extraction.shards import FAILURES_FILE
from tools.interop.store_export import EXPORT_INFO, export_features
from tools.interop.store_import import IMPORTED, import_official
from tools.retrieval.methods import METHODS

# every registered method that needs no trained model: global, sv, asmk, asmk_rerank and the
# training-free re-ranking methods (the learned re-ranker's need RERANKER.WEIGHTS:
# tests/test_learned_method.py)
ALL_METHODS = [name for name in METHODS if "learned" not in name]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, options) of the tiny world extracted with the tiny untrained model, and its export."""
    root = tmp_path_factory.mktemp("interop")
    options = extract_tiny_world(root)
    written = export_features(str(root / "out" / "features"), str(root / "official"))
    assert sorted(os.path.basename(folder) for folder in written) == ["index", "query"]
    return root, options


def _data_root(options):
    return options[options.index("EVAL.DATA_ROOT") + 1]


def _evaluate(options, features_dir, out_dir):
    cfg = load_cfg(
        TINY_PRESET,
        [*options, "EVAL.FEATURES_DIR", str(features_dir), "OUT_DIR", str(out_dir)],
    )
    cfg.EVAL.METHODS = ALL_METHODS
    return evaluate(cfg)


def test_export_import_is_exact_and_evaluates_the_same(world):
    root, options = world
    summary = import_official(
        str(root / "official"), _data_root(options), "synth", str(root / "back")
    )
    assert all(not part["missing"] and not part["corrupt"] for part in summary.values())
    for name in ("synth_query", "synth_database"):
        original = open_store(root / "out" / "features" / name)
        imported = open_store(root / "back" / name)
        assert imported.names == original.names
        assert imported.provenance["source"] == IMPORTED
        assert imported.crop_boxes == original.crop_boxes
        assert np.array_equal(imported.global_descriptors(), original.global_descriptors())
        for index in range(len(original.names)):
            a, b = original.local_at(index), imported.local_at(index)
            for field in LOCAL_FIELDS:
                assert a[field].dtype == b[field].dtype, (name, index, field)
                assert np.array_equal(a[field], b[field]), (name, index, field)
    assert open_store(root / "out" / "features" / "synth_query").crop_boxes  # queries are cropped

    before = _evaluate(options, root / "out" / "features", root / "eval_original")
    after = _evaluate(options, root / "back", root / "eval_imported")
    assert list(after) == ALL_METHODS and {"global", "sv", "asmk"} <= set(after)
    assert after == before


def test_float32_import_of_a_float16_store_keeps_the_values(world):
    root, options = world
    import_official(
        str(root / "official"), _data_root(options), "synth", str(root / "f32"), float16=False
    )
    original = open_store(root / "out" / "features" / "synth_database")
    imported = open_store(root / "f32" / "synth_database")
    a, b = original.local_at(3)["descriptors"], imported.local_at(3)["descriptors"]
    assert a.dtype == np.float16 and b.dtype == np.float32
    assert np.array_equal(a.astype(np.float32), b)


def test_missing_and_corrupt_files_are_listed_and_counted(world, tmp_path, capsys):
    root, options = world
    official = tmp_path / "official"
    shutil.copytree(root / "official", official)
    database = open_store(root / "out" / "features" / "synth_database").names
    os.remove(official / "index" / f"{database[2]}.delg_global")
    (official / "index" / f"{database[5]}.delg_local").write_bytes(b"\x0a\xff\xff\xff")
    code = import_official_features.main(
        [
            str(official),
            str(tmp_path / "stores"),
            "--dataset",
            "synth",
            "--data-root",
            _data_root(options),
        ]
    )
    assert code == 1
    out = capsys.readouterr().out
    assert (
        f"synth_database: {len(database)} listed, {len(database) - 2} imported, 1 missing, "
        "1 corrupt" in out
    )
    assert f"{database[2]}.delg_global: missing" in out
    assert f"{database[5]}.delg_local: not a serialized DelfFeatures" in out
    failures = json.loads((tmp_path / "stores" / "synth_database" / FAILURES_FILE).read_text())
    assert [failure["name"] for failure in failures] == [database[2], database[5]]
    store = open_store(tmp_path / "stores" / "synth_database")
    assert store.provenance["num_failures"] == 2 and database[2] not in store.names
    assert "synth_query: 4 listed, 4 imported, 0 missing, 0 corrupt" in out


def test_a_folder_without_official_files_is_a_clear_error(world, tmp_path, capsys):
    root, options = world
    (tmp_path / "empty" / "query").mkdir(parents=True)
    (tmp_path / "empty" / "index").mkdir()
    code = import_official_features.main(
        [
            str(tmp_path / "empty"),
            str(tmp_path / "stores"),
            "--dataset",
            "synth",
            "--data-root",
            _data_root(options),
        ]
    )
    assert code == 2
    assert "none of the 4 listed images has a .delg_global or .delg_local file" in (
        capsys.readouterr().err
    )
    assert not os.path.exists(root / "official" / EXPORT_INFO)  # the info lies in each part
    assert os.path.isfile(root / "official" / "query" / EXPORT_INFO)
