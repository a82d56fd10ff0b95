"""Read the benchmark's pickle files without letting them run code.

A pickle can name any importable callable (``os.system``, ``subprocess.Popen``, ...) and have it
called while loading. The revisitop ground-truth files only need plain containers and, in files
other tools wrote, numpy arrays, so the unpickler below resolves exactly those globals and refuses
everything else before it is called. The real gnd_roxford5k.pkl / gnd_rparis6k.pkl reference no
global at all (lists, dicts, str, int, float only).
"""

import codecs
import importlib
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle names a global outside the allow-list; nothing it names was called.

    A ValueError too, as every bad input file is: scripts report it in one line and exit with 2.
    """


class PickleReadError(ValueError):
    """The file is not a readable pickle (missing, truncated, corrupt)."""


def _numpy_core(submodule):
    """numpy >= 2 keeps the pickled helpers in numpy._core; files written by numpy 1 say
    numpy.core."""
    try:
        return importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        return importlib.import_module(f"numpy.core.{submodule}")


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may use it, nobody may call
    it.

    Calling ``numpy.ndarray(shape, dtype=object, buffer=...)`` directly would turn raw bytes into
    object pointers (a crash, or worse), so the real class is never handed to the pickle.
    """


def _allowed_globals(source):
    multiarray = _numpy_core("multiarray")
    numeric = _numpy_core("numeric")

    def reconstruct(subtype, shape, dtype):
        if subtype is not _NdarrayType:
            raise UnsafePickleError(
                f"{source}: _reconstruct is only allowed for numpy.ndarray, got {subtype!r}"
            )
        return multiarray._reconstruct(np.ndarray, shape, dtype)

    def latin1_encode(text, encoding="latin1"):
        # protocol-2 pickles store raw bytes (numpy buffers) as _codecs.encode(str, 'latin1');
        # nothing else
        if not isinstance(text, str) or str(encoding).replace("-", "").lower() not in (
            "latin1",
            "iso88591",
        ):
            raise UnsafePickleError(f"{source}: _codecs.encode is only allowed as (str, 'latin1')")
        return codecs.encode(text, "latin1")

    allowed = {
        ("_codecs", "encode"): latin1_encode,
        ("numpy", "ndarray"): _NdarrayType,
        ("numpy", "dtype"): np.dtype,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for builtins_module in ("builtins", "__builtin__"):  # __builtin__: Python 2 pickles
        for container in (set, frozenset, bytearray, complex):
            allowed[(builtins_module, container.__name__)] = container
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` only returns allow-listed globals."""

    def __init__(self, file, source="<pickle>"):
        # latin1 lets Python 2 pickles of numpy arrays load; Python 3 strings are unaffected
        super().__init__(file, encoding="latin1")
        self.source = source
        self._allowed = _allowed_globals(self.source)

    def find_class(self, module, name):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name}; this reader only accepts "
                "lists, dicts, numbers, strings and numpy arrays"
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r}")


def safe_load_pickle(path):
    """Load ``path`` with RestrictedUnpickler; raise UnsafePickleError or PickleReadError naming the
    file."""
    try:
        with open(path, "rb") as handle:
            return RestrictedUnpickler(handle, source=str(path)).load()
    except UnsafePickleError:
        raise
    except FileNotFoundError:
        raise PickleReadError(f"{path}: file does not exist") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        OSError,
    ) as error:
        reason = str(error) or type(error).__name__
        raise PickleReadError(f"{path}: not a readable pickle ({reason})") from None
