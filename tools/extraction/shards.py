"""Shards: the unit of parallel and resumable extraction, and their merge into the final store.

An image set of N images is cut into shards of EXTRACT.SHARD_SIZE consecutive images. Shard k is
itself a feature store (datasets.features) in ``<store>/_shards/<k>``, written into a temporary
folder and renamed into place, so it exists whole or not at all. Its provenance carries the run
signature (feature config, checkpoint hash, image list, shard size): a shard with the current
signature is complete and is never computed again; a shard left by other arguments is recomputed.
The merge joins the shards in dataset order into the store folder itself, lists the images that
could not be read in ``failures.json`` beside it, and removes the shards.
"""

import hashlib
import json
import logging
import os
import shutil
import uuid

import numpy as np

from core.io import read_json, write_json
from datasets.features import FeatureStoreError, concatenate_stores, open_store, write_store

logger = logging.getLogger(__name__)

SHARDS_FOLDER = "_shards"
FAILURES_FILE = "failures.json"
_TEMPORARY_MARK = ".partial-"


def shard_ranges(num_images, shard_size):
    """Consecutive index ranges of at most shard_size images covering range(num_images)."""
    if shard_size < 1:
        raise ValueError(f"EXTRACT.SHARD_SIZE must be at least 1, got {shard_size}")
    return [
        range(start, min(start + shard_size, num_images))
        for start in range(0, num_images, shard_size)
    ]


def shard_folder(store_folder, shard):
    return os.path.join(store_folder, SHARDS_FOLDER, f"{shard:06d}")


def run_signature(provenance, names, shard_size):
    """Hash of everything that decides a shard's content: same arguments, same signature."""
    digest = hashlib.sha256(json.dumps(provenance, sort_keys=True).encode())
    digest.update(json.dumps([shard_size, list(names)]).encode())
    return digest.hexdigest()


def _signature_of(folder):
    try:
        return read_json(os.path.join(folder, "meta.json"))["provenance"].get("signature")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_is_current(store_folder, signature):
    """The final store exists and was made with the same arguments."""
    return _signature_of(store_folder) == signature


def pending_shards(store_folder, num_shards, signature):
    """Shards still to compute (none when the merged store is already current)."""
    if store_is_current(store_folder, signature):
        return []
    return [
        k for k in range(num_shards) if _signature_of(shard_folder(store_folder, k)) != signature
    ]


def remove_partial_shards(store_folder):
    """Temporary folders of shards whose writing was interrupted (call before any process starts
    writing)."""
    root = os.path.join(store_folder, SHARDS_FOLDER)
    if os.path.isdir(root):
        for entry in os.listdir(root):
            if _TEMPORARY_MARK in entry:
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def write_shard(store_folder, shard, num_shards, results, provenance, float16):
    """Write one shard atomically.

    results: one dict per image in shard order: ``name`` and either ``error`` (+ ``path``) or
    ``global`` (array or None), ``local`` (dict of arrays or None) and ``crop_box``.
    """
    extracted = [r for r in results if r.get("error") is None]
    failures = [
        {"name": r["name"], "path": r["path"], "reason": r["error"]}
        for r in results
        if r.get("error")
    ]
    names = [r["name"] for r in extracted]
    has_global = provenance["global_scales"] != []
    has_local = provenance["local_scales"] != []
    global_descriptors = None
    if has_global:
        global_descriptors = (
            np.stack([r["global"] for r in extracted])
            if extracted
            else np.zeros((0, 0), np.float32)
        )
    local = [r["local"] for r in extracted] if has_local else None
    crop_boxes = {
        r["name"]: list(r["crop_box"]) for r in extracted if r.get("crop_box") is not None
    }
    shard_provenance = dict(provenance, shard=shard, num_shards=num_shards, failures=failures)
    target = shard_folder(store_folder, shard)
    temporary = f"{target}{_TEMPORARY_MARK}{uuid.uuid4().hex[:8]}"
    write_store(
        temporary, names, global_descriptors, local, shard_provenance, crop_boxes, float16=float16
    )
    if os.path.exists(target):  # a shard left by other arguments
        shutil.rmtree(target)
    os.rename(temporary, target)
    return failures


def _open_shards(store_folder):
    first = shard_folder(store_folder, 0)
    if not os.path.isdir(first):
        raise FeatureStoreError(f"{store_folder}: no shards to merge (expected {first})")
    shards = [open_store(first)]
    signature, num_shards = shards[0].provenance["signature"], shards[0].provenance["num_shards"]
    for k in range(1, num_shards):
        folder = shard_folder(store_folder, k)
        if _signature_of(folder) != signature:
            reason = (
                "is missing"
                if not os.path.isdir(folder)
                else "comes from a run with other arguments"
            )
            raise FeatureStoreError(
                f"{store_folder}: cannot merge, shard {folder} {reason}; run the extraction "
                f"again with the same arguments to complete it"
            )
        shards.append(open_store(folder))
    return shards


def _clear_store_files(store_folder):
    """Remove a previous store's files; meta.json first, so the folder never looks complete while
    rewritten."""
    for entry in ["meta.json"] + sorted(os.listdir(store_folder)):
        path = os.path.join(store_folder, entry)
        if (
            entry == "meta.json" or entry.endswith(".npy") or entry == FAILURES_FILE
        ) and os.path.isfile(path):
            os.remove(path)


def merge_shards(store_folder):
    """Join the shards of store_folder in dataset order into the store; return (number of images,
    failures)."""
    shards = _open_shards(store_folder)
    provenance = {
        k: v
        for k, v in shards[0].provenance.items()
        if k not in ("shard", "num_shards", "failures")
    }
    names = [name for shard in shards for name in shard.names]
    failures = [failure for shard in shards for failure in shard.provenance["failures"]]
    crop_boxes = {name: box for shard in shards for name, box in shard.crop_boxes.items()}
    _clear_store_files(store_folder)
    write_json(os.path.join(store_folder, FAILURES_FILE), failures)
    concatenate_stores(
        store_folder, shards, dict(provenance, num_failures=len(failures)), crop_boxes
    )
    shutil.rmtree(os.path.join(store_folder, SHARDS_FOLDER))
    return len(names), failures


def finish_store(store_folder, signature):
    """Merge the shards unless the store is current already (then only leftover shards are
    removed)."""
    if store_is_current(store_folder, signature):
        shutil.rmtree(os.path.join(store_folder, SHARDS_FOLDER), ignore_errors=True)
        return len(open_store(store_folder)), read_failures(store_folder)
    return merge_shards(store_folder)


def read_failures(store_folder):
    path = os.path.join(store_folder, FAILURES_FILE)
    return read_json(path) if os.path.isfile(path) else []
