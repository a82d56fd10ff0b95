"""ASMK (aggregated selective match kernels) over DELG local features, built on the ``asmk``
package.

Search by local features alone (``asmk``) or re-order a global shortlist by ASMK similarity
(``asmk_rerank``)::

    params = AsmkParams(codebook_size=256)  # or params_from_cfg(cfg)
    index = AsmkIndex.build(
        db_descriptors, db_image_ids, params, cache_dir="output/asmk", num_images=len(db)
    )
    ranks, scores = index.search(q_descriptors, q_image_ids, num_queries=len(queries))  # n_q x n_db
    order, asmk_scores = index.rerank(shortlist, q_descriptors, q_image_ids)  # [n_q, k]

Descriptors come flat, as in the feature store: ``descriptors`` [M, d] (float16 or float32) and
``image_ids`` [M], non-decreasing, so that each image owns one contiguous block of rows (the
package's convention). Images without local features simply own no rows; ``num_images`` /
``num_queries`` say how many images there are in all.

The package keeps its cache as pickles, which this project never writes, so it is used without
``cache_path``: the codebook centroids are stored as ``.npy``, and the inverted file as arrays
(tools/rerank/asmk_ivf.py), both as derived data (datasets/derived.py):
``<cache_dir>/codebook-<key>/`` and ``<cache_dir>/ivf-<key>/``, validated before use, published by
one rename, and rebuilt with one warning when damaged.
"""

import dataclasses
import hashlib
import logging
import os

import numpy as np
from asmk import ASMKMethod
from asmk import codebook as asmk_codebook
from asmk import index as asmk_index
from asmk import kernel as asmk_kernel

from core.io import write_npy
from datasets.derived import derived_folder, load_validated, publish
from tools.rerank.asmk_ivf import (
    CACHE_FORMAT,
    build_ivf_arrays,
    ivf_from_arrays,
    load_ivf_arrays,
    save_ivf_arrays,
)

logger = logging.getLogger(__name__)

_HASH_ROWS = 1 << 16  # descriptor rows hashed at a time


@dataclasses.dataclass(frozen=True)
class AsmkParams:
    """ASMK settings; the defaults are the usual ones for real data (see docs/asmk.md)."""

    codebook_size: int = 65536  # visual words
    train_features: int = 1_000_000  # at most this many database descriptors train the codebook
    binary: bool = True  # binarised aggregated residuals (Hamming similarity)
    multiple_assignment_db: int = 1  # visual words per database descriptor
    multiple_assignment_query: int = 5  # visual words per query descriptor
    alpha: float = 3.0  # selectivity power of the match kernel
    similarity_threshold: float = 0.0  # residual similarities below it count as no match
    use_idf: bool = False  # idf weighting of visual words (off in the ASMK/HOW papers)

    def package_params(self):
        """The nested parameter dict of ``asmk.ASMKMethod`` (layout of the package's example YAML
        files)."""
        return {
            "index": {"gpu_id": None},
            "train_codebook": {"codebook": {"size": int(self.codebook_size)}},
            "build_ivf": {
                "kernel": {"binary": bool(self.binary)},
                "ivf": {"use_idf": bool(self.use_idf)},
                "quantize": {"multiple_assignment": int(self.multiple_assignment_db)},
                "aggregate": {},
            },
            "query_ivf": self.query_step_params(),
        }

    def query_step_params(self):
        return {
            "quantize": {"multiple_assignment": int(self.multiple_assignment_query)},
            "aggregate": {},
            "search": {"topk": None},
            "similarity": {
                "similarity_threshold": float(self.similarity_threshold),
                "alpha": float(self.alpha),
            },
        }


