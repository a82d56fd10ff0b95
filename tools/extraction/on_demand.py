"""Local features on demand: re-ranking a database stored global-only (revisitop1m distractors)
without storing local features of a million images.

    # the store itself when it has local features
    reader = local_reader(cfg, store, reference=query_store)
    reader.prepare(rows)  # extract the images the cache lacks, in one pass; returns how many
    # {"locations", "scales", "scores", "descriptors"}, as FeatureStore.local_at
    features = reader.local_at(row)

The images are found again through the store's provenance (the dataset the extractor recorded) and
extracted with the extractor's own code (tools.extraction.runner / pyramid) under the current
config, local features only. They are cached under ``<EXTRACT.OUTPUT_DIR or OUT_DIR/features>/<store
name>_local_cache/<key>/``: one feature store per ``EXTRACT.SHARD_SIZE`` newly extracted images
(``part-*``, renamed into place whole), ``<key>`` a hash of the provenance that decides local
features (model config, checkpoint hash, local scales, selection settings) and of the dataset. A
later run with the same model reads them back and extracts only what is still missing.

On-demand features must match the local features of the store they are compared with (the
queries): tools.extraction.provenance decides that.
"""

import hashlib
import json
import logging
import os
import uuid

import numpy as np
import torch

from core.distributed import resolve_device
from core.progress import track
from datasets.features import FeatureStoreError, open_store, write_store
from tools.extraction.provenance import GLOBAL_ONLY_KEYS, RUN_KEYS, local_part, require_same
from tools.extraction.pyramid import no_local_features
from tools.extraction.runner import build_extractor
from tools.extraction.sources import build_sources, item_loader
from tools.extraction.stores import dataset_of_store, output_dir

logger = logging.getLogger(__name__)

CACHE_SUFFIX = "_local_cache"
PART_PREFIX = "part-"
_SOURCE_FIELDS = (
    ("DATASET", "name"),
    ("FORMAT", "format"),
    ("DATA_ROOT", "root"),
    ("SPLIT", "split"),
    ("DISTRACTORS", "distractors"),
)


# ------------------------------------------------------------------------------------ image sources
def image_source_of(cfg, store):
    """The extractor's image source (names, read(i), path(i)) of a store, from the dataset its
    provenance records.

    EXTRACT.* keys fill in what the provenance lacks (stores written by other tools);
    EXTRACT.DISTRACTOR_ROOT always comes from the config.
    """
    recorded = dict(store.provenance.get("dataset") or {})
    # the extractor records the store's name: <dataset>_query / _database
    if recorded.get("format") == "revisitop":
        recorded["name"] = dataset_of_store(str(recorded.get("name", "")))
    source_cfg = cfg.clone()
    for key, field in _SOURCE_FIELDS:
        if recorded.get(field) is not None:
            source_cfg.EXTRACT[key] = recorded[field]
    sources = build_sources(source_cfg)
    wanted = os.path.basename(os.path.normpath(str(store.folder)))
    for name, source in sources:
        if name == wanted:
            return source
    names = set(store.names)
    for _, source in sources:
        if names <= set(source.names):
            return source
    raise FeatureStoreError(
        f"{store.folder}: its images are not among those of EXTRACT.DATASET "
        f"{source_cfg.EXTRACT.DATASET!r} in {source_cfg.EXTRACT.DATA_ROOT!r} (stores "
        f"{', '.join(name for name, _ in sources)}); set EXTRACT.* to the dataset it was "
        f"extracted from"
    )


class _Images:
    """A subset of a source, in the order asked for (PreparedImages reads sources by position)."""

    def __init__(self, source, indices):
        self.source = source
        self.indices = list(indices)
        self.names = [source.names[index] for index in self.indices]

    def __len__(self):
        return len(self.indices)

    def path(self, position):
        return self.source.path(self.indices[position])

    def read(self, position):
        return self.source.read(self.indices[position])


