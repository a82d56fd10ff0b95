"""Every script reports a mistake in its arguments or inputs the same way: one line
``<script> error: <message>`` on stderr, exit code 2 (5 for a full disk), no traceback; a bug keeps
its traceback, and DELG_TRACEBACK=1 shows it for every error."""

import errno

import pytest

from core.cli import EXIT_USAGE, TRACEBACK_VARIABLE, run_reporting_errors
from core.distributed import LaunchError
from core.io import EXIT_DISK_FULL, DiskFullError
from tests.tiny import TINY_PRESET
from tools import (
    convert_official,
    export_official_features,
    extractor,
    make_synthetic,
    plot_training,
)
from tools.vis import attention


def _raise(error):
    raise error


def test_the_function_s_own_exit_code_passes_through():
    assert run_reporting_errors("x", lambda a, b=0: a + b, 3, b=4) == 7


@pytest.mark.parametrize(
    "error",
    [ValueError("bad key"), FileNotFoundError("no such file"), LaunchError("no GPU")],
)
def test_an_input_mistake_is_one_line_and_exit_2(error, capsys, monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    assert run_reporting_errors("search", _raise, error) == EXIT_USAGE == 2
    assert capsys.readouterr().err == f"search error: {error}\n"


def test_a_full_disk_is_exit_5(capsys):
    error = DiskFullError(errno.ENOSPC, "not enough space in /out: 10 MB needed, 1 MB free")
    assert run_reporting_errors("extractor", _raise, error) == EXIT_DISK_FULL == 5
    assert capsys.readouterr().err == f"extractor error: {error}\n"


def test_a_bug_keeps_its_traceback():
    with pytest.raises(KeyError):
        run_reporting_errors("search", _raise, KeyError("a bug"))


def test_delg_traceback_shows_the_traceback_of_a_mistake(monkeypatch, capsys):
    monkeypatch.setenv(TRACEBACK_VARIABLE, "1")
    with pytest.raises(ValueError, match="bad key"):
        run_reporting_errors("search", _raise, ValueError("bad key"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("script", "argv", "name", "expected"),
    [
        (extractor, ["--merge", "{tmp}/store"], "extractor", "no shards to merge"),
        (export_official_features, ["{tmp}/store", "{tmp}/out"], "export", "store"),
        (plot_training, ["{tmp}/run"], "plot_training", "training_log.jsonl does not exist"),
        (convert_official, ["{tmp}/sm", "{tmp}/out"], "convert_official", "no such SavedModel"),
        (make_synthetic, ["--out", "{tmp}/w", "--image-size", "3"], "make_synthetic", "64 <="),
        (attention, ["--cfg", TINY_PRESET, "{tmp}/missing.jpg"], "attention", "cannot read image"),
    ],
)
def test_scripts_report_their_mistakes_in_one_line(
    script, argv, name, expected, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    assert script.main([word.format(tmp=tmp_path) for word in argv]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines and lines[-1].startswith(f"{name} error: ") and expected in lines[-1], err
    assert "Traceback" not in err
