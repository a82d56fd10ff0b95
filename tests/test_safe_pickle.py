import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

from datasets.safe_pickle import PickleReadError, UnsafePickleError, safe_load_pickle

SHARED = Path(__file__).resolve().parents[2] / "shared"
REVISITOP = SHARED / "data" / "revisitop"


class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _CallsNdarrayOnRawBytes:
    def __reduce__(self):  # an object array over raw bytes: crashes the interpreter if ever called
        return np.ndarray, ((1,), np.dtype(object), b"AAAAAAAA")


def test_pickle_that_would_run_a_command_is_refused_before_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "payload": _RunsShellCommand(f"touch {marker}")}))
    with pytest.raises(UnsafePickleError) as caught:
        safe_load_pickle(path)
    message = str(caught.value)
    assert str(path) in message and "system" in message and os.system.__module__ in message
    assert not marker.exists()


@pytest.mark.parametrize("callable_", [eval, getattr, __import__])
def test_builtins_beyond_plain_containers_are_refused(tmp_path, callable_):
    path = tmp_path / "builtin.pkl"
    path.write_bytes(pickle.dumps(_Reducer(callable_, ("1",))))
    with pytest.raises(UnsafePickleError, match=callable_.__name__):
        safe_load_pickle(path)


class _Reducer:
    def __init__(self, function, args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_numpy_ndarray_cannot_be_called_directly(tmp_path):
    path = tmp_path / "raw.pkl"
    path.write_bytes(pickle.dumps(_CallsNdarrayOnRawBytes()))
    with pytest.raises(PickleReadError, match=str(path)):
        safe_load_pickle(path)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_plain_containers_and_numpy_arrays_load(tmp_path, protocol):
    data = {
        "imlist": ["a", "b"],
        "gnd": [
            {"bbx": [1.5, 2.0, 30.25, 40.0], "easy": np.array([0, 1]), "hard": [], "junk": (1,)}
        ],
        "matrix": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
        "scalar": np.float64(0.5),
        "names": np.array(["x", "yy"]),
        "tags": {"q", "r"},
        "raw": b"\x00\xff",
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = safe_load_pickle(path)
    assert (
        loaded["imlist"] == ["a", "b"]
        and loaded["tags"] == {"q", "r"}
        and loaded["raw"] == b"\x00\xff"
    )
    np.testing.assert_array_equal(loaded["gnd"][0]["easy"], [0, 1])
    np.testing.assert_array_equal(loaded["matrix"], data["matrix"])
    assert loaded["matrix"].dtype == np.float32 and loaded["scalar"] == 0.5
    np.testing.assert_array_equal(loaded["names"], data["names"])


@pytest.mark.parametrize("content", [b"", b"\x80\x03]q\x00(K\x01", b"not a pickle"])
def test_unreadable_files_raise_pickle_read_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.pkl"
    path.write_bytes(content)
    with pytest.raises(PickleReadError, match=str(path)):
        safe_load_pickle(path)
    with pytest.raises(PickleReadError, match="does not exist"):
        safe_load_pickle(tmp_path / "absent.pkl")


@pytest.mark.skipif(
    not REVISITOP.is_dir(), reason=f"real revisitop ground truth not available at {REVISITOP}"
)
@pytest.mark.parametrize("name", ["roxford5k", "rparis6k"])
def test_real_gnd_files_reference_no_globals_and_load(name):
    path = REVISITOP / f"gnd_{name}.pkl"
    opcodes = {opcode.name for opcode, _, _ in pickletools.genops(path.read_bytes())}
    assert not opcodes & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "BUILD"}
    gnd = safe_load_pickle(path)
    assert set(gnd) == {"imlist", "qimlist", "gnd"} and len(gnd["qimlist"]) == 70