# ---------------------------------------------------------------------------------------- the cache
class OnDemandLocalFeatures:
    """Local features of a global-only store's images, extracted when first asked for and cached on
    disk."""

    has_local = True

    def __init__(
        self, store, source, extractor, cache_folder, provenance, num_workers=0, part_size=1000
    ):
        self.store = store
        self.source = source
        self.extractor = extractor
        self.folder = cache_folder
        self.provenance = provenance
        self.num_workers = num_workers
        self.part_size = max(1, int(part_size))
        self._where = {}  # image name -> (cache part, row)
        self._source_index = None
        self._read_cache()

    def _read_cache(self):
        if not os.path.isdir(self.folder):
            return
        for entry in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, entry)
            if entry.startswith(PART_PREFIX) and os.path.isfile(os.path.join(path, "meta.json")):
                part = open_store(path)
                for row, name in enumerate(part.names):
                    self._where.setdefault(name, (part, row))

    def prepare(self, rows):
        """Make sure the local features of these store rows are available; return how many were
        extracted now."""
        names = list(
            dict.fromkeys(self.store.names[int(row)] for row in np.asarray(rows).reshape(-1))
        )
        missing = [name for name in names if name not in self._where]
        for start in range(0, len(missing), self.part_size):
            self._extract(missing[start : start + self.part_size])
        logger.info(
            "%s: local features on demand for %d images: %d from the cache in %s, %d newly "
            "extracted",
            self.store.folder,
            len(names),
            len(names) - len(missing),
            self.folder,
            len(missing),
        )
        return len(missing)

    def local_at(self, row):
        name = self.store.names[int(row)]
        if name not in self._where:
            self.prepare([row])
        part, part_row = self._where[name]
        return part.local_at(part_row)

    def _indices_in_source(self, names):
        if self._source_index is None:
            self._source_index = {name: index for index, name in enumerate(self.source.names)}
        absent = [name for name in names if name not in self._source_index]
        if absent:
            raise FeatureStoreError(
                f"{self.store.folder}: image {absent[0]!r} is not in the dataset it was "
                f"extracted from (EXTRACT.DATASET / DATA_ROOT / DISTRACTORS)"
            )
        return [self._source_index[name] for name in names]

    def _extract(self, names):
        images = self.extractor.prepared(_Images(self.source, self._indices_in_source(names)))
        loader = item_loader(images, self.num_workers)
        results = [
            self.extractor.extract_item(item)
            for item in track(
                loader, len(names), "local features on demand", "img", mininterval=1.0
            )
        ]
        failures = [
            {"name": result["name"], "path": result["path"], "reason": result["error"]}
            for result in results
            if result.get("error")
        ]
        dim = max(
            (
                result["local"]["descriptors"].shape[1]
                for result in results
                if not result.get("error")
            ),
            default=0,
        )
        # unreadable images are cached without features (0 inliers), so that they are not tried
        # again every run
        local = [
            no_local_features(dim) if result.get("error") else result["local"] for result in results
        ]
        number = len(os.listdir(self.folder)) if os.path.isdir(self.folder) else 0
        unique = uuid.uuid4().hex[:8]  # concurrent runs never write the same folder
        target = os.path.join(self.folder, f"{PART_PREFIX}{number:06d}-{unique}")
        # never read: only part-* folders are
        temporary = os.path.join(self.folder, f"partial-{unique}")
        crop_boxes = {
            result["name"]: list(result["crop_box"])
            for result in results
            if not result.get("error") and result.get("crop_box") is not None
        }
        write_store(
            temporary,
            names,
            None,
            local,
            dict(self.provenance, failures=failures),
            crop_boxes,
            float16=self.extractor.float16,
        )
        os.rename(temporary, target)
        part = open_store(target)
        for row, name in enumerate(part.names):
            self._where[name] = (part, row)


def _cache_key(provenance, dataset):
    fields = {"local": local_part(provenance), "dataset": dataset}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_on_demand(cfg, store):
    """OnDemandLocalFeatures for a store, extracting with the model and EXTRACT.* settings of
    cfg."""
    local_cfg = cfg.clone()
    local_cfg.EXTRACT.GLOBAL, local_cfg.EXTRACT.LOCAL = False, True
    extractor, provenance = build_extractor(
        local_cfg, torch.device(resolve_device(cfg.DEVICE)), show_progress=False
    )
    dataset = store.provenance.get("dataset") or {
        "store": os.path.basename(os.path.normpath(str(store.folder)))
    }
    cache_folder = os.path.join(
        output_dir(cfg),
        os.path.basename(os.path.normpath(str(store.folder))) + CACHE_SUFFIX,
        _cache_key(provenance, dataset),
    )
    return OnDemandLocalFeatures(
        store,
        image_source_of(cfg, store),
        extractor,
        cache_folder,
        dict(provenance, dataset=dataset),
        cfg.DATA_LOADER.NUM_WORKERS,
        cfg.EXTRACT.SHARD_SIZE,
    )


def local_reader(cfg, store, reference=None):
    """Something with ``local_at(row)`` and ``prepare(rows)`` for a store: the store itself when it
    holds local features, else an OnDemandLocalFeatures checked against ``reference`` (a store with
    local features, e.g. the queries), so that on-demand features are comparable with it."""
    if store.has_local:
        return _StoreReader(store)
    reader = build_on_demand(cfg, store)
    if reference is not None and reference.has_local:
        require_same(
            reference.provenance,
            reader.provenance,
            f"the local features of {reference.folder}",
            f"those of {store.folder} extracted on demand",
            ignoring=RUN_KEYS + GLOBAL_ONLY_KEYS,
            hint="use the config the features were extracted with",
        )
    return reader


class _StoreReader:
    """A store with local features behind the reader interface (nothing to prepare)."""

    def __init__(self, store):
        self.store = store

    def prepare(self, rows):
        return 0

    def local_at(self, row):
        return self.store.local_at(int(row))


class LocalFeatureAccess:
    """Local features of an evaluation's queries and database, as (locations, descriptors) pairs.

    query(q) reads the q-th evaluated query (store row query_rows[q]); database(row) a database
    store row. A store
    without local features is read through OnDemandLocalFeatures, built on first use (it loads the
    model).
    """

    def __init__(self, cfg, query_store, database_store, query_rows):
        self.cfg = cfg
        self.query_store = query_store
        self.database_store = database_store
        self.query_rows = np.asarray(query_rows, dtype=np.int64)
        self._readers = {}

    def reader(self, part):
        if part not in self._readers:
            store, other = (
                (self.query_store, self.database_store)
                if part == "query"
                else (self.database_store, self.query_store)
            )
            self._readers[part] = local_reader(self.cfg, store, reference=other)
        return self._readers[part]

    def prepare_database(self, rows):
        """Extract (once) the local features of these database rows when the database store lacks
        them."""
        return self.reader("database").prepare(rows)

    def prepare_queries(self):
        return self.reader("query").prepare(self.query_rows)

    def query(self, query):
        features = self.reader("query").local_at(self.query_rows[query])
        return features["locations"], features["descriptors"]

    def database(self, row):
        features = self.reader("database").local_at(row)
        return features["locations"], features["descriptors"]
