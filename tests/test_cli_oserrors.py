"""core/cli.py and core/io.py on the errors of paths: an OSError of a path the user chose is one
line ``<script> error: <path>: <reason>`` with exit 2; a full disk (ENOSPC, EDQUOT, EFBIG: the
file-size limit) exit 5; other OSErrors keep their traceback. core/io.py's atomic_paths writes two
files both or neither.

The errors are real where this process can make them as root (chmod stops no write of root): a
path under a regular file (ENOTDIR), a folder opened for writing (EISDIR), a folder made twice
(EEXIST), a folder under /sys (sysfs refuses every new file: EACCES or EPERM), the file-size limit
RLIMIT_FSIZE (EFBIG). A read-only file system (EROFS) cannot be mounted without privileges: that
test raises the OSError the kernel would give.
"""

import errno
import os

import numpy as np
import pytest

from core.cli import EXIT_USAGE, TRACEBACK_VARIABLE, run_reporting_errors
from core.io import EXIT_DISK_FULL, atomic_paths, check_writable, write_npy
from tests.test_faults_outputs import UNWRITABLE, file_size_limit


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)


def _write(path, data=b"x"):
    with open(path, "wb") as handle:
        handle.write(data)


def _report(capsys, function, *args):
    code = run_reporting_errors("script", function, *args)
    return code, capsys.readouterr().err


def test_a_path_under_a_regular_file(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "out.json"
    assert _report(capsys, _write, path) == (EXIT_USAGE, f"script error: {path}: Not a directory\n")


def test_a_folder_where_a_file_is_expected(tmp_path, capsys):
    assert _report(capsys, _write, tmp_path) == (
        EXIT_USAGE,
        f"script error: {tmp_path}: Is a directory\n",
    )


def test_a_folder_that_exists(tmp_path, capsys):
    assert _report(capsys, os.mkdir, tmp_path) == (
        EXIT_USAGE,
        f"script error: {tmp_path}: File exists\n",
    )


@pytest.mark.skipif(not os.path.isdir(UNWRITABLE), reason="needs Linux sysfs")
def test_a_folder_that_takes_no_files(capsys):
    folder = os.path.join(UNWRITABLE, "delg_out")
    code, err = _report(capsys, check_writable, folder)
    assert code == EXIT_USAGE and err.startswith(f"script error: {folder}: "), err
    assert len(err.splitlines()) == 1 and ("Permission denied" in err or "not permitted" in err)


def test_a_read_only_file_system(tmp_path, capsys):
    path = str(tmp_path / "results.json")

    def read_only():
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    assert _report(capsys, read_only) == (
        EXIT_USAGE,
        f"script error: {path}: Read-only file system\n",
    )


def test_the_file_size_limit_is_a_full_disk(tmp_path, capsys):
    path = tmp_path / "big.bin"
    with file_size_limit(4096):
        code, err = _report(capsys, _write, path, b"x" * 10000)  # a plain write
    assert code == EXIT_DISK_FULL == 5
    # a write to an open file: the system names no path (atomic writes name theirs, below)
    assert err.startswith("script error: File too large (the disk is full or the file-size"), err
    with file_size_limit(4096):
        code, err = _report(capsys, write_npy, str(path), np.zeros(10000))  # an atomic write
    assert code == EXIT_DISK_FULL and f"disk full in {tmp_path} while writing big.bin (" in err, err
    assert os.listdir(tmp_path) == ["big.bin"]  # the plain write's partial file; no temporary


def test_other_os_errors_keep_their_traceback():
    with pytest.raises(OSError) as raised:
        run_reporting_errors("script", os.close, 2**20)  # EBADF: a bug, not the user's path
    assert raised.value.errno == errno.EBADF


def test_two_files_are_written_both_or_neither(tmp_path):
    """The second of two writes fails (the file-size limit, as a full disk would): the first file
    keeps its old content, and no temporary file is left."""
    small, big = tmp_path / "model.yaml", tmp_path / "model.pth"
    small.write_text("old config")
    with pytest.raises(OSError) as raised, file_size_limit(4096):
        with atomic_paths(str(small), str(big)) as (small_tmp, big_tmp):
            _write(small_tmp, b"new config")
            _write(big_tmp, b"x" * 10000)
    assert raised.value.errno == errno.ENOSPC  # DiskFullError: exit 5 in a script
    assert "while writing model.yaml, model.pth (" in str(raised.value)
    assert small.read_text() == "old config" and not big.exists()
    assert os.listdir(tmp_path) == ["model.yaml"]
    with atomic_paths(str(small), str(big)) as (small_tmp, big_tmp):
        _write(small_tmp, b"new config")
        _write(big_tmp, b"weights")
    assert small.read_text() == "new config" and big.read_bytes() == b"weights"
