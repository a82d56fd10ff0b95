"""The demo's pictures: training curves, the attention of two queries, and the inlier matches
between the query that spatial verification helped most and its best re-ranked positive.

    pictures = draw_pictures(cfg, context, trained, train_dir, out_dir)   # {what: path}

``context`` is the evaluation context of the trained features (tools/revisitop/context.py) and
``trained`` its raw results by method (tools/pipeline.py evaluates both).
"""

import dataclasses
import os

import cv2
import numpy as np

from datasets.revisitop import RevisitopDataset

PICTURE_PROTOCOL = "M"  # the protocol whose shortlists and APs choose the match picture
SMALL_IMAGE = 400  # pixels: match pictures of images smaller than this are drawn twice as large


def pick_queries(context, trained):
    """(two queries for the attention pictures, the query for the match picture).

    The match picture shows the query whose Medium AP spatial verification raised most (the first
    query when no AP rose), so that it shows what re-ranking adds.
    """
    count = len(context.query_rows)
    gains = np.zeros(count)
    if "sv" in trained and "global" in trained:
        gains = np.asarray(trained["sv"][PICTURE_PROTOCOL][1]) - np.asarray(
            trained["global"][PICTURE_PROTOCOL][1]
        )
    return sorted({0, count // 2}), int(np.argmax(gains))


def best_reranked_positive(context, query):
    """The database row of the first positive in the query's Medium shortlist re-ranked by spatial
    verification, or None when the shortlist holds no positive."""
    from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification
    from tools.revisitop.protocols import protocol_gnd

    shortlist = context.shortlists(context.cfg.SV.SHORTLIST)[PICTURE_PROTOCOL][query]
    context.local.prepare_queries()
    context.local.prepare_database(np.asarray(shortlist, dtype=np.int64))
    reranked, _ = rerank_with_spatial_verification(
        {PICTURE_PROTOCOL: [shortlist]},
        lambda _: context.local.query(query),
        context.local.database,
        options_from_cfg(context.cfg),
        progress=False,
    )
    positives = set(protocol_gnd(context.gnd, PICTURE_PROTOCOL)[query]["ok"].tolist())
    return next((row for row in reranked[PICTURE_PROTOCOL][0].tolist() if row in positives), None)


def enlarged(image, features, factor):
    """(image, (locations, descriptors)) scaled by an integer factor."""
    if factor == 1:
        return image, features
    height, width = image.shape[:2]
    image = cv2.resize(image, (width * factor, height * factor), interpolation=cv2.INTER_LINEAR)
    locations, descriptors = features
    # pixel centres: x in the original maps to (x + 0.5) * factor - 0.5 in the enlarged image
    return image, ((np.asarray(locations, dtype=np.float64) + 0.5) * factor - 0.5, descriptors)


def draw_pictures(cfg, context, trained, train_dir, out_dir, log=print):
    """Training curves, two attention pictures and one match picture; returns {what: path}."""
    from core.io import write_png
    from tools.plot_training import plot_training
    from tools.rerank.spatial_verification import options_from_cfg
    from tools.vis.attention import picture_for_image
    from tools.vis.matches import load_image_and_features, match_picture

    pictures = {
        "training_curves": plot_training(train_dir, os.path.join(out_dir, "training_curves.png"))
    }
    dataset = RevisitopDataset(cfg.EVAL.DATA_ROOT, cfg.EVAL.DATASET)
    attention_queries, match_query = pick_queries(context, trained)
    for query in attention_queries:
        name = dataset.query_names[query]
        pictures[f"attention_{name}"] = picture_for_image(
            cfg, dataset.image_path(name), os.path.join(out_dir, f"attention_{name}.png")
        )
    row = best_reranked_positive(context, match_query)
    if row is None:
        log(f"[demo] query {match_query} has no positive in its shortlist: no match picture")
        return pictures
    query_name, index_name = dataset.query_names[match_query], context.database_store.names[row]
    query = load_image_and_features(context.query_store, dataset, query_name)
    index = load_image_and_features(context.database_store, dataset, index_name)
    # Small images are drawn twice as large: pixels, keypoints and the RANSAC threshold alike, so
    # the inliers are those of the verification that re-ranked them, and the lines and caption stay
    # readable.
    factor = 2 if max(*query[0].shape[:2], *index[0].shape[:2]) < SMALL_IMAGE else 1
    options = dataclasses.replace(
        options_from_cfg(cfg), inlier_threshold=factor * cfg.SV.INLIER_THRESHOLD
    )
    picture, _ = match_picture(
        *enlarged(*query, factor),
        *enlarged(*index, factor),
        options,
        names=(query_name, index_name),
    )
    pictures["matches"] = os.path.join(out_dir, f"matches_{query_name}_{index_name}.png")
    write_png(pictures["matches"], picture)
    return pictures
