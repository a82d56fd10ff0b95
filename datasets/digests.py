"""Content digests of the array files of a store or of derived data beside it: the full sha256 is
computed once, when a file is written; opening a file checks its size and a sha256 of sampled
pages, which reads about 1 MiB whatever the file's size.

    record = file_digest(path)        # {"bytes", "sha256", "sampled_sha256"}, at write
    problem = digest_problem(path, record)   # None, or what differs (size, sampled pages), at open

The sampled hash covers the whole file up to SAMPLES pages (1 MiB); a larger file is read at
SAMPLES evenly spaced pages, the first (the .npy header and the first rows) and the last included.
A file replaced by another one of the same shape (another extraction's global.npy) differs in
every page and is caught; a change of a few values elsewhere is caught only by the full hash.
"""

import hashlib
import os

PAGE = 4096
SAMPLES = 256
READ_BYTES = 1 << 24


def full_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_offsets(size):
    """Byte offsets of the sampled pages of a file of ``size`` bytes (None: the whole file)."""
    if size <= SAMPLES * PAGE:
        return None
    last = size - PAGE
    return sorted({round(last * index / (SAMPLES - 1)) for index in range(SAMPLES)})


def sampled_sha256(path):
    size = os.path.getsize(path)
    offsets = sample_offsets(size)
    if offsets is None:
        return full_sha256(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            digest.update(handle.read(PAGE))
    return digest.hexdigest()


def file_digest(path):
    """What a writer records of a file it wrote."""
    return {
        "bytes": os.path.getsize(path),
        "sha256": full_sha256(path),
        "sampled_sha256": sampled_sha256(path),
    }


def digest_problem(path, record):
    """None when the file matches its record by size and sampled pages, else what differs."""
    if not isinstance(record, dict) or "bytes" not in record or "sampled_sha256" not in record:
        return f"its recorded digest {record!r} is not a digest (bytes, sampled_sha256)"
    if not os.path.isfile(path):
        return "the file is missing"
    size = os.path.getsize(path)
    if size != record["bytes"]:
        return f"it holds {size} bytes, {record['bytes']} were written"
    if sampled_sha256(path) != record["sampled_sha256"]:
        return "its content differs from what was written (sampled sha256)"
    return None