def params_from_cfg(cfg):
    """AsmkParams from the ``ASMK.*`` config keys."""
    asmk_cfg = cfg.ASMK
    return AsmkParams(
        codebook_size=int(asmk_cfg.CODEBOOK_SIZE),
        train_features=int(asmk_cfg.TRAIN_FEATURES),
        binary=bool(asmk_cfg.BINARY),
        multiple_assignment_db=int(asmk_cfg.MULTIPLE_ASSIGNMENT_DB),
        multiple_assignment_query=int(asmk_cfg.MULTIPLE_ASSIGNMENT_QUERY),
        alpha=float(asmk_cfg.ALPHA),
        similarity_threshold=float(asmk_cfg.SIMILARITY_THRESHOLD),
    )


def cache_dir_from_cfg(cfg):
    """``ASMK.CACHE_DIR``, or ``OUT_DIR/asmk`` when it is empty."""
    return cfg.ASMK.CACHE_DIR or os.path.join(cfg.OUT_DIR, "asmk")


def flatten_local(per_image_descriptors):
    """A list of per-image [n_i, d] arrays -> (descriptors [M, d], image_ids [M] int64, num_images).

    The dtype is kept (float16 from the store stays float16, half the memory); blocks become float32
    when used.
    """
    arrays = [np.asarray(array) for array in per_image_descriptors]
    dim = max((array.shape[1] for array in arrays if array.ndim == 2 and len(array)), default=0)
    counts = np.array([len(array) for array in arrays], dtype=np.int64)
    parts = [array.reshape(-1, dim) for array in arrays if len(array)]
    descriptors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
    return descriptors, np.repeat(np.arange(len(arrays), dtype=np.int64), counts), len(arrays)


def local_descriptors_of(store, indices=None):
    """Local descriptors of a feature store (all images, or ``indices`` in that order), in
    ``flatten_local`` form."""
    if indices is None:
        # the whole store: one memory-mapped read instead of a copy per image
        rows, offsets = store.local_rows()
        counts = np.diff(np.asarray(offsets))
        image_ids = np.repeat(np.arange(len(store), dtype=np.int64), counts)
        return np.asarray(rows["descriptors"]), image_ids, len(store)
    return flatten_local([store.local_at(int(index))["descriptors"] for index in indices])


def index_from_cfg(cfg, store):
    """The AsmkIndex of a database store with the ``ASMK.*`` keys (codebook and inverted file read
    from the cache when they are there)."""
    descriptors, image_ids, num_images = local_descriptors_of(store)
    params, cache_dir = params_from_cfg(cfg), cache_dir_from_cfg(cfg)
    return AsmkIndex.build(descriptors, image_ids, params, cache_dir, cfg.ASMK.SEED, num_images)


