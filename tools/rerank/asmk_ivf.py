"""The ASMK inverted file as arrays: built from the package's quantisation and aggregation with
NumPy, stored as ``.npy`` files, and handed to the package as its IVF object.

The package's ``IVF.add`` loops in Python over every entry and its cache is a pickle; here the
inverted file is one CSR layout (entries sorted by visual word, plus word offsets) of five arrays,
which also counts trailing images without features. tests/test_asmk_search.py checks that it equals
the package's own.

    arrays = build_ivf_arrays(codebook, kernel, descriptors, image_ids, num_images, params)
    arrays = save_ivf_arrays(folder, identity, arrays, about)   # published: datasets/derived.py
    arrays = load_ivf_arrays(folder, identity, params, num_images)  # None: absent or damaged
    ivf = ivf_from_arrays(arrays, num_images, params.use_idf)

The folder is derived data beside the database (datasets/derived.py): keyed by the identity (the
codebook's, the features' hash, the kernel settings), validated against the digests recorded at
write, published by one rename (two evaluations building it at once both succeed), and a damaged
one is logged, removed and built again.
"""

import logging
import os

import numpy as np
from asmk import inverted_file as asmk_ivf

from core.io import write_npy
from datasets.derived import discard, load_validated, publish

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cache layout changes, so old caches are rebuilt
_AGGREGATE_ROWS = 1 << 19  # database descriptors quantised and aggregated at a time
_IVF_ARRAYS = ("vecs", "image_ids", "word_offsets", "norm_factor", "idf")


def aggregate_database(codebook, kernel, descriptors, image_ids, multiple_assignment):
    """Quantise and aggregate in blocks of whole images: (residuals, visual words, image ids),
    image-major."""
    parts, start = [], 0
    while start < len(descriptors):
        end = min(start + _AGGREGATE_ROWS, len(descriptors))
        # finish the last image
        end = int(np.searchsorted(image_ids, image_ids[end - 1], side="right"))
        block = np.asarray(descriptors[start:end], dtype=np.float32)
        quantized = codebook.quantize(
            block, image_ids[start:end], multiple_assignment=multiple_assignment
        )
        parts.append(kernel.aggregate(*quantized))
        start = end
    return tuple(np.concatenate(columns) for columns in zip(*parts))


def build_ivf_arrays(codebook, kernel, descriptors, image_ids, num_images, params):
    """The state ``IVF.add`` would produce, computed with array operations, in CSR layout (entries
    sorted by word)."""
    vecs, words, owners = aggregate_database(
        codebook, kernel, descriptors, image_ids, params.multiple_assignment_db
    )
    # within a word, images stay in ascending order as in IVF.add
    order = np.argsort(words, kind="stable")
    vecs, words, owners = vecs[order], words[order], owners[order].astype(np.int64)
    counts = np.bincount(words, minlength=codebook.size)
    idf = np.ones(codebook.size, dtype=np.float32)
    if params.use_idf:
        used = counts > 0
        idf[used] = np.log(num_images / counts[used]) ** 2
    return {
        "vecs": vecs,
        "image_ids": owners,
        "word_offsets": np.concatenate([[0], np.cumsum(counts)]),
        "norm_factor": np.bincount(
            owners, weights=idf[words].astype(np.float64), minlength=num_images
        ),
        "idf": idf,
    }


def ivf_from_arrays(arrays, num_images, use_idf):
    """The package's IVF object (per-word lists of entries) over the CSR arrays; the lists are
    views, not copies."""
    offsets = arrays["word_offsets"].tolist()
    lists_vecs, lists_ids = [], []
    for start, end in zip(offsets[:-1], offsets[1:]):
        lists_vecs.append(arrays["vecs"][start:end] if end > start else None)
        lists_ids.append(arrays["image_ids"][start:end] if end > start else None)
    state = {
        "norm_factor": arrays["norm_factor"],
        "n_images": int(num_images),
        "ivf_vecs": lists_vecs,
        "ivf_image_ids": lists_ids,
        "counts": np.diff(arrays["word_offsets"]).astype(np.int32),
        "idf": arrays["idf"],
        "imid_offset": 0,
    }
    return asmk_ivf.IVF.initialize_from_state(
        {"type": "IVF", "params": {"use_idf": bool(use_idf)}, "state": state}
    )


def save_ivf_arrays(folder, identity, arrays, about):
    """Publish the arrays as one .npy each (datasets/derived.py); returns the published arrays
    (another process's when it published the same folder first)."""

    def write(tmp):
        for name in _IVF_ARRAYS:
            write_npy(os.path.join(tmp, f"{name}.npy"), arrays[name])

    published = publish(folder, identity, write, about={"entries": len(arrays["vecs"]), **about})
    return {name: np.array(published[name]) for name in _IVF_ARRAYS}


def _expected_shapes(params, num_images):
    return {
        "word_offsets": ((params.codebook_size + 1,), np.int64),
        "norm_factor": ((num_images,), np.float64),
        "idf": ((params.codebook_size,), np.float32),
    }


def load_ivf_arrays(folder, identity, params, num_images):
    """The arrays in memory, or None (no folder, or a damaged one, then logged and removed)."""
    if not folder:
        return None
    arrays = load_validated(folder, identity, _expected_shapes(params, num_images))
    if arrays is None:
        return None
    arrays = {name: np.array(arrays[name]) for name in _IVF_ARRAYS}
    offsets = arrays["word_offsets"]
    if not (offsets[0] == 0 and offsets[-1] == len(arrays["vecs"]) == len(arrays["image_ids"])):
        logger.warning(
            "derived data %s: the word offsets do not cover the entries; building it again", folder
        )
        discard(folder)
        return None
    return arrays
