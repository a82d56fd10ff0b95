"""Outputs and files: nothing lost, nothing replaced without a word, nothing damaged imported.

One test per fault: a failed ONNX write (3), an official local file cut at a feature boundary (4),
existing outputs of every tool (6), path errors of the scripts (7), duplicate image names (9). The
converter's faults (6, 7, 8) need TensorFlow: tests/test_faults_convert.py.

How the faults are made (the tests run as root, so a chmod'ed folder would not stop a write): a
full disk is the file-size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, what a full disk
gives); a folder that refuses files is under /sys (sysfs lets no one create files
there, root included); a path error is a path under a regular file (NotADirectoryError) or a
folder where a file is expected.
"""

import contextlib
import os
import pickle
import resource

import numpy as np
import pytest

from core.cli import TRACEBACK_VARIABLE
from core.io import read_json
from datasets.features import open_store, write_store
from tests.test_evaluate import make_world
from tests.tiny import TINY_EXTRACTION, TINY_PRESET
from tools import export_official_features, export_onnx, import_official_features
from tools.interop.delf_pb import DelfFeatures
from tools.interop.store_export import export_features
from tools.revisitop import evaluate

UNWRITABLE = "/sys/fs"  # sysfs: creating a file there fails with EACCES, for root too


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)


@pytest.fixture
def world(tmp_path):
    """tmp_path with gnd_tiny.pkl and the stores features/tiny_query, features/tiny_database."""
    make_world(tmp_path, num_database=10, num_queries=2)
    return tmp_path


def _one_error_line(capsys, script, *expected):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script} error: "), err
    assert all(text in lines[0] for text in expected), err
    return lines[0]


def _export(world, *extra):
    out = world / "official"
    return export_official_features.main([str(world / "features"), str(out), *extra]), out


def _exported(world):
    """world/official: the stores exported by the library (no progress bars on stderr)."""
    export_features(str(world / "features"), str(world / "official"))
    return world / "official"


def _import(world, official, out, *extra):
    arguments = [str(official), str(out), "--dataset", "tiny", "--data-root", str(world)]
    return import_official_features.main([*arguments, *extra])


def _leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith((".tmp", ".old", ".partial"))]


