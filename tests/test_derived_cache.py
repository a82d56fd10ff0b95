"""Derived data beside a store (datasets/derived.py): the alpha-DBA cache and the ASMK cache are
keyed, validated before use, rebuilt when damaged, published by one rename, and safe when two
processes build them at once (two real processes, as two evaluations of one store do); a bad block
size writes nothing; a DBA run killed with SIGKILL resumes bit for bit."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import load_cfg
from tests.eval_helpers import cpu_eval_options
from tests.test_asmk_search import _build, _dataset
from tests.test_evaluate import make_world
from tools.evaluation.run import evaluate
from tools.rerank import dba_cache
from tools.rerank.database_augmentation import database_augmentation

REPO = Path(__file__).resolve().parents[1]


def _options(root, out="out"):
    return cpu_eval_options(
        root,
        "tiny+1m",
        "['dba']",
        "EVAL.DATA_ROOT",
        str(root),
        "OUT_DIR",
        str(root / out),
        "RERANK.DBA_K",
        "4",
        "RERANK.DBA_CHUNK",
        "16",
    )


@pytest.fixture
def world(tmp_path):
    make_world(tmp_path, distractors=20)  # 60 database rows: 4 blocks of 16
    return tmp_path


def _dba_root(root):
    return root / "features" / "tiny_database.dba"


def _unit_database(rows=60, dim=8, seed=0):
    database = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return database / np.linalg.norm(database, axis=1, keepdims=True)


# ------------------------------------------------------------------------ defect 1: the block size
@pytest.mark.parametrize("chunk_size", [0, -4])
def test_a_bad_block_size_writes_nothing_and_later_runs_work(tmp_path, chunk_size):
    database = _unit_database()
    source = tmp_path / "global.npy"
    np.save(source, database)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"chunk_size \(RERANK.DBA_CHUNK\)"):
        dba_cache.cached_augmentation(database, str(source), str(cache), 5, chunk_size=chunk_size)
    assert not cache.exists()
    augmented, _ = dba_cache.cached_augmentation(
        database, str(source), str(cache), 5, chunk_size=16
    )
    assert np.array_equal(augmented, database_augmentation(database, 5, chunk_size=16))


# ---------------------------------------------------------------- defect 5: a damaged DBA cache
def _damage(path, how):
    if how == "values":  # a valid header, other rows
        array = np.load(path)
        np.save(path, np.ascontiguousarray(array[::-1]))
    elif how == "shape":
        np.save(path, np.load(path)[:10])
    elif how == "truncated":
        os.truncate(path, os.path.getsize(path) // 2)
    elif how == "random":
        Path(path).write_bytes(np.random.default_rng(1).bytes(os.path.getsize(path)))
    elif how == "meta":
        Path(path).parent.joinpath("meta.json").write_text("{broken")


@pytest.mark.parametrize("how", ["values", "shape", "truncated", "random", "meta"])
def test_a_damaged_dba_cache_is_named_and_rebuilt(world, how, caplog):
    first = evaluate(load_cfg("", _options(world)))
    (cached,) = _dba_root(world).glob("*/augmented.npy")
    _damage(cached, how)
    caplog.set_level(logging.INFO)
    again = evaluate(load_cfg("", _options(world)))
    assert again["dba"] == first["dba"]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and str(cached.parent) in warnings[0], warnings
    assert "building it again" in warnings[0]
    caplog.clear()
    evaluate(load_cfg("", _options(world)))
    assert f"DBA cache reused: {cached.parent}" in caplog.text


# ---------------------------------------------------------------- defect 5: a damaged ASMK cache
def _asmk_file(cache, which):
    if which == "codebook":
        return [*cache.glob("codebook-*.npy"), *cache.glob("codebook-*/centroids.npy")][0]
    return next(cache.glob("ivf-*/vecs.npy"))


@pytest.mark.parametrize("which", ["codebook", "ivf"])
@pytest.mark.parametrize("how", ["values", "truncated", "meta"])
def test_a_damaged_asmk_cache_is_named_and_rebuilt(tmp_path, which, how, caplog):
    database, _, (q_descriptors, q_ids, num_queries), _ = _dataset()
    first = _build(database, cache_dir=tmp_path)
    damaged = _asmk_file(tmp_path, which)
    if how == "meta" and damaged.suffix == ".npy" and damaged.parent == tmp_path:
        how = "truncated"  # the codebook of a layout without meta.json: damage the file itself
    if how == "values":
        array = np.load(damaged)
        np.save(damaged, np.ascontiguousarray(array[::-1]) if which == "codebook" else ~array)
    else:
        _damage(damaged, how)
    caplog.set_level(logging.INFO)
    second = _build(database, cache_dir=tmp_path)
    assert (second.codebook_trained, second.ivf_built) == (which == "codebook", which == "ivf")
    assert "building it again" in caplog.text and str(damaged.parent) in caplog.text
    np.testing.assert_array_equal(
        second.score_matrix(q_descriptors, q_ids, num_queries),
        first.score_matrix(q_descriptors, q_ids, num_queries),
    )
    third = _build(database, cache_dir=tmp_path)
    assert not third.codebook_trained and not third.ivf_built


# --------------------------------------------------------- defect 2: two evaluations at once
CHILD = """
import os, sys, time
import numpy as np
from tools.rerank import dba_cache

