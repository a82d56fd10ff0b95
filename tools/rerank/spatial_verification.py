"""Spatial verification: count geometrically consistent local matches and re-rank a global shortlist
by them.

    inliers = compute_num_inliers(
        query_locations, query_descriptors, index_locations, index_descriptors
    )
    reranked, inliers = rerank_with_spatial_verification(
        shortlists, query_local, index_local, options
    )

Geometry (``options.method``), all seeded so that a run repeats exactly:
- ``degensac``: homography by DEGENSAC (pydegensac.findHomography(px_th, conf, max_iters, seed)),
  the seed project's choice; defaults 20 px, confidence 1.0, 1000 iterations.
- ``affine``: the official DELG re-ranking's RANSAC (skimage.measure.ransac with an
  AffineTransform from the index points to the query points, min_samples 3, residual threshold,
  max_trials): tools.rerank.affine_ransac, our vectorised NumPy version of the same procedure with
  a fixed seed (scikit-image is not a dependency). cv2.estimateAffine2D was not used: it adds
  Levenberg-Marquardt refinement and confidence-driven early stops and runs on OpenCV's internal
  generator, so it is a different estimator that one cannot seed per call.
- ``magsac``: homography by OpenCV's USAC MAGSAC++ (cv2.findHomography with cv2.USAC_MAGSAC), the
  fallback; cv2.setRNGSeed(seed) before each call.
Fewer than 4 putative matches count 0; a fit that fails or degenerates counts 0 and never raises.
"""

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing

import numpy as np
import torch

from core.hardware import check_precision
from core.progress import progress_bar
from tools.rerank.affine_ransac import affine_inlier_mask
from tools.rerank.matching import putative_matches

METHODS = ("degensac", "affine", "magsac")
MIN_MATCHES = 4
PAIRS_PER_TASK = 16  # pairs a worker fits per task


@dataclasses.dataclass(frozen=True)
class VerificationOptions:
    """Matching and geometry settings (the defaults are the task's: NN under 1.0, DEGENSAC 20 px,
    1.0, 1000)."""

    method: str = "degensac"
    # nearest-neighbour descriptor distance bound (official 1.0, seed 0.99)
    max_distance: float = 1.0
    ratio_test: float = 0.0  # Lowe ratio; 0 disables
    mutual: bool = False  # keep only mutual nearest neighbours
    inlier_threshold: float = 20.0  # residual in pixels
    confidence: float = 1.0  # RANSAC confidence (degensac, magsac)
    max_iters: int = 1000  # RANSAC iterations / trials
    seed: int = 0
    # the matcher's candidate product: auto (by the device, core.hardware), float32 or bfloat16
    match_precision: str = "auto"

    def __post_init__(self):
        check_precision(self.match_precision)
        if self.method not in METHODS:
            raise ValueError(
                f"spatial verification method {self.method!r} is not one of {', '.join(METHODS)}"
            )
        if self.max_distance <= 0 or self.inlier_threshold <= 0 or self.max_iters < 1:
            raise ValueError(
                "max_distance and inlier_threshold must be positive and max_iters at least 1"
            )
        if not 0 < self.confidence <= 1:
            raise ValueError(f"confidence must lie in (0, 1], got {self.confidence}")


def options_from_cfg(cfg):
    """VerificationOptions from the SV section of the config."""
    sv = cfg.SV
    return VerificationOptions(
        method=sv.METHOD,
        max_distance=sv.MATCH_THRESHOLD,
        ratio_test=sv.RATIO_TEST,
        mutual=sv.MUTUAL,
        inlier_threshold=sv.INLIER_THRESHOLD,
        confidence=sv.CONFIDENCE,
        max_iters=sv.MAX_ITERS,
        seed=sv.SEED,
        match_precision=sv.MATCH_PRECISION,
    )


# ----------------------------------------------------------------------------------------- geometry
def _degensac_inliers(source, target, options):
    import pydegensac

    try:
        _, mask = pydegensac.findHomography(source, target, options.inlier_threshold,
                                            options.confidence, options.max_iters,
                                            seed=options.seed)  # fmt: skip
    except ValueError:  # pydegensac refuses what it cannot fit (e.g. fewer than 4 distinct points)
        return None
    mask = np.asarray(mask, dtype=bool).reshape(-1) if mask is not None else None
    return mask if mask is not None and len(mask) == len(source) else None


