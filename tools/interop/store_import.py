"""The official per-image files of a revisitop dataset -> our pair of feature stores.

    summary = import_official("official", "data/roxford5k", "roxford5k", "features")
    # features/roxford5k_query, features/roxford5k_database: what tools/revisitop/evaluate.py reads

Images are matched by name to the dataset's lists (``qimlist`` for the queries, ``imlist`` for the
database) in ``<features_dir>/query`` and ``<features_dir>/index`` (the official layout). An image
whose file is missing or does not parse is left out of the store and listed in the store's
``failures.json`` (as the extractor lists unreadable images); the summary counts both. A store holds
global descriptors when any ``.delg_global`` file is there, local features when any ``.delg_local``
(or ``.delf``) file is. The provenance says "imported from the official format" and, for files we
exported ourselves, keeps the original store's settings (``origin``) and checks each image's
number of local features against the count recorded at export (a file cut at a feature boundary
parses; the count shows it: the image is listed as corrupt).

Each store is written in a staging folder beside it and renamed into place when whole (core/io.py
staging_folder); a store folder that exists and is not empty is refused before any file is read,
unless overwrite. A list naming one image twice (or two names giving one file) is refused with both
names.
"""

import logging
import os
from collections import Counter

import numpy as np

from core.io import check_writable, read_json, refuse_existing, staging_folder, write_json
from datasets.features import FORMAT_VERSION, write_store
from datasets.revisitop import gnd_path, load_ground_truth, round_box
from tools.extraction.provenance import RUN_KEYS
from tools.extraction.shards import FAILURES_FILE
from tools.extraction.stores import PARTS, part_store_names
from tools.interop.official_files import (
    DELF_EXTENSION,
    GLOBAL_EXTENSION,
    LOCAL_EXTENSION,
    OFFICIAL_SCALES,
    OfficialFileError,
    check_file_names,
    read_global,
    read_local,
)
from tools.interop.store_export import EXPORT_INFO, OFFICIAL_FOLDERS

logger = logging.getLogger(__name__)

IMPORTED = "imported from the official format"
MISSING = "missing"


def _local_path(stem):
    for extension in (LOCAL_EXTENSION, DELF_EXTENSION):
        if os.path.isfile(stem + extension):
            return stem + extension
    return stem + LOCAL_EXTENSION


def _read_image(stem, want_global, want_local, known_scales, count=None):
    """(global or None, local or None) of one image; raises OfficialFileError naming the file.
    count: its number of local features recorded at export, if known."""
    descriptor = local = None
    if want_global:
        path = stem + GLOBAL_EXTENSION
        if not os.path.isfile(path):
            raise OfficialFileError(path, MISSING)
        descriptor = read_global(path)
    if want_local:
        path = _local_path(stem)
        if not os.path.isfile(path):
            raise OfficialFileError(path, MISSING)
        local = read_local(path, known_scales, count)
    return descriptor, local


def _most_common(sizes):
    """The descriptor size most images have (0 when none has descriptors)."""
    counts = Counter(size for size in sizes if size)
    return counts.most_common(1)[0][0] if counts else 0


def _size_mismatch(descriptor, local, global_dim, local_dim):
    if descriptor is not None and len(descriptor) != global_dim:
        return f"a global descriptor of size {len(descriptor)}, the other images' have {global_dim}"
    if local is not None and len(local["scores"]) and local["descriptors"].shape[1] != local_dim:
        return (
            f"local descriptors of size {local['descriptors'].shape[1]}, the other images' have "
            f"{local_dim}"
        )
    return None


def _kinds_present(folder, stems, count):
    want_global = any(os.path.isfile(stem + GLOBAL_EXTENSION) for stem in stems)
    want_local = any(os.path.isfile(_local_path(stem)) for stem in stems)
    if not want_global and not want_local:
        raise FileNotFoundError(
            f"{folder}: none of the {count} listed images has a {GLOBAL_EXTENSION} or "
            f"{LOCAL_EXTENSION} file (expected <image name>{GLOBAL_EXTENSION} / "
            f"<image name>{LOCAL_EXTENSION})"
        )
    return want_global, want_local


def read_part(folder, names, known_scales=OFFICIAL_SCALES, counts=None):
    """Read the files of the named images in folder; counts: {name: number of local features}
    recorded at export (export_info.json), checked where given.

    Returns (names read, global descriptors [n, D] or None, local feature dicts or None, failures),
    failures a list of {"name", "path", "reason"} (reason "missing" or why the file is corrupt).
    """
    stems = [os.path.join(folder, name) for name in names]
    want_global, want_local = _kinds_present(folder, stems, len(names))
    read, failures = [], []
    counts = counts or {}
    for name, stem in zip(names, stems):
        try:
            image = _read_image(stem, want_global, want_local, known_scales, counts.get(name))
            read.append((name, *image))
        except OfficialFileError as error:
            failures.append({"name": name, "path": error.path, "reason": error.reason})
    global_dim = _most_common([len(g) for _, g, _ in read if g is not None])
    local_dim = _most_common([f["descriptors"].shape[1] for _, _, f in read if f is not None])
    kept = []
    for name, descriptor, local in read:
        reason = _size_mismatch(descriptor, local, global_dim, local_dim)
        if reason:
            failures.append({"name": name, "path": os.path.join(folder, name), "reason": reason})
            continue
        if local is not None and not len(local["scores"]):  # no features: an empty [0, d] array
            local["descriptors"] = np.zeros((0, local_dim), np.float32)
        kept.append((name, descriptor, local))
    global_descriptors = None
    if want_global:
        global_descriptors = np.stack([g for _, g, _ in kept]) if kept else np.zeros((0, 0))
    local = [item[2] for item in kept] if want_local else None
    return [item[0] for item in kept], global_descriptors, local, failures