class AsmkIndex:
    """A trained codebook and the inverted file of one database; create it with ``AsmkIndex.build``.

    ``codebook_trained`` and ``ivf_built`` say whether this call computed them (False: read from the
    cache).
    """

    def __init__(self, method, params, num_images, dim, codebook_trained, ivf_built):
        self.method = method
        self.params = params
        self.num_images = int(num_images)
        self.dim = int(dim)
        self.codebook_trained = codebook_trained
        self.ivf_built = ivf_built

    @classmethod
    def build(cls, database_descriptors, database_image_ids, params, cache_dir=None, seed=0,
              num_images=None):  # fmt: skip
        """Train the codebook (on at most ``params.train_features`` sampled descriptors) and build
        the inverted file.

        With ``cache_dir`` both are read from there when the database features, params and seed
        match the cached ones (a hash of all of them names the folders), and published there
        otherwise (datasets/derived.py).
        """
        descriptors, image_ids, num_images = _check_features(
            database_descriptors, database_image_ids, num_images, "database"
        )
        if len(descriptors) < params.codebook_size:
            raise ValueError(
                f"ASMK.CODEBOOK_SIZE={params.codebook_size} needs at least as many database local "
                f"descriptors to train on; the database has {len(descriptors)}"
            )
        identities = _cache_identities(descriptors, image_ids, num_images, params, seed)
        codebook_folder, ivf_folder = (
            derived_folder(cache_dir, name, identity) if cache_dir else None
            for name, identity in identities.items()
        )
        centroids = _load_centroids(codebook_folder, identities["codebook"], params,
                                    descriptors.shape[1])  # fmt: skip
        codebook_trained = centroids is None
        if codebook_trained:
            centroids = _trained_centroids(descriptors, params, seed, codebook_folder,
                                           identities["codebook"])  # fmt: skip
        codebook = _codebook(centroids, params)
        kernel = asmk_kernel.ASMKKernel(codebook, binary=params.binary)
        arrays = load_ivf_arrays(ivf_folder, identities["ivf"], params, num_images)
        ivf_built = arrays is None
        if ivf_built:
            arrays = build_ivf_arrays(codebook, kernel, descriptors, image_ids, num_images, params)
            if ivf_folder:
                about = {"codebook": os.path.basename(codebook_folder)}
                arrays = save_ivf_arrays(ivf_folder, identities["ivf"], arrays, about)
        ivf = ivf_from_arrays(arrays, num_images, params.use_idf)
        logger.info(
            "ASMK: codebook %s, inverted file %s (%d images, %d entries)",
            "trained" if codebook_trained else f"read from {codebook_folder}",
            "built" if ivf_built else f"read from {ivf_folder}",
            num_images, int(ivf.counts.sum()),
        )  # fmt: skip
        method = ASMKMethod(
            params.package_params(), {}, codebook=codebook, kernel=kernel, inverted_file=ivf
        )
        return cls(method, params, num_images, descriptors.shape[1], codebook_trained, ivf_built)

    def score_matrix(self, query_descriptors, query_image_ids, num_queries=None):
        """ASMK similarity of every query to every database image, [n_q, n_db] float32 in database
        order.

        Queries without local features score 0 everywhere.
        """
        descriptors, image_ids, num_queries = _check_features(
            query_descriptors, query_image_ids, num_queries, "query"
        )
        scores = np.zeros((num_queries, self.num_images), dtype=np.float32)
        if len(descriptors) == 0:
            return scores
        if descriptors.shape[1] != self.dim:
            raise ValueError(
                f"query local descriptors have {descriptors.shape[1]} dimensions, the ASMK "
                f"codebook {self.dim}: were queries and database extracted with the same model?"
            )
        _, images, ranks, ranked_scores = self.method.query_ivf(
            np.asarray(descriptors, dtype=np.float32),
            image_ids,
            step_params=self.params.query_step_params(),
        )
        rows = scores[images]
        np.put_along_axis(rows, ranks.astype(np.int64), ranked_scores.astype(np.float32), axis=1)
        scores[images] = rows
        return scores

    def search(self, query_descriptors, query_image_ids, topk=None, num_queries=None):
        """The ``asmk`` method: (ranks [n_q, n_db or topk] database indices, best first; their
        scores)."""
        scores = self.score_matrix(query_descriptors, query_image_ids, num_queries)
        ranks = np.argsort(-scores, axis=1, kind="stable")[:, :topk]  # ties keep database order
        return ranks, np.take_along_axis(scores, ranks, axis=1)

    def rerank(self, shortlist, query_descriptors, query_image_ids):
        """The ``asmk_rerank`` method: re-order each query's shortlist [n_q, k] (database indices)
        by ASMK score.

        Returns (the re-ordered shortlist [n_q, k], its ASMK scores); ties keep the shortlist's
        order.
        """
        shortlist = np.asarray(shortlist, dtype=np.int64)
        if shortlist.ndim != 2:
            raise ValueError(
                f"shortlist must be [n_queries, k] database indices, got shape {shortlist.shape}"
            )
        if shortlist.size and (shortlist.min() < 0 or shortlist.max() >= self.num_images):
            raise ValueError(f"shortlist holds database indices outside 0..{self.num_images - 1}")
        scores = self.score_matrix(query_descriptors, query_image_ids, len(shortlist))
        shortlist_scores = np.take_along_axis(scores, shortlist, axis=1)
        order = np.argsort(-shortlist_scores, axis=1, kind="stable")
        return np.take_along_axis(shortlist, order, axis=1), np.take_along_axis(
            shortlist_scores, order, axis=1
        )


