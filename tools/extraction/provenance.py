"""Provenance: what decides a store's features, recorded in its meta.json, and when two stores (or
a store and a query extracted now) are comparable.

    provenance = build_provenance(cfg, checkpoint_digest(cfg.TEST.WEIGHTS), geometry, settings)
    difference(a, b, ignoring=RUN_KEYS)  # (dotted key, a's value, b's value) or None
    require_same(a, b, "the queries", "the database", ignoring=RUN_KEYS + LOCAL_ONLY_KEYS)

The record holds every MODEL key (less those that only shape training, when a checkpoint is given)
and every EXTRACT key but EXTRACT_RUN_KEYS. The key lists say what makes two stores comparable:
RUN_KEYS differ legitimately between stores of one run; GLOBAL_ONLY_KEYS decide only global
descriptors and LOCAL_ONLY_KEYS only local features (the selection rule and every rule's keys among
them), so a comparison of local features ignores the first and one of global descriptors the second.
"""

import hashlib
import os

from core.nested import flatten
from datasets.features import FORMAT_VERSION
from tools.extraction.selection_rules import DEFAULT_RULE, rule_keys

INITIAL_WEIGHTS = "initial-weights"
NOT_RECORDED = "(not recorded: a store of another version)"
# provenance paths that differ legitimately between stores of one run (dotted; a prefix covers its
# sub-keys)
RUN_KEYS = ("signature", "dataset", "checkpoint", "num_failures", "failures", "shard", "num_shards")

# Every EXTRACT key is recorded (as config.EXTRACT.<key>) except the run-only ones, and each
# recorded key is in one class below (tests/test_selection_rules.py checks both for every key).
# run-only: where the images are, where the stores go and how the work is cut
EXTRACT_RUN_KEYS = (
    "DATASET",
    "DATA_ROOT",
    "FORMAT",
    "SPLIT",
    "OUTPUT_DIR",
    "DISTRACTORS",
    "DISTRACTOR_ROOT",
    "SHARD_SIZE",
)
EXTRACT_GLOBAL_ONLY = ("GLOBAL", "GLOBAL_SCALES")
# with every selection rule's keys (tools/extraction/selection_rules.py)
EXTRACT_LOCAL_ONLY = ("LOCAL", "LOCAL_SCALES", "FLOAT16", "LOCATIONS", "SELECTION", *rule_keys())
EXTRACT_BOTH = ("MAX_IMAGE_SIZE", "MIN_SIZE", "RESIZE", "SIZE_ROUNDING", "CROP_QUERIES")
# recorded settings that only decide global descriptors, and those that only decide local features
GLOBAL_ONLY_KEYS = (*(f"config.EXTRACT.{key}" for key in EXTRACT_GLOBAL_ONLY), "global_scales")
LOCAL_ONLY_KEYS = (
    *(f"config.EXTRACT.{key}" for key in EXTRACT_LOCAL_ONLY),
    "local_scales",
    "float16",
)
# Settings recorded since a later version, with the value every store written before them had: a
# record holding that value leaves them out (official-rule stores keep their records, run
# signatures and on-demand cache keys) and a record without them reads as that value.
IMPLIED_VALUES = {"config.EXTRACT.SELECTION": DEFAULT_RULE}
# MODEL keys that only shape training (class count, losses, the margin head, frozen parts): stores
# extracted from one checkpoint with configs that differ only there hold the same features, so the
# provenance leaves them out.
_TRAINING_ONLY_KEYS = {"NUM_CLASSES", "FREEZE_BN", "FREEZE_STEM", "LOSS_FUN", "LOSSES"}
_TRAINING_ONLY_HEAD_KEYS = {"MARGIN_TYPE", "MARGIN", "SCALE"}


class ProvenanceMismatch(ValueError):
    """Two sets of features come from different models or settings."""