def _origin(info):
    """The exported store's provenance without the keys that differ between stores of one run."""
    provenance = dict(info.get("provenance") or {})
    return {key: value for key, value in provenance.items() if key not in RUN_KEYS}


def import_part(folder, names, store_folder, dataset, float16=None, query_boxes=None):
    """Import one part (query or database) into a store; return its summary dict."""
    info_path = os.path.join(folder, EXPORT_INFO)
    info = read_json(info_path) if os.path.isfile(info_path) else {}
    known = tuple(info.get("local_scales") or ()) + OFFICIAL_SCALES
    counts = info.get("local_counts") or {}
    kept, global_descriptors, local, failures = read_part(folder, names, known, counts)
    float16 = bool(info.get("float16", False)) if float16 is None else float16
    crop_boxes = info.get("crop_boxes") or (query_boxes or {})
    provenance = {
        "format_version": FORMAT_VERSION,
        "source": IMPORTED,
        "origin": _origin(info),
        "float16": float16,
        "dataset": dataset,
        "num_failures": len(failures),
    }
    if not kept:
        raise FileNotFoundError(
            f"{folder}: no image of the {len(names)} listed could be imported "
            f"(first failure: {failures[0]['path']}: {failures[0]['reason']})"
        )
    crop_boxes = {name: crop_boxes[name] for name in kept if name in crop_boxes}
    write_store(
        store_folder, kept, global_descriptors, local, provenance, crop_boxes, float16=float16
    )
    write_json(os.path.join(store_folder, FAILURES_FILE), failures)
    missing = [f for f in failures if f["reason"] == MISSING]
    return {
        "store": store_folder,
        "listed": len(names),
        "imported": len(kept),
        "missing": missing,
        "corrupt": [f for f in failures if f["reason"] != MISSING],
        "has_global": global_descriptors is not None,
        "has_local": local is not None,
    }


def part_folders(features_dir, query_dir=None, index_dir=None):
    """The official query/ and index/ folders under features_dir, in PARTS order, or those given."""
    folders = []
    for given, official in zip((query_dir, index_dir), OFFICIAL_FOLDERS):
        folder = given or os.path.join(features_dir, official)
        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"{folder}: no such folder (the official layout has query/ and index/ under "
                f"FEATURES_DIR; name others with --query-dir / --index-dir)"
            )
        folders.append(folder)
    return folders


def import_official(
    features_dir,
    data_root,
    dataset,
    out_dir,
    float16=None,
    query_dir=None,
    index_dir=None,
    overwrite=False,
):
    """Import a revisitop dataset's official files into out_dir/<dataset>_query and _database;
    return {store name: summary (see import_part)}. An existing store folder is refused
    (FileExistsError) before anything is read, unless overwrite."""
    for store_name in part_store_names(dataset):
        refuse_existing(os.path.join(out_dir, store_name), overwrite)
    check_writable(out_dir)
    ground_truth_path = gnd_path(data_root, dataset)
    ground_truth = load_ground_truth(ground_truth_path)
    folders = part_folders(features_dir, query_dir, index_dir)
    for key, folder in zip(("qimlist", "imlist"), folders):
        check_file_names(ground_truth[key], folder, f"{ground_truth_path} ({key})")
    boxes = {
        name: round_box(entry["bbx"])
        for name, entry in zip(ground_truth["qimlist"], ground_truth["gnd"])
    }
    lists = {"query": ground_truth["qimlist"], "database": ground_truth["imlist"]}
    summary = {}
    for part, store_name, folder in zip(PARTS, part_store_names(dataset), folders):
        recorded = {
            "name": store_name,
            "format": "revisitop",
            "root": os.path.abspath(data_root),
            "official_dir": os.path.abspath(folder),
        }
        with staging_folder(os.path.join(out_dir, store_name), overwrite) as staging:
            summary[store_name] = import_part(
                folder,
                list(lists[part]),
                staging,
                recorded,
                float16,
                boxes if part == "query" else None,
            )
        summary[store_name]["store"] = os.path.join(out_dir, store_name)
        logger.info("%s: %s", store_name, describe(summary[store_name]))
    return summary


def describe(part):
    """One line: how many images were listed, imported, missing and corrupt."""
    line = (
        f"{part['listed']} listed, {part['imported']} imported, {len(part['missing'])} missing, "
        f"{len(part['corrupt'])} corrupt"
    )
    if part["missing"] or part["corrupt"]:
        line += f" (listed in {os.path.join(part['store'], FAILURES_FILE)})"
    return line
