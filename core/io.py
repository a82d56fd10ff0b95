"""Atomic writes: every file the framework produces appears whole or not at all."""

import contextlib
import os
import tempfile

import numpy as np
import simplejson


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error
    removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path, text):
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def write_json(path, obj, indent=2):
    """JSON (simplejson: numpy scalars and NaN handled the same way everywhere), written
    atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        simplejson.dump(
            obj, handle, indent=indent, ignore_nan=True, for_json=True, default=_to_builtin
        )


def read_json(path):
    with open(path) as handle:
        return simplejson.load(handle)


def write_npy(path, array):
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def torch_save(obj, path):
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _to_builtin(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_png(path, rgb):
    """Write an RGB uint8 picture [H, W, 3] as PNG, atomically."""
    import cv2

    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    with atomic_path(str(path)) as tmp, open(tmp, "wb") as handle:
        handle.write(encoded.tobytes())
