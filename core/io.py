"""Atomic writes: every file the framework produces appears whole or not at all.

Files are created with the mode the umask gives (0666 & ~umask), so a group sharing an output
folder can read each other's results. A write that runs out of space raises DiskFullError: one line
naming the folder, the space needed (when known) and the space free; scripts exit with
EXIT_DISK_FULL.
"""

import contextlib
import errno
import os
import shutil
import tempfile

import numpy as np
import simplejson

EXIT_DISK_FULL = 5  # a checkpoint, store or result did not fit on its disk (the message says where)


class DiskFullError(OSError):
    """Not enough free space for a file; the message names the folder, the space needed and free."""

    def __str__(self):
        return self.strerror


def _megabytes(num_bytes):
    return f"{num_bytes / 2**20:.1f} MB"


def check_free_space(folder, needed, what="the file"):
    """Raise DiskFullError unless folder's file system has `needed` bytes free."""
    os.makedirs(folder, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(
            errno.ENOSPC,
            f"not enough space in {folder} for {what}: {_megabytes(needed)} needed, "
            f"{_megabytes(free)} free; free some space or choose another folder",
        )


def _is_disk_full(error):
    """True for ENOSPC (or EDQUOT) anywhere in the chain, and for torch's zip writer failing with
    'unexpected pos' (how torch.save reports a short write)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error
    removed. The file gets the umask's mode (mkstemp alone would leave it 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(error, DiskFullError) or not _is_disk_full(error):
            raise
        free = _megabytes(shutil.disk_usage(folder).free)
        raise DiskFullError(
            errno.ENOSPC,
            f"disk full in {folder} while writing {os.path.basename(path)} ({free} free); "
            "free some space or choose another folder",
        ) from None


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