# --------------------------------------------------------------------------- 3: a failed ONNX write
@contextlib.contextmanager
def file_size_limit(limit):
    """Writes past limit bytes fail with EFBIG (Python ignores SIGXFSZ) in this process, until the
    block ends: the soft limit only, so the old one can always be restored."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


def test_a_failed_onnx_write_keeps_the_previous_model_and_exits_5(tmp_path, capsys):
    """The file-size limit (64 KB, below the tiny model's size) stands for a full disk."""
    pytest.importorskip("onnx", reason="onnx (requirements-interop.txt)")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous, good model")
    arguments = ["--cfg", TINY_PRESET, "--out", str(out), "--overwrite", "--sizes", "64x64"]
    with file_size_limit(64 * 1024):
        code = export_onnx.main([*arguments, *TINY_EXTRACTION])
    assert code == 5
    _one_error_line(capsys, "export_onnx", f"disk full in {tmp_path} while writing model.onnx (")
    assert out.read_bytes() == b"the previous, good model"
    assert _leftovers(tmp_path) == []


# -------------------------------------------------------- 4: a local file cut at a feature boundary
def test_a_local_file_cut_at_a_feature_boundary_is_corrupt(world, capsys):
    _exported(world)
    name = open_store(world / "features" / "tiny_database").names[3]
    path = world / "official" / "index" / f"{name}.delg_local"
    data = path.read_bytes()
    features = DelfFeatures.FromString(data).feature
    half = DelfFeatures()
    half.feature.extend(features[: len(features) // 2])
    cut = len(half.SerializeToString())
    assert data[:cut] == half.SerializeToString()  # a cut at a feature boundary parses
    path.write_bytes(data[:cut])
    assert _import(world, world / "official", world / "back") == 1
    out = capsys.readouterr().out
    assert "tiny_database: 10 listed, 9 imported, 0 missing, 1 corrupt" in out
    assert f"{path}: {len(features) // 2} features, but {len(features)} were written" in out
    assert name not in open_store(world / "back" / "tiny_database").names


# ----------------------------------------------------------------- 6: existing outputs of each tool
def test_the_importer_refuses_a_folder_holding_stores_unless_overwrite(world, capsys):
    _exported(world)
    store = world / "features" / "tiny_database"
    meta = (store / "meta.json").read_bytes()
    assert _import(world, world / "official", world / "features") == 2
    _one_error_line(capsys, "import", str(world / "features" / "tiny_query"), "--overwrite")
    assert (store / "meta.json").read_bytes() == meta
    assert _import(world, world / "official", world / "features", "--overwrite") == 0
    assert open_store(store).provenance["source"] == "imported from the official format"
    assert _leftovers(world / "features") == []


def test_the_exporter_refuses_an_earlier_export_unless_overwrite(world, capsys):
    assert _export(world)[0] == 0
    stale = world / "official" / "index" / "stale.delg_global"
    stale.write_bytes(b"from another export")
    capsys.readouterr()
    code, official = _export(world)
    assert code == 2
    _one_error_line(capsys, "export", str(official / "query"), "--overwrite")
    assert stale.is_file()
    assert _export(world, "--overwrite")[0] == 0
    assert not stale.exists()  # the folder was replaced whole
    assert (official / "index" / "export_info.json").is_file()
    assert _leftovers(official) == []


def test_onnx_export_refuses_an_existing_model_before_building_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"a model")

    def no_model(*args):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(export_onnx, "build_extraction_model", no_model)
    arguments = ["--cfg", TINY_PRESET, "--out", str(out), *TINY_EXTRACTION]
    assert export_onnx.main(arguments) == 2
    _one_error_line(capsys, "export_onnx", f"{out} exists", "--overwrite")
    assert out.read_bytes() == b"a model"


def _evaluate(world, methods, *extra):
    arguments = ["EVAL.DATASET", "tiny", "EVAL.FEATURES_DIR", str(world / "features")]
    arguments += ["OUT_DIR", str(world / "out"), "EVAL.DATA_ROOT", str(world)]
    arguments += ["EVAL.METHODS", methods, "EVAL.DEVICE", "cpu", "DEVICE", "cpu", *extra]
    return evaluate.main(["--cfg", "", *arguments])


def test_a_second_evaluation_merges_into_results_json(world, capsys):
    assert _evaluate(world, "['global', 'qe']") == 0
    first = read_json(world / "out" / "results.json")
    capsys.readouterr()
    assert _evaluate(world, "['qe', 'sv']") == 0
    assert "replaced: qe; kept: global" in capsys.readouterr().out
    merged = read_json(world / "out" / "results.json")
    assert list(merged) == ["global", "qe", "sv", "runs"]
    assert merged["global"] == first["global"] and merged["qe"] == first["qe"]
    assert merged["runs"]["global"] == first["runs"]["global"]
    assert merged["runs"]["sv"]["dataset"] == "tiny"
    assert merged["runs"]["sv"]["features_dir"] == str(world / "features")


def test_a_results_json_that_is_not_an_evaluation_s_is_refused_before_the_work(world, capsys):
    (world / "out").mkdir()
    (world / "out" / "results.json").write_text('{"map": 1.0}')
    assert _evaluate(world, "['global']") == 2
    captured = capsys.readouterr()
    assert "mAP" not in captured.out  # refused before the table
    assert "results.json: not an evaluation's results" in captured.err
    assert (world / "out" / "results.json").read_text() == '{"map": 1.0}'


# --------------------------------------------------------------------------- 7: path errors, exit 2
@pytest.mark.skipif(not os.path.isdir(UNWRITABLE), reason="needs Linux sysfs")
def test_an_unwritable_out_dir_fails_before_the_table(world, capsys):
    out = os.path.join(UNWRITABLE, "delg_results")
    assert _evaluate(world, "['global']", "OUT_DIR", out) == 2
    captured = capsys.readouterr()
    assert "mAP" not in captured.out  # refused before the work, not after the table
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"evaluation error: {out}: "), captured.err
    assert "Permission denied" in lines[0] or "not permitted" in lines[0]  # EACCES or EPERM


def test_dba_beside_a_store_folder_that_takes_no_files_is_one_line(world, capsys):
    """The DBA cache folder <store>.dba is a regular file: its cache cannot be written (what a
    read-only store folder gives, as NotADirectoryError instead of PermissionError)."""
    (world / "features" / "tiny_database.dba").write_text("not a folder")
    assert _evaluate(world, "['dba']", "RERANK.DBA_K", "2") == 2
    _one_error_line(capsys, "evaluation", str(world / "features" / "tiny_database.dba"))


@pytest.mark.parametrize("tool", ["export", "import", "export_onnx"])
def test_an_output_under_a_regular_file_is_one_line(world, capsys, tool):
    blocker = world / "a_file"
    blocker.write_text("")
    target = blocker / "out"
    if tool == "export":
        code = export_official_features.main([str(world / "features"), str(target)])
    elif tool == "import":
        _exported(world)
        code = _import(world, world / "official", target)
    else:
        arguments = ["--cfg", TINY_PRESET, "--out", str(target / "m.onnx"), *TINY_EXTRACTION]
        code = export_onnx.main(arguments)
    assert code == 2
    _one_error_line(capsys, tool, f"{blocker}", "Not a directory")


# ------------------------------------------------------------------------- 9: duplicate image names
def test_the_exporter_refuses_two_images_of_one_name(tmp_path, capsys):
    rng = np.random.default_rng(0)
    names = ["a", "b", "c", "b"]
    write_store(tmp_path / "store", names, rng.standard_normal((4, 8)).astype(np.float32))
    code = export_official_features.main([str(tmp_path / "store"), str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys, "export", "images 1 ('b') and 3 ('b')", str(tmp_path / "store"))
    assert not (tmp_path / "out").exists()


def test_the_importer_refuses_a_list_naming_one_image_twice(world, capsys):
    _exported(world)
    with open(world / "gnd_tiny.pkl", "rb") as handle:
        ground_truth = pickle.load(handle)
    ground_truth["imlist"][7] = "./" + ground_truth["imlist"][2]  # the same file, another spelling
    with open(world / "gnd_tiny.pkl", "wb") as handle:
        pickle.dump(ground_truth, handle)
    assert _import(world, world / "official", world / "back") == 2
    line = _one_error_line(capsys, "import", "gnd_tiny.pkl (imlist)", "images 2 ('db_002')")
    assert "and 7 ('./db_002')" in line
    assert not (world / "back" / "tiny_database").exists()


def test_the_exporter_refuses_a_name_leading_outside_its_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_store(tmp_path / "store", ["a", "../b"], rng.standard_normal((2, 8)).astype(np.float32))
    code = export_official_features.main([str(tmp_path / "store"), str(tmp_path / "out")])
    assert code == 2
    _one_error_line(capsys, "export", "image 1 is named '../b', not a file under")
    assert sorted(os.listdir(tmp_path)) == ["store"]
