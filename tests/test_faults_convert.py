"""tools/convert_official.py and its outputs: an existing OUT.pth / OUT.yaml is refused before the
conversion (--overwrite replaces them), the two files appear both or neither, and an output path
under a regular file is one line with exit 2. The archive is a small tf-slim checkpoint
(tests/tf_archives.py); the refusals are real files and folders, no monkeypatching."""

import os

import pytest

from core.cli import TRACEBACK_VARIABLE
from tests import tf_archives

tf_archives.tensorflow_or_skip()

from tools import convert_official  # noqa: E402


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("slim") / "r50delg_gld_20200814.ckpt")
    return tf_archives.save_checkpoint(prefix, tf_archives.slim_variables(seed=3))


@pytest.fixture(autouse=True)
def _one_line_errors(monkeypatch):
    monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("convert_official error: "), err
    return err


def test_an_existing_checkpoint_is_refused_unless_overwrite(archive, tmp_path, capsys):
    out = tmp_path / "converted"
    (tmp_path / "converted.pth").write_bytes(b"an earlier conversion")
    assert convert_official.main([archive, str(out)]) == 2
    assert f"{out}.pth exists" in _error_line(capsys)
    assert (tmp_path / "converted.pth").read_bytes() == b"an earlier conversion"
    assert not (tmp_path / "converted.yaml").exists()
    assert convert_official.main([archive, str(out), "--overwrite"]) == 0
    assert (tmp_path / "converted.pth").read_bytes() != b"an earlier conversion"
    assert (tmp_path / "converted.yaml").is_file()
    assert sorted(os.listdir(tmp_path)) == ["converted.pth", "converted.yaml"]


def test_a_folder_at_the_config_path_leaves_no_checkpoint(archive, tmp_path, capsys):
    """The second file cannot be written (a folder holds its name): the first is not written
    either, and the line names the folder."""
    out = tmp_path / "converted"
    (tmp_path / "converted.yaml").mkdir()
    assert convert_official.main([archive, str(out), "--overwrite"]) == 2
    assert f"{out}.yaml: is a folder" in _error_line(capsys)
    assert os.listdir(tmp_path) == ["converted.yaml"]


def test_an_output_under_a_regular_file_is_one_line(archive, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "converted"
    assert convert_official.main([archive, str(out)]) == 2
    assert f"{tmp_path / 'a_file'}: Not a directory" in _error_line(capsys)
