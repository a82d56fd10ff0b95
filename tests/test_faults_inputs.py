"""Fault injection on inputs: damaged feature stores are named on open and refused by search, and a
code-running ground-truth pickle is refused by every script that reads one (exit 2, one line)."""

import errno
import os
import pickle
import shutil

import numpy as np
import pytest

from core.io import EXIT_DISK_FULL, read_json, write_json
from datasets.features import FeatureStoreError, open_store
from tests.tiny import TINY_PRESET, extract_tiny_world
from tools import extractor, search
from tools.revisitop import evaluate
from tools.vis import matches, ranking


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return root, extract_tiny_world(root)


def damaged_copy(root, tmp_path, damage):
    """A copy of the database store with damage(folder) applied; returns its folder."""
    folder = tmp_path / "store"
    shutil.copytree(root / "out" / "features" / "synth_database", folder)
    damage(folder)
    return folder


def truncate_global(folder):
    path = folder / "global.npy"
    path.write_bytes(path.read_bytes()[:-100])


def extra_name(folder):
    meta = read_json(folder / "meta.json")
    meta["names"].append("one_more")
    write_json(folder / "meta.json", meta)


def short_local(folder):
    path = folder / "local_scores.npy"
    np.save(path, np.load(path)[:-3])


@pytest.mark.parametrize(
    "damage, named, expected",
    [
        (truncate_global, "global.npy", "unreadable"),
        (extra_name, "global.npy", "31 rows"),
        (short_local, "local_scores.npy", "rows (local_offsets.npy ends at"),
    ],
)
def test_damaged_store_is_named_on_open(world, tmp_path, damage, named, expected):
    folder = damaged_copy(world[0], tmp_path, damage)
    with pytest.raises(FeatureStoreError) as caught:
        open_store(str(folder))
    message = str(caught.value)
    assert str(folder / named) in message and expected in message and "+1m" not in message


def test_search_refuses_a_damaged_store(world, tmp_path, capsys):
    root, options = world
    folder = damaged_copy(root, tmp_path, extra_name)
    image = root / "data" / "test" / "jpg" / "query_000.jpg"
    argv = ["--cfg", TINY_PRESET, str(image), "--store", str(folder), *options]
    assert search.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(folder / "global.npy") in err and "damaged" in err


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_world(root, tmp_path):
    """A copy of the test set whose gnd_synth.pkl runs a command when unpickled naively."""
    data = tmp_path / "test"
    shutil.copytree(root / "data" / "test", data)
    marker = tmp_path / "pwned"
    with open(data / "gnd_synth.pkl", "wb") as handle:
        pickle.dump({"imlist": [], "qimlist": [], "gnd": RunsCode(marker)}, handle)
    return data, marker


def scripts(options, data, out):
    opts = [
        *options,
        "EVAL.DATA_ROOT",
        str(data),
        "EXTRACT.DATA_ROOT",
        str(data),
        "EVAL.FEATURES_DIR",
        str(out / "features"),
    ]
    cfg = ["--cfg", TINY_PRESET]
    return {
        "evaluate": lambda: evaluate.main([*cfg, *opts]),
        "extractor": lambda: extractor.main([*cfg, *opts, "OUT_DIR", str(out / "again")]),
        "ranking": lambda: ranking.main([*cfg, "--query", "0", "--out", str(out / "r.png"), *opts]),
        "matches": lambda: matches.main(
            [*cfg, "--query", "query_000", "--index", "db_000", "--out", str(out / "m.png"), *opts]
        ),
    }


@pytest.mark.parametrize("script", ["evaluate", "extractor", "ranking", "matches"])
def test_malicious_ground_truth_is_refused_by_every_reader(world, tmp_path, capsys, script):
    root, options = world
    data, marker = malicious_world(root, tmp_path)
    assert scripts(options, data, root / "out")[script]() == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "refusing to load global" in err, err
    assert str(data / "gnd_synth.pkl") in err and not marker.exists()


def test_extraction_on_a_full_disk_exits_5_then_resumes(world, tmp_path, monkeypatch, capsys):
    root, options = world
    argv = ["--cfg", TINY_PRESET, *options, "OUT_DIR", str(tmp_path)]
    real_save = np.save

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", no_space)
    assert extractor.main(argv) == EXIT_DISK_FULL == 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disk full in" in err and "MB free" in err, err
    monkeypatch.setattr(np, "save", real_save)
    assert extractor.main(argv) == 0
    assert len(open_store(str(tmp_path / "features" / "synth_database"))) == 30