def _magsac_inliers(source, target, options):
    import cv2

    cv2.setRNGSeed(options.seed)
    try:
        source, target = source.astype(np.float32), target.astype(np.float32)
        model, mask = cv2.findHomography(source, target, cv2.USAC_MAGSAC, options.inlier_threshold,
                                         maxIters=options.max_iters,
                                         confidence=options.confidence)  # fmt: skip
    except cv2.error:
        return None
    return None if model is None or mask is None else np.asarray(mask, dtype=bool).reshape(-1)


def _affine_inliers(source, target, options):
    """Official direction: the model maps the index points (target here) to the query points."""
    return affine_inlier_mask(
        target, source, options.inlier_threshold, options.max_iters, options.seed
    )


_GEOMETRY = {"degensac": _degensac_inliers, "affine": _affine_inliers, "magsac": _magsac_inliers}


def inlier_mask(query_points, index_points, options=VerificationOptions()):
    """Boolean mask [n] of the correspondences [n, 2] -> [n, 2] that fit the configured model (all
    False when there are fewer than 4 or no model could be fitted)."""
    source = np.asarray(query_points, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(index_points, dtype=np.float64).reshape(-1, 2)
    if len(source) != len(target):
        raise ValueError(f"{len(source)} query points but {len(target)} index points")
    mask = None
    if len(source) >= MIN_MATCHES and np.isfinite(source).all() and np.isfinite(target).all():
        try:
            mask = _GEOMETRY[options.method](source, target, options)
        except np.linalg.LinAlgError:
            mask = None
    return mask if mask is not None else np.zeros(len(source), dtype=bool)


def count_inliers(query_points, index_points, options=VerificationOptions()):
    """Number of inliers of the configured model; 0 below 4 correspondences or when no model
    fits."""
    return int(np.count_nonzero(inlier_mask(query_points, index_points, options)))


def compute_num_inliers(
    query_locations, query_descriptors, index_locations, index_descriptors, device="cpu", **options
):
    """Inliers between two images' local features (locations [n, 2], descriptors [n, d]).

    options: the VerificationOptions fields (method, max_distance, ratio_test, mutual,
    inlier_threshold, confidence, max_iters, seed, match_precision); defaults: NN under 1.0, no
    ratio test, DEGENSAC 20 px, 1.0, 1000 iterations.
    """
    options = VerificationOptions(**options)
    ((query_rows, index_rows),) = _matches(query_descriptors, [index_descriptors], options, device)
    return count_inliers(
        np.asarray(query_locations)[query_rows], np.asarray(index_locations)[index_rows], options
    )


# --------------------------------------------------------------------------------------- re-ranking
def _fit_task(correspondences, options):
    return [count_inliers(source, target, options) for source, target in correspondences]


def _init_worker():
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _matches(query_descriptors, index_descriptor_list, options, device):
    """putative_matches under the options' matching rule and precision."""
    return putative_matches(query_descriptors, index_descriptor_list, options.max_distance,
                            options.ratio_test, options.mutual, device,
                            options.match_precision)  # fmt: skip


def _correspondences(query_features, index_features, options, device):
    """(query points, index points) of the putative matches of one query with each of its index
    images."""
    query_locations, query_descriptors = query_features
    index_descriptors = [descriptors for _, descriptors in index_features]
    matches = _matches(query_descriptors, index_descriptors, options, device)
    return [
        (
            np.asarray(query_locations, np.float64)[query_rows],
            np.asarray(locations, np.float64)[index_rows],
        )
        for (query_rows, index_rows), (locations, _) in zip(matches, index_features)
    ]


def verify_pairs(pairs_by_query, query_local, index_local, options=VerificationOptions(),
                 num_workers=0, device="cpu", progress=True):  # fmt: skip
    """Inlier counts {(query, index): inliers} for every pair; each query's matches come from one
    batched product.

    pairs_by_query: {query: index images to verify}; query_local(q) / index_local(i) return
    (locations [n, 2], descriptors [n, d]). num_workers > 0 fits the geometry in that many
    processes while matching goes on.
    """
    total = sum(len(indices) for indices in pairs_by_query.values())
    inliers, pending = {}, {}
    bar = progress_bar(
        total, f"spatial verification ({options.method})", "pair", progress, mininterval=1.0
    )
    with contextlib.closing(bar), _fitting_pool(num_workers, device) as executor:
        for query, indices in pairs_by_query.items():
            indices = [int(index) for index in indices]
            if not indices:
                continue
            index_features = [index_local(index) for index in indices]
            found = _correspondences(query_local(query), index_features, options, device)
            for keys, task in _tasks(query, indices, found):
                if executor is None:
                    _record(inliers, bar, keys, _fit_task(task, options))
                else:
                    pending[executor.submit(_fit_task, task, options)] = keys
            pending = _collect(pending, inliers, bar, wait=len(pending) > 8 * max(num_workers, 1))
        _collect(pending, inliers, bar, wait=True, everything=True)
    return inliers


@contextlib.contextmanager
def _fitting_pool(num_workers, device):
    """The processes that fit the geometry (None: this one fits it), and meanwhile one thread for
    the products on a CPU; the thread count is restored afterwards."""
    executor, threads = None, torch.get_num_threads()
    if num_workers > 0:
        executor = concurrent.futures.ProcessPoolExecutor(
            num_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker
        )
    if torch.device(device).type == "cpu":
        # Parallelism comes from the worker processes, not from threads inside these small products:
        # with a busy core, every multi-threaded op waits a scheduler slice at its barrier (4x
        # slower on 2 shared cores).
        torch.set_num_threads(1)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        torch.set_num_threads(threads)


def _tasks(query, indices, found):
    """(pair keys, their correspondences) in groups of PAIRS_PER_TASK pairs."""
    for start in range(0, len(indices), PAIRS_PER_TASK):
        stop = start + PAIRS_PER_TASK
        yield [(query, index) for index in indices[start:stop]], found[start:stop]


def _record(inliers, bar, keys, counts):
    inliers.update(zip(keys, counts))
    bar.update(len(keys))


def _collect(pending, inliers, bar, wait, everything=False):
    """Record finished tasks; with wait, block until at least one (or, with everything, all)
    finished."""
    if not pending:
        return pending
    if wait:
        when = (
            concurrent.futures.ALL_COMPLETED if everything else concurrent.futures.FIRST_COMPLETED
        )
        concurrent.futures.wait(pending, return_when=when)
    for future in [future for future in pending if future.done()]:
        _record(inliers, bar, pending.pop(future), future.result())
    return pending


def rerank_with_spatial_verification(
    shortlists,
    query_local,
    index_local,
    options=VerificationOptions(),
    num_workers=0,
    device="cpu",
    progress=True,
):
    """Re-rank shortlists by (inliers, global score), descending, verifying each (query, image) pair
    once.

    shortlists: {protocol: per query, index images in global-ranking order (junk of the protocol
    already left out)}. The union over protocols is verified once. Returns ({protocol: per query,
    re-ranked images}, {(query, image): inliers}). Images with equal inlier counts keep their global
    order (stable sort).
    """
    pairs_by_query = {}
    for per_query in shortlists.values():
        for query, indices in enumerate(per_query):
            pairs_by_query.setdefault(query, set()).update(int(index) for index in indices)
    pairs_by_query = {query: sorted(indices) for query, indices in sorted(pairs_by_query.items())}
    inliers = verify_pairs(
        pairs_by_query, query_local, index_local, options, num_workers, device, progress
    )
    reranked = {}
    for protocol, per_query in shortlists.items():
        reranked[protocol] = []
        for query, indices in enumerate(per_query):
            indices = np.asarray(indices, dtype=np.int64)
            counts = np.array([inliers[(query, int(index))] for index in indices], dtype=np.int64)
            reranked[protocol].append(indices[np.argsort(-counts, kind="stable")])
    return reranked, inliers
