"""One rule for data derived from a feature store and kept beside it: the alpha-DBA database, the
ASMK codebook and inverted file, compact codes, anything later. NumPy arrays and JSON, no pickles.

    folder = derived_folder(root, "dba", identity)   # root/dba-<16 hex digits of identity>
    arrays = load_validated(folder, identity)        # {name: array, memory-mapped} or None
    arrays = publish(folder, identity, write)        # write(tmp) writes <name>.npy files
    with PartialState(folder) as partial:            # resumable work shared by several runs
        ...                                          # partial.path: <folder>.partial

- Keyed: ``identity`` is a JSON dict of everything that shapes the result: the store's content (the
  sha256 its meta.json records, FeatureStore.array_sha256), every parameter, a format version. The
  folder's name hashes it, and its meta.json repeats it.
- Validated before use: meta.json names the same identity, every array it lists has the recorded
  shape and dtype and matches the digest recorded at write (size and sampled sha256,
  datasets/digests.py); ``shapes`` adds what the caller expects.
- Published whole: written into a private temporary folder beside it, meta.json last, then renamed
  into place by one os.rename. An existing folder is never replaced: when two processes build the
  same data, the first rename wins and the other drops its own copy and uses the winner's. Private
  folders are named with the host and process id; those of dead processes of this host (killed
  while publishing) are removed by the next publish.
- Damaged (a check fails): one warning line naming the folder; it is moved aside and removed, and
  the caller builds it again.
- Resumable partial state: ``<folder>.partial``, used under a shared lock on ``<folder>.lock``
  (flock; the system releases it when a process dies, kill -9 included). It is removed only once
  the folder is published, by a process that then gets the lock exclusively: never under another
  process still working in it.
"""

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile

import numpy as np

from core.io import make_folder, read_json, write_json
from datasets.digests import digest_problem, file_digest

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class DamagedError(ValueError):
    """Derived data that fail a check; the message says which file and what."""


def canonical(identity):
    """The identity as JSON gives it back (tuples become lists, keys sorted)."""
    return json.loads(json.dumps(identity, sort_keys=True))


def derived_folder(root, name, identity):
    """``root/<name>-<16 hex digits>``, the digits a sha256 of the identity."""
    text = json.dumps(canonical(identity), sort_keys=True)
    return os.path.join(root, f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}")


def load_validated(folder, identity, shapes=None):
    """The folder's arrays ({name: array}, memory-mapped) once every check passes; None when there
    is no such folder, or when it was damaged (then it is logged and removed).

    shapes: {name: (shape, dtype)} the caller needs, checked besides the recorded ones."""
    if not os.path.isdir(folder):
        return None
    try:
        return validated_arrays(folder, identity, shapes or {})
    except DamagedError as error:
        logger.warning("derived data %s: %s; building it again", folder, error)
        discard(folder)
        return None