# ------------------------------------------------------------------------------------------- record
def checkpoint_digest(path):
    """sha256 of the checkpoint file, or INITIAL_WEIGHTS when none is given."""
    if not path:
        return INITIAL_WEIGHTS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"TEST.WEIGHTS {path}: no such checkpoint file")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def build_provenance(cfg, checkpoint, geometry, settings):
    """What decides the features: recorded in every store and hashed into the run signature."""
    # the TIMM section only for timm backbones: stores of the other backbones keep their records
    sections = ("MODEL", "RESNET", "INPUT", *(("TIMM",) if cfg.MODEL.TYPE == "timm" else ()))
    config = {section: _plain(cfg[section]) for section in sections}
    # initial weights are drawn in build order, which the class count changes
    if checkpoint != INITIAL_WEIGHTS:
        config["MODEL"] = {
            key: value for key, value in config["MODEL"].items() if key not in _TRAINING_ONLY_KEYS
        }
        config["MODEL"]["HEADS"] = {
            key: value
            for key, value in config["MODEL"]["HEADS"].items()
            if key not in _TRAINING_ONLY_HEAD_KEYS
        }
    config["EXTRACT"] = recorded_extract_keys(cfg.EXTRACT)
    return {
        "format_version": FORMAT_VERSION,
        "config": config,
        "checkpoint": cfg.TEST.WEIGHTS,
        "checkpoint_sha256": checkpoint,
        "rng_seed": cfg.RNG_SEED if checkpoint == INITIAL_WEIGHTS else None,
        "global_scales": list(settings.global_scales),
        "local_scales": list(settings.local_scales),
        "local_geometry": list(geometry),
        "float16": bool(cfg.EXTRACT.FLOAT16),
    }


def recorded_extract_keys(extract):
    """{key: value} of the EXTRACT section as recorded: every key but EXTRACT_RUN_KEYS, less the
    IMPLIED_VALUES it holds."""
    section = "config.EXTRACT."
    implied = {
        path[len(section) :]: value
        for path, value in IMPLIED_VALUES.items()
        if path.startswith(section)
    }
    return {
        key: _plain(value)
        for key, value in extract.items()
        if key not in EXTRACT_RUN_KEYS and not (key in implied and value == implied[key])
    }


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return list(value) if isinstance(value, tuple) else value


# --------------------------------------------------------------------------------------- comparison
def _ignored(path, ignoring):
    return any(path == key or path.startswith(key + ".") for key in ignoring)


def _with_implied(flat):
    """A flattened record with the IMPLIED_VALUES of its recorded sections filled in."""
    for path, value in IMPLIED_VALUES.items():
        section = path.rsplit(".", 1)[0] + "."
        if path not in flat and any(key.startswith(section) for key in flat):
            flat[path] = value
    return flat


def difference(left, right, ignoring=RUN_KEYS):
    """The first recorded setting (dotted path, left value, right value) on which two provenances
    differ, or None. A setting only one side records reads NOT_RECORDED on the other."""
    left, right = _with_implied(flatten(left or {})), _with_implied(flatten(right or {}))
    for path in sorted(set(left) | set(right)):
        if _ignored(path, ignoring):
            continue
        left_value, right_value = left.get(path, NOT_RECORDED), right.get(path, NOT_RECORDED)
        if left_value != right_value:
            return path, left_value, right_value
    return None


def require_same(left, right, left_name, right_name, ignoring=RUN_KEYS, hint=""):
    """Raise ProvenanceMismatch naming the first setting on which two provenances differ."""
    found = difference(left, right, ignoring)
    if found:
        key, left_value, right_value = found
        raise ProvenanceMismatch(
            f"{left_name} and {right_name} come from different extractions: provenance {key} is "
            f"{left_value!r} for {left_name} but {right_value!r} for {right_name}"
            + (f" ({hint})" if hint else "")
        )


def local_part(provenance):
    """The part of a provenance that decides local features (the on-demand cache key hashes it)."""
    return {
        path: value
        for path, value in sorted(flatten(provenance or {}).items())
        if not _ignored(path, RUN_KEYS + GLOBAL_ONLY_KEYS)
    }


def check_store_pair(query_store, database_store):
    """Refuse stores whose provenance (model config, checkpoint hash, scales, ...) differs; name the
    key.

    Settings of local features are compared only when both stores hold local features: a global-only
    database (+1M distractors) legitimately records other local settings than its queries.
    """
    both_local = query_store.has_local and database_store.has_local
    require_same(
        query_store.provenance,
        database_store.provenance,
        f"the queries ({query_store.folder})",
        f"the database ({database_store.folder})",
        ignoring=RUN_KEYS if both_local else RUN_KEYS + LOCAL_ONLY_KEYS,
    )
