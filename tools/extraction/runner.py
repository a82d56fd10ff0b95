"""Extraction of whole image sets into feature stores, on one process or many (torchrun, srun).

Flow: every process lists the shards still to compute (before any of them writes, so all see the
same list), takes
every world_size-th of them, and writes each as it completes (tools.extraction.shards); after a
barrier rank 0 merges the shards of each store in dataset order. DataLoader workers decode and
resize images in parallel; the pyramid, the heads and the selection run on the device. Images that
cannot be read are listed in each store's failures.json and the rest goes on; the exit code is 1
when anything failed.
"""

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Subset

from core.config import ConfigError
from core.distributed import (
    ProcessPlace,
    join_process_group,
    place_from_environment,
    resolve_backend,
    resolve_device,
)
from core.progress import progress_bar
from core.weights import load_weights
from datasets.features import open_store
from datasets.transforms import build_normalizer
from modeling import build_inference_model
from tools.extraction import shards as shard_io
from tools.extraction.geometry import LOCATION_MODES
from tools.extraction.provenance import build_provenance, checkpoint_digest
from tools.extraction.pyramid import SETTINGS_FIELDS, ExtractionSettings, extract_image
from tools.extraction.resize import RESIZE_MODES, ROUNDINGS
from tools.extraction.selection_rules import selection_rule
from tools.extraction.sources import PreparedImages, build_sources, item_loader
from tools.extraction.stores import output_dir

logger = logging.getLogger(__name__)

# fault injection for tests: die abruptly after writing N shards
ABORT_ENV = "DELG_EXTRACT_ABORT_AFTER_SHARDS"
# rank 0 waits at the barrier for the slowest rank's last shard
BARRIER_TIMEOUT = datetime.timedelta(hours=24)


# ----------------------------------------------------------------------------------------- builders
def build_settings(cfg):
    """ExtractionSettings from EXTRACT.*; a ConfigError names the key of a bad value (the selection
    rule checks its own keys)."""
    extract = cfg.EXTRACT
    if not extract.GLOBAL and not extract.LOCAL:
        raise ConfigError("EXTRACT.GLOBAL and EXTRACT.LOCAL are both False: nothing to extract")
    for key in ("GLOBAL_SCALES", "LOCAL_SCALES"):
        if not extract[key] or not all(isinstance(s, (int, float)) and s > 0 for s in extract[key]):
            raise ConfigError(
                f"EXTRACT.{key} must be a non-empty list of positive scales, got {extract[key]}"
            )
    checks = {
        "MAX_IMAGE_SIZE": (extract.MAX_IMAGE_SIZE >= 32, "at least 32"),
        "SHARD_SIZE": (extract.SHARD_SIZE >= 1, "at least 1"),
        "MIN_SIZE": (extract.MIN_SIZE >= 0, "at least 0"),
    }
    for key, (valid, expected) in checks.items():
        if not valid:
            raise ConfigError(f"EXTRACT.{key} must be {expected}, got {extract[key]}")
    choices = {"RESIZE": RESIZE_MODES, "SIZE_ROUNDING": ROUNDINGS, "LOCATIONS": LOCATION_MODES}
    for key, allowed in choices.items():
        if extract[key] not in allowed:
            raise ConfigError(
                f"EXTRACT.{key} must be one of {', '.join(allowed)}, got {extract[key]!r}"
            )
    rule = selection_rule(extract.SELECTION)
    return ExtractionSettings(
        global_scales=tuple(extract.GLOBAL_SCALES) if extract.GLOBAL else (),
        local_scales=tuple(extract.LOCAL_SCALES) if extract.LOCAL else (),
        **{field: extract[key] for key, field in SETTINGS_FIELDS.items()},
        resize=extract.RESIZE,
        size_rounding=extract.SIZE_ROUNDING,
        min_size=extract.MIN_SIZE,
        locations=extract.LOCATIONS,
        selection=extract.SELECTION,
        selection_options=tuple(
            (key, extract[key]) for key in rule.keys if key not in SETTINGS_FIELDS
        ),
    )


