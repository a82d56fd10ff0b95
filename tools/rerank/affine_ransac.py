"""Affine RANSAC with the semantics of the official DELG re-ranking, vectorised over the trials.

The official re-ranking (``detect_to_retrieve/image_reranking.py``, ``MatchFeatures``) calls
``skimage.measure.ransac((index_points, query_points), AffineTransform, min_samples=3,
residual_threshold=20, max_trials=1000)`` and scores a pair by the number of inliers it returns.
This module computes the same thing without scikit-image, all trials at once:
- direction: each model maps *index* points to *query* points; residuals are Euclidean distances in
  the query image. Many query points may share one index point (their nearest neighbour): a model
  sends that index point to one place, so at most the query points near it count -- unlike a model
  fitted the other way, which may collapse all of them onto the shared point.
- hypotheses: 3 distinct putative matches drawn uniformly per trial (seeded); the affine map through
  them. A sample whose index points are (nearly) collinear or whose query points coincide has no
  model, as scikit-image's estimate fails there; the trial still counts.
- inliers: residual < threshold; the best hypothesis has the most inliers, ties broken by the
  smaller sum of squared residuals over all matches, then by the earlier trial.
- stopping: scikit-image's ``stop_probability=1`` still ends the loop after the first trial t with
  t >= ceil(log(eps) / log(1 - (k / n) ** 3)), k the best inlier count so far (eps clips the
  logarithm's arguments as scikit-image does); only the trials up to there compete.
- score: the best hypothesis' inlier count (scikit-image refits a final model on those inliers but
  returns them unchanged).
Only the random stream differs from scikit-image (``np.random.default_rng(seed)`` draws all
triplets at once), so counts agree in distribution, and exactly for the same samples.
"""

import numpy as np

MIN_SAMPLES = 3
# |det [src | 1]| below this share of the samples' squared RMS spread: collinear, no model (where
# scikit-image's normalised estimate fails as well, see tests/test_affine_official.py)
MIN_RELATIVE_DETERMINANT = 1e-7
_EPSILON = np.spacing(1)


def sample_triplets(rng, count, trials):
    """[trials, 3] distinct indices in [0, count), each triplet uniform without replacement."""
    first = rng.integers(0, count, trials)
    second = rng.integers(0, count - 1, trials)
    second += second >= first
    third = rng.integers(0, count - 2, trials)
    low, high = np.minimum(first, second), np.maximum(first, second)
    third += third >= low
    third += third >= high
    return np.stack([first, second, third], axis=1)


def affine_hypotheses(source, target, samples):
    """Affine maps [T, 3, 2] (x' = [x, y, 1] @ model) through each sample triplet, and [T] whether
    the sample has one."""
    systems = np.concatenate([source[samples], np.ones(samples.shape + (1,))], axis=2)
    centred = source[samples] - source[samples].mean(axis=1, keepdims=True)
    spread = np.mean(centred**2, axis=(1, 2))
    targets = target[samples]
    valid = np.abs(np.linalg.det(systems)) > MIN_RELATIVE_DETERMINANT * spread
    valid &= np.ptp(targets, axis=1).any(axis=1)
    models = np.zeros(samples.shape[:1] + (3, 2))
    if valid.any():
        models[valid] = np.linalg.solve(systems[valid], targets[valid])
    return models, valid


def dynamic_trials(best_counts, num_points):
    """scikit-image's trial limit for stop_probability 1 after best inlier counts [T]."""
    ratio = np.asarray(best_counts, np.float64) / num_points
    denominator = np.clip(1.0 - ratio**MIN_SAMPLES, _EPSILON, 1.0 - _EPSILON)
    limits = np.ceil(np.log(_EPSILON) / np.log(denominator))
    return np.where(np.asarray(best_counts) > 0, limits, np.inf)


def best_hypothesis(counts, squared_sums, valid, num_points):
    """Index of the hypothesis scikit-image's ransac keeps (trials in order), or None."""
    counts = np.where(valid, counts, -1)
    best_so_far = np.maximum.accumulate(np.maximum(counts, 0))
    trial = np.arange(1, len(counts) + 1)
    stops = np.flatnonzero(trial >= dynamic_trials(best_so_far, num_points))
    last = stops[0] if len(stops) else len(counts) - 1
    candidates = np.flatnonzero(valid[: last + 1])
    if not len(candidates):
        return None
    order = np.lexsort((candidates, squared_sums[candidates], -counts[candidates]))
    return int(candidates[order[0]])


def affine_inlier_mask(source, target, threshold, trials, seed=0, samples=None):
    """Inliers [n] of the official affine RANSAC from source [n, 2] (index points) to target
    [n, 2] (query points); ``samples`` [T, 3] replaces the seeded draw (tests)."""
    if samples is None:
        samples = sample_triplets(np.random.default_rng(seed), len(source), trials)
    models, valid = affine_hypotheses(source, target, samples)
    source_h = np.concatenate([source, np.ones((len(source), 1))], axis=1)
    residuals = np.linalg.norm(np.einsum("nk,tkj->tnj", source_h, models) - target[None], axis=2)
    inliers = residuals < threshold
    counts = np.count_nonzero(inliers, axis=1)
    squared_sums = np.einsum("tn,tn->t", residuals, residuals)
    best = best_hypothesis(counts, squared_sums, valid, len(source))
    return np.zeros(len(source), bool) if best is None else inliers[best]