source, cache, out, pause = sys.argv[1:]
if pause:  # after its first block, wait until the test says go
    real_write = dba_cache.write_npy

    def write_npy(path, array):
        real_write(path, array)
        ready = os.path.join(pause, "ready")
        if not os.path.exists(ready):
            open(ready, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(os.path.join(pause, "go")) and time.monotonic() < deadline:
                time.sleep(0.05)

    dba_cache.write_npy = write_npy
database = np.load(source, mmap_mode="r")
augmented, _ = dba_cache.cached_augmentation(database, source, cache, 4, chunk_size=16)
np.save(out, augmented)
"""


def _child(tmp_path, name, pause=""):
    arguments = [tmp_path / "global.npy", tmp_path / "cache", tmp_path / f"{name}.npy", pause]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, arguments)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_building_the_dba_cache_at_once_both_succeed(tmp_path):
    """The first process writes one block and pauses; the second resumes from it, finishes and
    publishes; then the first goes on. Both succeed with the same database, and neither a partial
    state nor a private folder is left."""
    database = _unit_database()
    np.save(tmp_path / "global.npy", database)
    pause = tmp_path / "pause"
    pause.mkdir()
    slow = _child(tmp_path, "slow", str(pause))
    deadline = time.monotonic() + 300
    while not (pause / "ready").exists() and slow.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (pause / "ready").exists(), slow.communicate()[0][-2000:]
    fast = _child(tmp_path, "fast")
    fast_log = fast.communicate(timeout=300)[0]
    (pause / "go").touch()
    slow_log = slow.communicate(timeout=300)[0]
    assert fast.returncode == 0, fast_log[-2000:]
    assert slow.returncode == 0, slow_log[-2000:]
    expected = database_augmentation(database, 4, chunk_size=16)
    for name in ("slow", "fast"):
        assert np.array_equal(np.load(tmp_path / f"{name}.npy"), expected), name
    assert not list((tmp_path / "cache").rglob("*partial*"))
    published = [path.name for path in (tmp_path / "cache").iterdir() if path.suffix != ".lock"]
    assert len(published) == 1 and published[0].startswith("dba-"), published


# -------------------------------------------------------------- kill -9 resumes bit for bit
KILLED = """
import os, signal, sys
import numpy as np
from tools.rerank import dba_cache

database = np.load(sys.argv[1])
real_write, written = dba_cache.write_npy, []

def write_npy(path, array):
    if len(written) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    written.append(path)
    real_write(path, array)

dba_cache.write_npy = write_npy
dba_cache.cached_augmentation(database, "sha", sys.argv[2], 5, chunk_size=16)
"""


def test_a_run_killed_with_sigkill_resumes_bit_for_bit(tmp_path, caplog):
    database = _unit_database()
    np.save(tmp_path / "database.npy", database)
    cache = tmp_path / "cache"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, str(tmp_path / "database.npy"), str(cache)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    caplog.set_level(logging.INFO)
    augmented, folder = dba_cache.cached_augmentation(database, "sha", str(cache), 5, chunk_size=24)
    assert "DBA resumed: 2 blocks (32 of 60 rows)" in caplog.text
    assert np.array_equal(augmented, database_augmentation(database, 5, chunk_size=16))
    assert not Path(f"{folder}.partial").exists()


# ------------------------------------------------------------------------- the rule itself
def test_the_first_rename_wins_and_the_loser_uses_its_result(tmp_path, caplog):
    from datasets.derived import derived_folder, load_validated, publish

    identity = {"store": "abc", "k": 3}
    folder = derived_folder(str(tmp_path), "codes", identity)
    assert folder != derived_folder(str(tmp_path), "codes", {"store": "abc", "k": 4})

    def writer(value):
        return lambda tmp: np.save(os.path.join(tmp, "codes.npy"), np.full(4, value, np.int16))

    assert load_validated(folder, identity) is None
    first = publish(folder, identity, writer(1))
    caplog.set_level(logging.INFO)
    second = publish(folder, identity, writer(2))  # built meanwhile by another run
    assert first["codes"].tolist() == second["codes"].tolist() == [1, 1, 1, 1]
    assert "another process published it first" in caplog.text
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(folder)]


def test_settings_are_checked_before_anything_is_written(tmp_path):
    database = _unit_database()
    for settings, key in [
        ({"k": 0}, "RERANK.DBA_K"),
        ({"alpha": float("nan")}, "RERANK.DBA_ALPHA"),
        ({"negative": "abs"}, "RERANK.NEGATIVE"),
    ]:
        arguments = {"k": 5, **settings}
        with pytest.raises(ValueError, match=key):
            dba_cache.cached_augmentation(database, "sha", str(tmp_path / "cache"), **arguments)
    assert not (tmp_path / "cache").exists()


def test_private_folders_of_dead_processes_are_removed_by_the_next_publish(tmp_path):
    from datasets.derived import derived_folder, publish

    folder = derived_folder(str(tmp_path), "codes", {"k": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    base = os.path.basename(folder)
    abandoned = tmp_path / f".{base}.tmp-{host}-{dead.pid}-x1"
    alive = tmp_path / f".{base}.tmp-{host}-{os.getpid()}-x2"
    other_host = tmp_path / f".{base}.tmp-elsewhere-{dead.pid}-x3"
    for path in (abandoned, alive, other_host):
        path.mkdir()
        (path / "codes.npy").write_bytes(b"half written")
    publish(folder, {"k": 1}, lambda tmp: np.save(os.path.join(tmp, "codes.npy"), np.zeros(3)))
    assert not abandoned.exists() and alive.exists() and other_host.exists()


PUBLISHER = """
import os, sys, time
import numpy as np
from datasets.derived import derived_folder, publish

root, value = sys.argv[1], int(sys.argv[2])
folder = derived_folder(root, "codes", {"store": "abc"})

def write(tmp):
    np.save(os.path.join(tmp, "codes.npy"), np.full(4, value, np.int16))
    open(os.path.join(root, f"inside-{value}"), "w").close()
    deadline = time.monotonic() + 120
    while len([n for n in os.listdir(root) if n.startswith("inside-")]) < 2:
        assert time.monotonic() < deadline, "the other process never wrote"
        time.sleep(0.01)

print(publish(folder, {"store": "abc"}, write)["codes"].tolist())
"""


def test_two_processes_publishing_one_folder_at_once_agree_on_the_winner(tmp_path):
    """Two real processes are both inside their write at the same moment; one rename wins, the
    other process returns the winner's arrays, and one published folder is left."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, str(tmp_path), str(value)],
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for value in (1, 2)
    ]
    outputs = [child.communicate(timeout=300)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    results = {output.strip().splitlines()[-1] for output in outputs}
    assert results in ({"[1, 1, 1, 1]"}, {"[2, 2, 2, 2]"}), outputs
    published = [name for name in os.listdir(tmp_path) if name.startswith("codes-")]
    assert len(published) == 1, os.listdir(tmp_path)
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".codes")]
