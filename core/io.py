"""Atomic writes: every file the framework produces appears whole or not at all.

One rule for outputs: a file is written under a temporary name beside it and renamed over its path
(``atomic_path``; ``atomic_paths`` for files that must appear together, ``staging_folder`` for a
folder), and an existing output is never replaced without being asked: ``refuse_existing`` raises
FileExistsError naming it unless the script's ``--overwrite`` was given. ``check_writable`` tries a
folder before a long job writes its results there.

Files are created with the mode the umask gives (0666 & ~umask), so a group sharing an output
folder can read each other's results. A write that runs out of space (ENOSPC, EDQUOT, or EFBIG: the
file-size limit) raises DiskFullError: one line naming the folder, the space needed (when known)
and the space free; scripts exit with EXIT_DISK_FULL.
"""

import contextlib
import errno
import os
import shutil
import tempfile

import numpy as np
import simplejson

EXIT_DISK_FULL = 5  # a checkpoint, store or result did not fit on its disk (the message says where)
# no space, over quota, over the file-size limit (ulimit -f): what a write into a full disk meets
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
OVERWRITE_HINT = "pass --overwrite to replace it, or choose another path"


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


_SHORT_WRITE = " requested and "


def _is_disk_full(error):
    """True for DISK_FULL_ERRNOS anywhere in the chain, for torch's zip writer failing with
    'unexpected pos' (how torch.save reports a short write) and for numpy's 'N requested and M
    written' (how ndarray.tofile, under np.save, reports one, with no errno)."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(error, OSError) and error.errno is None and _SHORT_WRITE in str(error):
            return True
        if isinstance(error, RuntimeError) and "unexpected pos" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_folder(folder):
    """os.makedirs(folder, exist_ok=True), where a file on the way is NotADirectoryError naming it
    (makedirs says 'File exists' for a file at folder itself)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), folder)
    os.makedirs(folder, exist_ok=True)


def _temporary_file(path):
    """A new empty file beside path (its folder made when missing); an error names path's folder,
    not the temporary name."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        make_folder(folder)
        handle, tmp = tempfile.mkstemp(
            prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder
        )
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise _disk_full(folder, os.path.basename(path)) from None
        raise type(error)(error.errno, error.strerror, folder) from None
    os.close(handle)
    return tmp


def _disk_full(folder, name):
    free = _megabytes(shutil.disk_usage(folder).free) if os.path.isdir(folder) else "?"
    return DiskFullError(
        errno.ENOSPC,
        f"disk full in {folder} while writing {name} ({free} free, or the "
        "file-size limit of ulimit -f reached); free some space or choose another folder",
    )


def _publish(tmp, path):
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        os.replace(tmp, path)
    except OSError as error:  # name the output, not the temporary file
        raise type(error)(error.errno, error.strerror, path) from None


def _discard(temporaries, paths, error):
    """Remove the temporary files of paths; raise error, as DiskFullError when it is a full disk."""
    for tmp in temporaries:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    if isinstance(error, DiskFullError) or not _is_disk_full(error):
        raise error
    names = ", ".join(os.path.basename(path) for path in paths)
    raise _disk_full(os.path.dirname(os.path.abspath(paths[0])), names) from None


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error
    removed. The file gets the umask's mode (mkstemp alone would leave it 0600)."""
    tmp = _temporary_file(path)
    try:
        yield tmp
        _publish(tmp, path)
    except BaseException as error:
        _discard([tmp], [path], error)


@contextlib.contextmanager
def atomic_paths(*paths):
    """atomic_path for files that belong together (a checkpoint and its config): yield one
    temporary path per path; the renames happen only after every file was written, so a failed
    write leaves all of them as they were."""
    temporaries = []
    try:
        temporaries.extend(_temporary_file(path) for path in paths)
        yield list(temporaries)
        for tmp, path in zip(temporaries, paths):
            _publish(tmp, path)
    except BaseException as error:
        if not temporaries:
            raise
        _discard(temporaries, paths, error)


def refuse_existing(path, overwrite=False, hint=OVERWRITE_HINT):
    """Raise FileExistsError naming path when it is a file or a folder that is not empty, unless
    overwrite (an empty folder is no output to lose)."""
    path = str(path)
    if overwrite or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    raise FileExistsError(f"{path} exists; {hint}")


def refuse_existing_file(path, overwrite=False, hint=OVERWRITE_HINT):
    """refuse_existing for an output that is one file: a folder at its path is refused too."""
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR, "is a folder, expected a file path (remove it or choose another)", path
        )
    refuse_existing(path, overwrite, hint)


def check_writable(folder):
    """Make folder and create and remove a file in it, so a read-only or misspelt output folder
    fails in one line before a long job, not after it."""
    os.remove(_temporary_file(os.path.join(folder, ".write-check")))


@contextlib.contextmanager
def staging_folder(out_dir, overwrite=False, hint=OVERWRITE_HINT):
    """A fresh folder beside ``out_dir`` that replaces it only when everything was written; an
    out_dir that exists and is not empty is refused (FileExistsError) unless overwrite."""
    out_dir = os.path.abspath(out_dir)
    refuse_existing(out_dir, overwrite, hint)
    parent, name = os.path.split(out_dir)
    try:
        make_folder(parent)
        staging = tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent)
    except OSError as error:
        raise type(error)(error.errno, error.strerror, parent) from None
    try:
        yield staging
        os.chmod(staging, 0o777 & ~_umask())
        if os.path.lexists(out_dir):
            retired = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.replace(out_dir, os.path.join(retired, "data"))
            os.replace(staging, out_dir)
            shutil.rmtree(retired)
        else:
            os.replace(staging, out_dir)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, DiskFullError) or not _is_disk_full(error):
            raise
        raise _disk_full(parent, name) from None


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
