"""Search a feature store with one image of one's own (tools/search.py is the command line).

    # the extractor's code and EXTRACT.* settings
    query = extract_query(cfg, "photo.jpg", with_local=True)
    store = open_store(default_store_folder(cfg))  # or any store with global descriptors
    result = search_store(cfg, query, store, topk=10, verify=True)
    print(format_result(result, store))
    draw_result("ranking.png", cfg, query, result, store)

The image goes through exactly what the extractor does to a database image (no crop): the
EXTRACT.MAX_IMAGE_SIZE limit, the pyramid, local selection. The store must come from the same model
and settings (checked against its provenance, like the evaluation does). With ``verify`` the global
top SV.SHORTLIST images are re-ranked by spatial verification inliers (SV.*); a global-only store's
shortlisted images get local features on demand (tools/extraction/on_demand.py).
"""

import dataclasses
import os

import numpy as np
import torch

from core.distributed import resolve_device
from datasets.image_io import read_image
from tools.extraction.on_demand import (
    LOCAL_ONLY_KEYS,
    RUN_KEYS,
    ProvenanceMismatch,
    check_same_local_features,
    image_source_of,
    local_reader,
    provenance_difference,
)
from tools.extraction.runner import build_extractor
from tools.extraction.sources import PathImages, PreparedImages
from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification
from tools.retrieval.gldv2_evaluation import GLDV2, STORE_NAMES
from tools.retrieval.global_search import search
from tools.revisitop.evaluation import features_dir, split_dataset_name
from tools.vis.matches import write_png
from tools.vis.ranking import ranking_grid

# tools/vis/ranking.py's grey border: a user's image has no ground truth to colour by

NEUTRAL_LABEL = "junk"


@dataclasses.dataclass
class QueryFeatures:
    path: str
    global_descriptor: np.ndarray  # [D] float32, L2-normalised
    local: dict  # locations [n, 2], scales, scores, descriptors [n, d]; None without local features
    provenance: dict


@dataclasses.dataclass
class SearchResult:
    ranked: np.ndarray  # [topk] store rows by global score
    scores: np.ndarray  # [topk] their global scores
    # [min(topk, SV.SHORTLIST)] store rows by (inliers, global score); None without SV
    reranked: np.ndarray = None
    inliers: dict = None  # {store row: inliers} over the verified shortlist
    global_rank: dict = None  # {store row: 1-based global rank} over the verified shortlist


def extract_query(cfg, image_path, with_local=True):
    """Global descriptor (and local features) of one image file, as the extractor computes them."""
    query_cfg = cfg.clone()
    query_cfg.EXTRACT.GLOBAL, query_cfg.EXTRACT.LOCAL = True, bool(with_local)
    extractor, provenance = build_extractor(
        query_cfg, torch.device(resolve_device(cfg.DEVICE)), show_progress=False
    )
    name = os.path.splitext(os.path.basename(image_path))[0]
    item = PreparedImages(PathImages([name], [str(image_path)]), cfg.EXTRACT.MAX_IMAGE_SIZE)[0]
    if item["error"] is not None:
        raise ValueError(f"{image_path}: {item['error']}")
    features = extractor.extract_item(item)
    return QueryFeatures(
        str(image_path), np.asarray(features["global"], np.float32), features["local"], provenance
    )


