"""Search a feature store with one image of one's own (tools/search.py is the command line).

    # the extractor's code and EXTRACT.* settings
    query = extract_query(cfg, "photo.jpg", with_local=True)
    # tools.evaluation.benchmarks.database_store_folder, or any store with global descriptors
    store = open_store(database_store_folder(cfg))
    result = search_store(cfg, query, store, topk=10, verify=True)
    print(format_result(result, store))
    draw_result("ranking.png", cfg, query, result, store)  # tools/vis/search_result.py

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
from tools.extraction.on_demand import local_reader
from tools.extraction.provenance import GLOBAL_ONLY_KEYS, LOCAL_ONLY_KEYS, RUN_KEYS, require_same
from tools.extraction.runner import build_extractor
from tools.extraction.sources import PathImages
from tools.knn.global_search import search
from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification


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
    item = extractor.prepared(PathImages([name], [str(image_path)]))[0]
    if item["error"] is not None:
        raise ValueError(f"{image_path}: {item['error']}")
    features = extractor.extract_item(item)
    return QueryFeatures(
        str(image_path), np.asarray(features["global"], np.float32), features["local"], provenance
    )


def check_store(query, store, verify):
    """The store must hold global descriptors from the same model and settings as the query's
    extraction."""
    if not store.has_global:
        raise ValueError(f"{store.folder} holds no global descriptors: it cannot be searched")
    hint = "use the config and TEST.WEIGHTS the store was extracted with"
    require_same(
        store.provenance,
        query.provenance,
        str(store.folder),
        "this query",
        ignoring=RUN_KEYS + LOCAL_ONLY_KEYS,
        hint=hint,
    )
    if verify and store.has_local:
        require_same(
            store.provenance,
            query.provenance,
            f"the local features of {store.folder}",
            "those of the query",
            ignoring=RUN_KEYS + GLOBAL_ONLY_KEYS,
            hint=hint,
        )


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
