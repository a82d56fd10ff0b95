"""The embedded synthetic landmark world, written in the real formats.

Each landmark is a chain of textured planar panels (scenes.py draws them); each
photo is a pinhole-camera view of it (render.py: one homography per panel) over
background clutter, with occluders, lighting changes, blur, noise and JPEG compression. The training
set is a GLDv2-layout folder, the test set a revisitop-layout folder whose easy / hard / junk labels
are measured, not assumed: the landmark's surface carries a grid of sample points, and a database
view is labelled against each query by how much of the query's visible surface it shows, from how
different a viewpoint, scale and rotation. Distractors in the database share a family (palette,
layout) with a test landmark, so that a global descriptor alone confuses them.

Every image has its own seeded numpy Generator (no global RNG, no clock), so a seed gives
byte-identical files, with or without the process pool.
"""

import dataclasses
import pickle
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from core.distributed import available_cores
from core.io import atomic_path, read_json, staging_folder, write_json, write_text
from datasets.synthetic.render import PROFILES, build_landmark, encode_jpeg, label_view, render_view
from datasets.synthetic.scenes import sample_family

FORMAT_VERSION = 1
GND_NAME = "gnd_synth.pkl"
# random-stream domains: the first key after the seed, so that no two images ever share a stream
(
    TRAIN_FAMILY,
    TRAIN_LANDMARK,
    TRAIN_VIEW,
    TEST_FAMILY,
    TEST_LANDMARK,
    TEST_VIEW,
    DISTRACTOR,
    IDS,
    ORDER,
) = range(9)
TRAIN_CYCLE = (
    "easy",
    "hard_angle",
    "easy",
    "hard_zoom",
    "query",
    "hard_far",
    "easy",
    "hard_roll",
    "hard_occluded",
)
TEST_CYCLE = (
    "easy",
    "hard_angle",
    "easy",
    "hard_zoom",
    "junk_tiny",
    "easy",
    "hard_far",
    "hard_roll",
    "easy",
    "hard_occluded",
    "junk_edge",
    "easy",
    "hard_zoom",
    "hard_angle",
)
DISTRACTOR_CYCLE = ("easy", "easy", "hard_angle", "easy", "hard_zoom")
MAX_ATTEMPTS = 8


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the synthetic world."""

    classes: int = 100  # training landmarks (GLDv2 classes)
    train_per_class: int = 20  # training images per landmark
    queries: int = 40  # test queries
    database: int = 400  # test database images (views of the test landmarks plus distractors)
    image_size: int = 256  # long side of every image, pixels
    queries_per_landmark: int = 2  # test queries per test landmark
    distractors_per_landmark: int = 2  # look-alike landmarks (same family) per test landmark
    distractor_fraction: float = 0.3  # share of the database showing distractors
    # training landmarks sharing one family, so training also needs local detail
    family_size: int = 2
    jpeg_quality: int = 90


SIZES = {
    "default": SyntheticSpec(),
    "tiny": SyntheticSpec(classes=8, train_per_class=6, queries=4, database=30, image_size=112),
}


def make_spec(size="default", **overrides):
    """The named size with ``overrides`` applied; unknown names and impossible sizes raise
    ValueError."""
    if size not in SIZES:
        raise ValueError(f"synthetic size {size!r} is unknown; expected one of {sorted(SIZES)}")
    fields = [f.name for f in dataclasses.fields(SyntheticSpec)]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown synthetic option(s) {unknown}; valid: {sorted(fields)}")
    spec = dataclasses.replace(SIZES[size], **{k: v for k, v in overrides.items() if v is not None})
    for name in fields:
        value = getattr(spec, name)
        if name != "distractor_fraction" and (not isinstance(value, int) or value < 1):
            raise ValueError(f"synthetic option {name} must be a positive integer, got {value!r}")
    if not 0 <= spec.distractor_fraction < 1:
        raise ValueError(f"distractor_fraction must lie in [0, 1), got {spec.distractor_fraction}")
    if not 64 <= spec.image_size <= 1024 or spec.train_per_class < 2 or spec.jpeg_quality > 100:
        raise ValueError(
            "synthetic sizes need 64 <= image_size <= 1024, train_per_class >= 2 and "
            f"jpeg_quality <= 100, got {spec}"
        )
    plan = plan_test_set(spec)
    if min(plan["views"]) < 4:
        raise ValueError(
            f"database={spec.database} leaves fewer than 4 views per test landmark "
            f"({len(plan['views'])} landmarks for queries={spec.queries}); raise database"
        )
    return spec


def _split(total, parts):
    """``total`` split into ``parts`` near-equal non-negative integers, larger ones first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def plan_test_set(spec):
    """How many queries, landmark views and distractor views each test landmark gets."""
    landmarks = -(-spec.queries // spec.queries_per_landmark)
    distractor_views = round(spec.distractor_fraction * spec.database)
    n_distractors = landmarks * spec.distractors_per_landmark if distractor_views else 0
    return {
        "queries": _split(spec.queries, landmarks),
        "views": _split(spec.database - distractor_views, landmarks),
        "distractor_views": _split(distractor_views, n_distractors) if n_distractors else [],
    }


def _rng(seed, *keys):
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def _floor_height(spec):
    # about 3x the pixels a typical view shows, so zoomed-in views still find detail in the texture
    return max(24, round(0.35 * spec.image_size))


def _train_job(seed, spec, index):
    family = sample_family(_rng(seed, TRAIN_FAMILY, index // spec.family_size))
    landmark = build_landmark(family, _rng(seed, TRAIN_LANDMARK, index), _floor_height(spec))
    images = []
    for view in range(spec.train_per_class):
        profile = PROFILES[TRAIN_CYCLE[view % len(TRAIN_CYCLE)]]
        image, _ = render_view(
            landmark, profile, _rng(seed, TRAIN_VIEW, index, view), spec.image_size
        )
        images.append(encode_jpeg(image, spec.jpeg_quality))
    return images


def _box_ok(bbx, min_side=8):
    return bbx is not None and bbx[2] - bbx[0] >= min_side and bbx[3] - bbx[1] >= min_side


def _test_job(seed, spec, index, n_queries, n_views, distractor_views):
    """One test landmark: its queries (image, bbx), its database views with labels, and its
    distractors' views."""
    family = sample_family(_rng(seed, TEST_FAMILY, index))
    floor = _floor_height(spec)
    landmark = build_landmark(family, _rng(seed, TEST_LANDMARK, index), floor)
    queries, views, labels = _labelled_views(landmark, seed, spec, index, n_queries, n_views)
    distractors = []
    for k, count in enumerate(distractor_views):
        if not count:
            continue
        look_alike = build_landmark(family, _rng(seed, DISTRACTOR, index, k), floor)
        for v in range(count):
            profile = PROFILES[DISTRACTOR_CYCLE[v % len(DISTRACTOR_CYCLE)]]
            rng = _rng(seed, DISTRACTOR, index, k, v)
            image, _ = render_view(look_alike, profile, rng, spec.image_size)
            distractors.append(encode_jpeg(image, spec.jpeg_quality))
    return {
        "queries": [
            (encode_jpeg(image, spec.jpeg_quality), observation["bbx"])
            for image, observation in queries
        ],
        "views": [encode_jpeg(image, spec.jpeg_quality) for image, _ in views],
        "labels": labels,
        "distractors": distractors,
    }


def _labelled_views(landmark, seed, spec, index, n_queries, n_views):
    """The first attempt whose queries all have a usable box and each an easy and a hard view:
    (queries, views, labels[query][view]), each view an (image, observation) pair."""
    for attempt in range(MAX_ATTEMPTS):
        queries = [
            render_view(
                landmark,
                PROFILES["query"],
                _rng(seed, TEST_VIEW, index, attempt, 0, q),
                spec.image_size,
            )
            for q in range(n_queries)
        ]
        views = [
            render_view(
                landmark,
                PROFILES[TEST_CYCLE[v % len(TEST_CYCLE)]],
                _rng(seed, TEST_VIEW, index, attempt, 1, v),
                spec.image_size,
            )
            for v in range(n_views)
        ]
        labels = [[label_view(landmark, query[1], view[1]) for view in views] for query in queries]
        boxes_ok = all(_box_ok(observation["bbx"]) for _, observation in queries)
        if boxes_ok and all("easy" in row and "hard" in row for row in labels):
            return queries, views, labels
    raise RuntimeError(
        f"test landmark {index}: no query set with easy and hard views after {MAX_ATTEMPTS} tries"
    )


def _call(job):
    # per-process; results do not depend on it, but two busy workers should not oversubscribe
    cv2.setNumThreads(1)
    function, args = job
    return function(*args)


@contextmanager
def _mapper(workers):
    """``map`` over jobs in order: in this process for one worker, else a spawn pool (safe beside
    torch threads)."""
    if workers <= 1:
        threads = cv2.getNumThreads()
        try:
            yield lambda jobs: [_call(job) for job in jobs]
        finally:
            cv2.setNumThreads(threads)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        yield lambda jobs: list(pool.map(_call, jobs, chunksize=2))


def _unique_ids(seed, count):
    """``count`` distinct 16-hex-character image ids, as GLDv2 names its images."""
    rng = _rng(seed, IDS)
    ids = {}
    while len(ids) < count:
        ids.setdefault(rng.bytes(8).hex())
    return list(ids)


def _write_bytes(path, data):
    with atomic_path(str(path)) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def _write_train(root, seed, spec, images_per_class):
    rng = _rng(seed, IDS, 1)
    landmark_ids = np.sort(rng.choice(200000, spec.classes, replace=False))  # sparse, as in GLDv2
    ids = iter(_unique_ids(seed, spec.classes * spec.train_per_class))
    rows = ["landmark_id,images"]
    for landmark_id, images in zip(landmark_ids, images_per_class):
        names = [next(ids) for _ in images]
        for name, data in zip(names, images):
            _write_bytes(root / "train" / name[0] / name[1] / name[2] / f"{name}.jpg", data)
        rows.append(f"{int(landmark_id)},{' '.join(names)}")
    write_text(str(root / "train_clean.csv"), "\n".join(rows) + "\n")


def _write_test(root, seed, spec, results):
    # (image bytes, test landmark index or None, index of the view within its landmark)
    database = []
    for index, result in enumerate(results):
        database += [(data, index, v) for v, data in enumerate(result["views"])]
        database += [(data, None, 0) for data in result["distractors"]]
    order = _rng(seed, ORDER).permutation(len(database))
    imlist = [f"db_{k:04d}" for k in range(len(database))]
    position = {}
    for k, source in enumerate(order):
        data, index, view = database[source]
        _write_bytes(root / "jpg" / f"{imlist[k]}.jpg", data)
        if index is not None:
            position[index, view] = k
    qimlist, gnd = [], []
    for index, result in enumerate(results):
        for (data, bbx), labels in zip(result["queries"], result["labels"]):
            name = f"query_{len(qimlist):03d}"
            _write_bytes(root / "jpg" / f"{name}.jpg", data)
            qimlist.append(name)
            entry = {"bbx": [float(c) for c in bbx], "easy": [], "hard": [], "junk": []}
            for view, label in enumerate(labels):
                entry[label].append(position[index, view])
            gnd.append(
                {key: sorted(value) if key != "bbx" else value for key, value in entry.items()}
            )
    with atomic_path(str(root / GND_NAME)) as tmp, open(tmp, "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle, protocol=4)
    return {key: sum(len(g[key]) for g in gnd) for key in ("easy", "hard", "junk")}


@contextmanager
def _staging(out_dir, overwrite):
    """A fresh folder beside ``out_dir`` that replaces it only when everything was written
    (core/io.py staging_folder), as a Path."""
    with staging_folder(out_dir, overwrite) as staging:
        yield Path(staging)


def default_workers():
    return min(8, available_cores())


def same_world(out_dir, seed, spec):
    """The info.json summary of out_dir when it already holds the world of these settings, else
    None."""
    info_path = Path(out_dir) / "info.json"
    try:
        info = read_json(str(info_path))
    except (OSError, ValueError):
        return None
    same = (
        info.get("format_version") == FORMAT_VERSION
        and info.get("seed") == seed
        and info.get("spec") == dataclasses.asdict(spec)
    )
    return info if same else None


def generate(out_dir, seed=0, size="default", workers=None, overwrite=False, **overrides):
    """Write the synthetic world to ``out_dir`` and return a summary dict (also saved as
    ``out_dir/info.json``).

    ``size`` names a preset of :data:`SIZES`; ``overrides`` are :class:`SyntheticSpec` fields. Same
    arguments, byte-identical files, whatever ``workers`` is. A folder that already holds the world
    of the same settings is kept as it is (the summary says ``reused``) unless overwrite.
    """
    spec = make_spec(size, **overrides)
    if int(seed) != seed or seed < 0:
        raise ValueError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    existing = same_world(out_dir, seed, spec)
    if existing is not None and not overwrite:
        return {**existing, "out_dir": str(out_dir), "reused": True}
    plan = plan_test_set(spec)
    train_jobs = [(_train_job, (seed, spec, c)) for c in range(spec.classes)]
    with _staging(out_dir, overwrite) as root, _mapper(workers or default_workers()) as run:
        _write_train(root / "train", seed, spec, run(train_jobs))
        labels = _write_test(root / "test", seed, spec, run(_test_jobs(seed, spec, plan)))
        summary = _summary(seed, size, spec, plan, labels)
        write_json(str(root / "info.json"), summary)
    return {**summary, "out_dir": str(out_dir)}


def _test_jobs(seed, spec, plan):
    per_landmark = spec.distractors_per_landmark
    jobs = []
    for i, (n_queries, n_views) in enumerate(zip(plan["queries"], plan["views"])):
        distractor_views = plan["distractor_views"][i * per_landmark : (i + 1) * per_landmark]
        jobs.append((_test_job, (seed, spec, i, n_queries, n_views, distractor_views)))
    return jobs


def _summary(seed, size, spec, plan, labels):
    """What info.json records: the settings and what was written."""
    return {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "spec": dataclasses.asdict(spec),
        "train": {
            "csv": "train/train_clean.csv",
            "classes": spec.classes,
            "images": spec.classes * spec.train_per_class,
        },
        "test": {
            "gnd": f"test/{GND_NAME}",
            "queries": spec.queries,
            "database": spec.database,
            "test_landmarks": len(plan["queries"]),
            "distractor_landmarks": len(plan["distractor_views"]),
            "labels": labels,
        },
    }