def build_extraction_model(cfg, device):
    """The DELG model in eval mode on device with TEST.WEIGHTS loaded (seeded initial weights
    without them)."""
    torch.manual_seed(cfg.RNG_SEED)  # initial weights then agree across processes and runs
    model = build_inference_model(cfg)
    if cfg.TEST.WEIGHTS:  # strict: features from heads missing in the file would be silently random
        unused = getattr(model, "classifier_keys", ())  # no part in extraction
        load_weights(model, cfg.TEST.WEIGHTS, log=logger.info, strict=True, unused=unused)
    else:
        logger.warning(
            "TEST.WEIGHTS is empty: extracting with the model's initial (untrained) weights"
        )
    return model.eval().to(device)


def build_extractor(cfg, device, show_progress=True):
    """(Extractor, provenance) for the model and EXTRACT.* settings of cfg on device."""
    settings = build_settings(cfg)
    model = build_extraction_model(cfg, device)
    provenance = build_provenance(
        cfg, checkpoint_digest(cfg.TEST.WEIGHTS), model.local_geometry, settings
    )
    extractor = Extractor(
        model,
        device,
        settings,
        build_normalizer(cfg),
        cfg.EXTRACT.MAX_IMAGE_SIZE,
        cfg.DATA_LOADER.NUM_WORKERS,
        cfg.DATA_LOADER.PIN_MEMORY,
        cfg.EXTRACT.FLOAT16,
        show_progress,
    )
    return extractor, provenance


# ---------------------------------------------------------------------------------------- processes
def init_distributed(cfg):
    """Join the process group when launched with WORLD_SIZE > 1 (torchrun, srun); return
    (core.distributed.ProcessPlace, torch.device)."""
    device = resolve_device(cfg.DEVICE)
    place = place_from_environment(os.environ, cfg.PORT) or ProcessPlace(0, 1, 0, 1, "")
    backend = resolve_backend(cfg.DIST_BACKEND, device) if place.world_size > 1 else None
    join_process_group(place, backend, device, timeout=BARRIER_TIMEOUT)
    if device == "cuda":
        # every image has its own size: autotuning would never pay off
        torch.backends.cudnn.benchmark = False
    if device == "cuda":
        return place, torch.device(device, place.local_rank)
    return place, torch.device("cpu")


def barrier(device):
    if not dist.is_initialized():
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


# --------------------------------------------------------------------------------------- extraction
@dataclass
class StoreJob:
    """One output store: its images, shards and the signature that tells complete shards apart."""

    name: str
    folder: str
    source: object
    provenance: dict
    shard_size: int = 1000

    def __post_init__(self):
        self.ranges = shard_io.shard_ranges(len(self.source), self.shard_size)
        self.provenance = dict(
            self.provenance,
            signature=shard_io.run_signature(self.provenance, self.source.names, self.shard_size),
        )

    @property
    def signature(self):
        return self.provenance["signature"]


class Extractor:
    """Runs the model over prepared images of one process's shards and writes the shards."""

    def __init__(
        self,
        model,
        device,
        settings,
        normalizer,
        max_image_size,
        num_workers=0,
        pin_memory=False,
        float16=True,
        show_progress=True,
    ):
        self.model = model
        self.device = device
        self.settings = settings
        self.normalizer = normalizer
        self.max_image_size = max_image_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory and device.type == "cuda"
        self.float16 = float16
        self.show_progress = show_progress
        self.geometry = tuple(model.local_geometry)
        self.abort_after = int(os.environ.get(ABORT_ENV, "0") or 0)
        self.shards_written = 0

    def prepared(self, source):
        """PreparedImages of a source with this extractor's MAX_IMAGE_SIZE step."""
        settings = self.settings
        return PreparedImages(
            source, self.max_image_size, settings.size_rounding, settings.min_size
        )

    def extract_item(self, item):
        if item["error"] is not None:
            logger.warning(
                "%s: %s (listed in %s, extraction goes on)",
                item["path"],
                item["error"],
                shard_io.FAILURES_FILE,
            )
            return {"name": item["name"], "path": item["path"], "error": item["error"]}
        pixels = item["pixels"].to(self.device, non_blocking=True)
        image = self.normalizer(pixels)[None]
        features = extract_image(
            self.model, image, tuple(item["image_size"]), self.geometry, self.settings
        )
        # halves the memory a shard holds until it is written
        if self.float16 and features["local"] is not None:
            features["local"]["descriptors"] = features["local"]["descriptors"].astype("float16")
        return dict(features, name=item["name"], crop_box=item["crop_box"])

    def run(self, job, shard_ids):
        """Extract and write the given shards of job; return the number of images processed."""
        indices = [index for shard in shard_ids for index in job.ranges[shard]]
        if not indices:
            return 0
        dataset = Subset(self.prepared(job.source), indices)
        loader = item_loader(dataset, self.num_workers, self.pin_memory)
        items = iter(loader)
        progress = progress_bar(len(indices), job.name, "img", enabled=self.show_progress)
        for shard in shard_ids:
            results = []
            for _ in job.ranges[shard]:
                results.append(self.extract_item(next(items)))
                progress.update(1)
            shard_io.write_shard(
                job.folder, shard, len(job.ranges), results, job.provenance, self.float16
            )
            logger.info(
                "%s: wrote shard %d of %d (%d images)",
                job.name,
                shard,
                len(job.ranges),
                len(results),
            )
            self._maybe_abort()
        progress.close()
        return len(indices)

    def _maybe_abort(self):
        self.shards_written += 1
        if self.abort_after and self.shards_written >= self.abort_after:
            logger.error("%s=%d: aborting abruptly (fault injection)", ABORT_ENV, self.abort_after)
            os._exit(75)