def _check_features(descriptors, image_ids, num_images, what):
    descriptors = (
        np.asarray(descriptors) if not isinstance(descriptors, np.ndarray) else descriptors
    )
    image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
    if descriptors.ndim != 2 or len(descriptors) != len(image_ids):
        raise ValueError(
            f"{what} local features: expected descriptors [M, d] and image ids [M], got shapes "
            f"{descriptors.shape} and {image_ids.shape}"
        )
    if len(image_ids) and (image_ids[0] < 0 or np.any(np.diff(image_ids) < 0)):
        raise ValueError(
            f"{what} image ids must be non-negative and non-decreasing (one contiguous block of "
            "rows per image)"
        )
    needed = int(image_ids[-1]) + 1 if len(image_ids) else 0
    num_images = needed if num_images is None else int(num_images)
    if num_images < needed:
        raise ValueError(
            f"{what} image ids go up to {needed - 1}, but there are only {num_images} images"
        )
    return descriptors, image_ids, num_images


def _features_hash(descriptors, image_ids, num_images):
    digest = hashlib.sha256(f"{descriptors.dtype.str}{descriptors.shape}{num_images}".encode())
    for start in range(0, len(descriptors), _HASH_ROWS):
        digest.update(np.ascontiguousarray(descriptors[start : start + _HASH_ROWS]).tobytes())
    digest.update(np.ascontiguousarray(image_ids).tobytes())
    return digest.hexdigest()


def _train_codebook(descriptors, params, seed):
    rows = np.arange(len(descriptors))
    if len(rows) > params.train_features:
        rows = np.sort(
            np.random.default_rng(seed).choice(len(rows), params.train_features, replace=False)
        )
    sample = np.asarray(descriptors[rows], dtype=np.float32)
    logger.info(
        "ASMK: training a %d-word codebook on %d descriptors", params.codebook_size, len(sample)
    )
    return ASMKMethod.initialize_untrained(params.package_params()).train_codebook(sample).codebook


def _load_centroids(folder, identity, params, dim):
    """The cached centroids [size, dim] float32, or None (no cache, none yet, or damaged)."""
    if not folder:
        return None
    shapes = {"centroids": ((params.codebook_size, dim), np.float32)}
    arrays = load_validated(folder, identity, shapes)
    return None if arrays is None else np.array(arrays["centroids"])  # in memory, not mapped


def _cache_identities(descriptors, image_ids, num_images, params, seed):
    """{"codebook": what names the codebook's cache folder, "ivf": the inverted file's}."""
    codebook = {
        "format": CACHE_FORMAT,
        "features": _features_hash(descriptors, image_ids, num_images),
        "size": params.codebook_size,
        "train_rows": min(len(descriptors), params.train_features),
        "seed": seed,
    }
    ivf = {
        "codebook": codebook,
        "binary": params.binary,
        "use_idf": params.use_idf,
        "multiple_assignment": params.multiple_assignment_db,
        "num_images": num_images,
    }
    return {"codebook": codebook, "ivf": ivf}


def _trained_centroids(descriptors, params, seed, folder, identity):
    """A codebook trained now, published in folder when there is one (the published copy wins)."""
    centroids = _train_codebook(descriptors, params, seed).centroids
    if not folder:
        return centroids

    def write(tmp):
        write_npy(os.path.join(tmp, "centroids.npy"), centroids)

    return np.array(publish(folder, identity, write)["centroids"])


def _codebook(centroids, params):
    codebook = asmk_codebook.Codebook(
        asmk_index.initialize_index(gpu_id=None), size=params.codebook_size
    )
    codebook.index(np.ascontiguousarray(centroids))
    return codebook