def default_store_folder(cfg):
    """The EVAL.DATASET database store under the features folder (EVAL.FEATURES_DIR,
    EXTRACT.OUTPUT_DIR, ...)."""
    folder = features_dir(cfg)
    if cfg.EVAL.DATASET == GLDV2:
        candidates = [index for _, index in STORE_NAMES]
    else:
        candidates = [
            f"{name}_database"
            for name in dict.fromkeys([cfg.EVAL.DATASET, split_dataset_name(cfg.EVAL.DATASET)[0]])
        ]
    for name in candidates:
        if os.path.isdir(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(
        f"no store {' or '.join(candidates)} under {folder} (EVAL.DATASET, EVAL.FEATURES_DIR); "
        f"name one with --store"
    )


def check_store(query, store, verify):
    """The store must hold global descriptors from the same model and settings as the query's
    extraction."""
    if not store.has_global:
        raise ValueError(f"{store.folder} holds no global descriptors: it cannot be searched")
    difference = provenance_difference(
        query.provenance, store.provenance, RUN_KEYS + LOCAL_ONLY_KEYS
    )
    if difference:
        key, query_value, store_value = difference
        raise ProvenanceMismatch(
            f"{store.folder} was extracted with other settings: provenance {key} is "
            f"{store_value!r} there but {query_value!r} for this query (use the config and "
            f"TEST.WEIGHTS the store was extracted with)"
        )
    if verify and store.has_local:
        check_same_local_features(store.provenance, query.provenance, store.folder, "the query")


def search_store(cfg, query, store, topk=10, verify=False):
    """Global top-k of the store for the query; with verify, the SV.SHORTLIST first re-ranked by
    inliers."""
    check_store(query, store, verify)
    depth = max(topk, cfg.SV.SHORTLIST if verify else 0)
    scores, ranked = search(
        query.global_descriptor[None],
        store.global_descriptors(),
        depth,
        cfg.EVAL.CHUNK_SIZE,
        cfg.EVAL.DEVICE,
        cfg.EVAL.USE_FAISS,
    )
    result = SearchResult(ranked[0][:topk], scores[0][:topk])
    if not verify:
        return result
    if query.local is None:
        raise ValueError(
            "spatial verification needs the query's local features (extract_query(with_local=True))"
        )
    shortlist = ranked[0][: cfg.SV.SHORTLIST]
    reader = local_reader(cfg, store)
    reader.prepare(shortlist)

    def database_local(row):
        features = reader.local_at(row)
        return features["locations"], features["descriptors"]

    reranked, inliers = rerank_with_spatial_verification(
        {"query": [shortlist]},
        lambda _: (query.local["locations"], query.local["descriptors"]),
        database_local,
        options_from_cfg(cfg),
        device=resolve_device(cfg.DEVICE),
        progress=False,
    )
    result.reranked = reranked["query"][0][:topk]
    result.inliers = {int(row): count for (_, row), count in inliers.items()}
    result.global_rank = {int(row): rank + 1 for rank, row in enumerate(shortlist)}
    return result


def format_result(result, store, query=None):
    """The rankings as text: global top-k, and the re-ranked shortlist with inlier counts when
    verified."""
    lines = []
    if query is not None:
        count = 0 if query.local is None else len(query.local["scores"])
        lines.append(
            f"query {query.path}: {count} local features; store {store.folder}: {len(store)} images"
        )
    lines += ["global ranking:", f"{'rank':>5} {'score':>8}  name"]
    lines += [
        f"{rank:>5} {score:>8.4f}  {store.names[int(row)]}"
        for rank, (row, score) in enumerate(zip(result.ranked, result.scores), start=1)
    ]
    if result.reranked is not None:
        score_of = dict(zip(result.ranked.tolist(), result.scores.tolist()))
        lines += [
            f"re-ranked by spatial verification ({len(result.inliers)} verified):",
            f"{'rank':>5} {'inliers':>8} {'global':>7}  name",
        ]
        for rank, row in enumerate(result.reranked, start=1):
            row = int(row)
            score = f" ({score_of[row]:.4f})" if row in score_of else ""
            lines.append(
                f"{rank:>5} {result.inliers[row]:>8} {result.global_rank[row]:>7}  "
                f"{store.names[row]}{score}"
            )
    return "\n".join(lines)


def draw_result(path, cfg, query, result, store):
    """The ranking picture (tools/vis/ranking.py): the global top-k row and, when verified, the
    re-ranked row."""
    source = image_source_of(cfg, store)
    position = {name: index for index, name in enumerate(source.names)}

    def images(rows):
        return [source.read(position[store.names[int(row)]])[0] for row in rows]

    rows = [
        (
            images(result.ranked),
            [NEUTRAL_LABEL] * len(result.ranked),
            [f"{rank} {score:.2f}" for rank, score in enumerate(result.scores, start=1)],
        )
    ]
    if result.reranked is not None:
        rows.append(
            (
                images(result.reranked),
                [NEUTRAL_LABEL] * len(result.reranked),
                [
                    f"{rank} ({result.inliers[int(row)]})"
                    for rank, row in enumerate(result.reranked, start=1)
                ],
            )
        )
    write_png(path, ranking_grid(read_image(query.path), rows))
    return path