def build_jobs(cfg, provenance):
    jobs = []
    for name, source in build_sources(cfg):
        dataset = {
            "name": name,
            "dataset": cfg.EXTRACT.DATASET,
            "format": cfg.EXTRACT.FORMAT,
            "root": cfg.EXTRACT.DATA_ROOT,
            "split": cfg.EXTRACT.SPLIT,
            "distractors": cfg.EXTRACT.DISTRACTORS,
            "distractor_root": cfg.EXTRACT.DISTRACTOR_ROOT,
        }
        jobs.append(
            StoreJob(
                name,
                os.path.join(output_dir(cfg), name),
                source,
                dict(provenance, dataset=dataset),
                cfg.EXTRACT.SHARD_SIZE,
            )
        )
    return jobs


def run_extraction(cfg):
    """Extract the EXTRACT.* dataset into its stores; return (exit code, summary dict of this
    process's work)."""
    joins_group = not dist.is_initialized()  # a caller's own process group is left alone at the end
    place, device = init_distributed(cfg)
    extractor, provenance = build_extractor(cfg, device, show_progress=place.rank == 0)
    jobs = build_jobs(cfg, provenance)
    pending = [shard_io.pending_shards(job.folder, len(job.ranges), job.signature) for job in jobs]
    if place.rank == 0:
        for job in jobs:
            shard_io.remove_partial_shards(job.folder)
    barrier(device)  # every process has listed the pending shards before any writes one
    summary = {}
    for job, shards in zip(jobs, pending):
        mine = shards[place.rank :: place.world_size]
        _log_plan(job, shards, mine, place.world_size)
        processed = extractor.run(job, mine)
        summary[job.name] = {
            "folder": job.folder,
            "computed_shards": mine,
            "images_processed": processed,
        }
    barrier(device)
    if place.rank == 0:
        for job in jobs:
            summary[job.name].update(_finish_store(job))
    barrier(device)
    for job in jobs:
        summary[job.name]["failures"] = len(shard_io.read_failures(job.folder))
    if joins_group and dist.is_initialized():
        dist.destroy_process_group()
    return (1 if any(entry["failures"] for entry in summary.values()) else 0), summary


def _log_plan(job, shards, mine, world_size):
    logger.info(
        "%s: %d images in %d shards, %d to extract (%d on this process of %d)",
        job.name,
        len(job.source),
        len(job.ranges),
        len(shards),
        len(mine),
        world_size,
    )


def _finish_store(job):
    """Merge a job's shards into its store (rank 0); return its summary fields."""
    count, failures = shard_io.finish_store(job.folder, job.signature)
    bytes_per_image = open_store(job.folder).bytes_per_image()
    logger.info(
        "%s: %d images in %s, %.0f bytes per image, %d failed%s",
        job.name,
        count,
        job.folder,
        bytes_per_image,
        len(failures),
        f" (see {shard_io.FAILURES_FILE})" if failures else "",
    )
    return {"num_images": count, "bytes_per_image": bytes_per_image}