def validated_arrays(folder, identity, shapes):
    try:
        meta = read_json(os.path.join(folder, "meta.json"))
    except (OSError, ValueError) as error:
        raise DamagedError(f"meta.json is missing or unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("identity") != canonical(identity):
        raise DamagedError("meta.json does not record the identity its name stands for")
    records = meta.get("arrays")
    if not isinstance(records, dict) or not records or not set(shapes) <= set(records):
        raise DamagedError(f"meta.json lists the arrays {records!r}, expected {sorted(shapes)}")
    return {
        name: _checked_array(folder, name, record, shapes.get(name))
        for name, record in records.items()
    }


def _checked_array(folder, name, record, expected):
    path = os.path.join(folder, f"{name}.npy")
    if not (
        isinstance(record, dict)
        and isinstance(record.get("shape"), list)
        and isinstance(record.get("dtype"), str)
    ):
        raise DamagedError(f"meta.json's record of {name}.npy is not a shape, dtype and digest")
    problem = digest_problem(path, record.get("digest"))
    if problem:
        raise DamagedError(f"{name}.npy: {problem}")
    try:
        array = np.load(path, mmap_mode="r" if 0 not in record["shape"] else None)
    except (OSError, ValueError) as error:
        raise DamagedError(f"{name}.npy is unreadable ({error})") from None
    found = (list(array.shape), array.dtype.str)
    wanted = [(record["shape"], record["dtype"])]
    if expected is not None:
        wanted.append(([int(size) for size in expected[0]], np.dtype(expected[1]).str))
    for shape, dtype in wanted:
        if found != (shape, dtype):
            raise DamagedError(f"{name}.npy holds {found[0]} {found[1]}, expected {shape} {dtype}")
    return array


def _private_prefix(path):
    """The name prefix of this process's private folders beside ``path``: host and pid, so that
    those of a process that died (kill -9 while publishing) are recognised and removed."""
    return f".{os.path.basename(path)}.tmp-{socket.gethostname()}-{os.getpid()}-"


def remove_abandoned(folder):
    """Remove the private folders beside ``folder`` (its own and its partial state's) left by dead
    processes of this host; those of other hosts stay (their processes cannot be asked)."""
    root, base = os.path.split(os.path.abspath(folder))
    mark = f".tmp-{socket.gethostname()}-"
    for entry in os.listdir(root) if os.path.isdir(root) else ():
        if entry.startswith(f".{base}.") and mark in entry:
            pid = entry.split(mark, 1)[1].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def discard(folder):
    """Move a folder aside (one rename, so no reader sees it half removed) and remove it."""
    root = os.path.dirname(os.path.abspath(folder))
    trash = os.path.join(root, _private_prefix(folder) + os.urandom(4).hex())
    try:
        os.rename(folder, trash)
    except FileNotFoundError:
        return  # another process discarded it first
    shutil.rmtree(trash, ignore_errors=True)


def publish(folder, identity, write, about=None, shapes=None):
    """Build derived data in a private folder and publish them at ``folder`` by one rename, unless
    another process published them first (its copy is then used). ``write(tmp)`` writes the arrays
    as tmp/<name>.npy; ``about`` adds descriptive keys to meta.json. Returns load_validated's
    arrays."""
    root = os.path.dirname(os.path.abspath(folder))
    make_folder(root)
    remove_abandoned(folder)
    tmp = tempfile.mkdtemp(prefix=_private_prefix(folder), dir=root)
    try:
        write(tmp)
        _write_meta(tmp, identity, about)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide it from other users
        for _ in range(2):
            if _rename_first(tmp, folder):
                return load_validated(folder, identity, shapes)
            arrays = load_validated(folder, identity, shapes)
            if arrays is not None:
                logger.info("derived data %s: another process published it first; using it", folder)
                return arrays
        raise OSError(errno.EEXIST, f"cannot publish derived data at {folder}", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_meta(tmp, identity, about):
    arrays = {}
    for entry in sorted(os.listdir(tmp)):
        if entry.endswith(".npy"):
            path = os.path.join(tmp, entry)
            shape, dtype = npy_header(path)
            arrays[entry[:-4]] = {
                "shape": [int(size) for size in shape],
                "dtype": dtype.str,
                "digest": file_digest(path),
            }
    meta = {"format_version": FORMAT_VERSION, **(about or {})}
    meta.update(identity=canonical(identity), arrays=arrays)
    write_json(os.path.join(tmp, "meta.json"), meta)


def npy_header(path):
    """(shape, dtype) from a .npy file's header."""
    with open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        if major == 1:
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return shape, dtype


def _rename_first(tmp, folder):
    """True when tmp became folder; False when folder exists (another writer won)."""
    try:
        os.rename(tmp, folder)
        return True
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            return False
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class PartialState:
    """``<folder>.partial``: the resumable work towards ``folder``, used under a shared flock on
    ``<folder>.lock``. Leaving removes it when ``folder`` is published and no other process holds
    the lock; otherwise (interrupted, or others still at work) it stays for them or for a resume."""

    def __init__(self, folder):
        self.folder = folder
        self.path = f"{folder}.partial"
        self._lock = None

    def __enter__(self):
        make_folder(os.path.dirname(os.path.abspath(self.folder)))
        self._lock = open(f"{self.folder}.lock", "a+")
        fcntl.flock(self._lock, fcntl.LOCK_SH)
        return self

    def __exit__(self, *exc):
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.path.isdir(self.folder) and os.path.isdir(self.path):
                    discard(self.path)
        finally:
            self._lock.close()
        return False
