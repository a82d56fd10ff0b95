"""Picture of a query's ranking before and after re-ranking: a grid PNG and an HTML page.

    python tools/vis/ranking.py --cfg FILE --query NAME_OR_INDEX [--protocol M] [--topk 10] [--out
    ranking.png]
                                [--html ranking.html] [KEY VALUE ...]

Row 1 is the global ranking, row 2 the shortlist re-ranked by spatial verification (SV.* settings);
each row starts with the query. Borders: green = positive, red = negative, grey = junk of the chosen
protocol (the global ranking still holds junk; the re-ranked shortlist never does).
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # repository root

import argparse  # noqa: E402
import html  # noqa: E402
import os  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.cli import load_cfg_or_exit, run_reporting_errors  # noqa: E402
from core.io import write_png, write_text  # noqa: E402
from datasets.revisitop import RevisitopDataset, gnd_path  # noqa: E402
from tools.evaluation.benchmarks import open_store_pair  # noqa: E402
from tools.extraction.stores import features_dir  # noqa: E402
from tools.knn.global_search import exact_search  # noqa: E402
from tools.rerank.spatial_verification import options_from_cfg, rerank_with_spatial_verification  # noqa: E402
from tools.revisitop.context import align_ground_truth, load_gnd, split_dataset_name  # noqa: E402
from tools.revisitop.protocols import protocol_gnd  # noqa: E402
from tools.vis.matches import load_image_and_features  # noqa: E402
from tools.vis.text import put_caption  # noqa: E402

BORDER_COLOURS = {
    "positive": (30, 170, 30),
    "negative": (210, 40, 40),
    "junk": (150, 150, 150),
    "query": (30, 90, 220),
}  # RGB
TILE = 160
BORDER = 6
CAPTION_LINE = 13  # pixels between caption lines
ROW_TITLES = {"global": "global", "sv": "spatial verification"}


def label_ranking(ranked, ok, junk):
    """'positive' / 'junk' / 'negative' for each ranked database index."""
    ok, junk = set(np.asarray(ok).tolist()), set(np.asarray(junk).tolist())
    return [
        "positive" if image in ok else "junk" if image in junk else "negative"
        for image in np.asarray(ranked).tolist()
    ]


def tile(image, label, size=TILE, border=BORDER, caption=""):
    """The image letterboxed into a size x size tile with a border in the label's colour and a
    caption."""
    inner = size - 2 * border
    scale = inner / max(image.shape[:2])
    resized = cv2.resize(
        image,
        (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )
    result = np.full((size, size, 3), BORDER_COLOURS[label], dtype=np.uint8)
    result[border:-border, border:-border] = 255
    top, left = border + (inner - resized.shape[0]) // 2, border + (inner - resized.shape[1]) // 2
    result[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    for line_number, line in enumerate(reversed(caption.splitlines())):  # lines bottom up
        origin = (border + 2, size - border - 4 - CAPTION_LINE * line_number)
        put_caption(result, line, origin, 0.4, padding=1)
    return result


def ranking_grid(query_image, rows, size=TILE, titles=()):
    """rows: [(images, labels, captions)]; each row starts with the query tile, captioned with the
    row's title (titles[row], e.g. "global" or "spatial verification") when given. Captions may
    hold several lines. Returns one RGB canvas."""
    width = 1 + max(len(images) for images, _, _ in rows)
    canvas = np.full((len(rows) * size, width * size, 3), 255, dtype=np.uint8)
    for row, (images, labels, captions) in enumerate(rows):
        title = f"{titles[row]}\n" if row < len(titles) else ""
        tiles = [tile(query_image, "query", size, caption=f"{title}query")]
        tiles += [
            tile(image, label, size, caption=caption)
            for image, label, caption in zip(images, labels, captions)
        ]
        for column, picture in enumerate(tiles):
            canvas[row * size : (row + 1) * size, column * size : (column + 1) * size] = picture
    return canvas


def ranking_html(title, query_path, rows):
    """An HTML page: rows [(row title, [(image path, label, caption)])] with coloured borders."""

    def cell(path, label, caption):
        colour = "rgb({},{},{})".format(*BORDER_COLOURS[label])
        return (
            f'<figure><img src="{html.escape(str(path))}" style="border:6px solid {colour}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    body = [f"<h1>{html.escape(title)}</h1>"]
    for row_title, cells in rows:
        body.append(
            f"<h2>{html.escape(row_title)}</h2><div class=row>{cell(query_path, 'query', 'query')}"
            + "".join(cell(*entry) for entry in cells)
            + "</div>"
        )
    style = (
        "body{font-family:sans-serif} .row{display:flex;flex-wrap:wrap} figure{margin:4px}"
        " img{height:140px} figcaption{font-size:12px}"
    )
    return (
        "<!doctype html><meta "
        f"charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>" + "".join(body)
    )


def query_rankings(cfg, query, protocol, topk):
    """(query name, [("global", ids, labels), ("sv", ids, labels)], inliers, stores, dataset) for
    one query."""
    base, with_distractors = split_dataset_name(cfg.EVAL.DATASET)
    dataset = RevisitopDataset(cfg.EVAL.DATA_ROOT, base)
    ground_truth = load_gnd(gnd_path(cfg.EVAL.DATA_ROOT, base))
    query_store, database_store = open_store_pair(features_dir(cfg), cfg.EVAL.DATASET)
    query_rows, gnd = align_ground_truth(
        ground_truth, query_store, database_store, with_distractors, base
    )
    number = int(query) if str(query).isdigit() else ground_truth["qimlist"].index(query)
    entry = protocol_gnd(gnd, protocol)[number]
    descriptor = np.asarray(query_store.global_descriptors()[query_rows[number]], dtype=np.float32)[
        None
    ]
    depth = cfg.SV.SHORTLIST + len(entry["junk"])
    _, ranked = exact_search(
        descriptor, database_store.global_descriptors(), depth, cfg.EVAL.CHUNK_SIZE
    )
    shortlist = ranked[0][~np.isin(ranked[0], entry["junk"])][: cfg.SV.SHORTLIST]

    def local(store, row):
        features = store.local_at(int(row))
        return features["locations"], features["descriptors"]

    reranked, inliers = rerank_with_spatial_verification(
        {protocol: [shortlist]},
        lambda _: local(query_store, query_rows[number]),
        lambda row: local(database_store, row),
        options_from_cfg(cfg),
        progress=False,
    )
    rows = []
    for name, ids in (("global", ranked[0][:topk]), ("sv", reranked[protocol][0][:topk])):
        rows.append((name, ids, label_ranking(ids, entry["ok"], entry["junk"])))
    inliers = {image: count for (_, image), count in inliers.items()}
    return ground_truth["qimlist"][number], rows, inliers, (query_store, database_store), dataset


def main(argv=None):
    return run_reporting_errors("ranking", _main, argv)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", dest="cfg_file", default="", help="YAML config file")
    parser.add_argument(
        "--query", required=True, help="query name or its number in the ground truth"
    )
    parser.add_argument(
        "--protocol", default="M", choices=["E", "M", "H"], help="which positives and junk"
    )
    parser.add_argument("--topk", type=int, default=10, help="images per row")
    parser.add_argument("--out", default="ranking.png", help="output PNG")
    parser.add_argument("--html", default="", help="also write an HTML page here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides")
    return parser.parse_args(argv)


def _main(argv=None):
    args = parse_args(argv)
    cfg = load_cfg_or_exit(args.cfg_file, args.opts)
    name, rows, inliers, (query_store, database_store), dataset = query_rankings(
        cfg, args.query, args.protocol, args.topk
    )
    query_image, _ = load_image_and_features(query_store, dataset, name)
    grid_rows, html_rows = [], []
    for row_name, ids, labels in rows:
        names = [database_store.names[int(image)] for image in ids]
        captions = row_captions(ids, names, inliers if row_name == "sv" else None)
        images = [load_image_and_features(database_store, dataset, each)[0] for each in names]
        grid_rows.append((images, labels, captions))
        paths = [os.path.abspath(dataset.image_path(each)) for each in names]
        flat_captions = [caption.replace("\n", " ") for caption in captions]
        html_rows.append((ROW_TITLES[row_name], list(zip(paths, labels, flat_captions))))
    titles = [ROW_TITLES[row_name] for row_name, _, _ in rows]
    write_png(args.out, ranking_grid(query_image, grid_rows, titles=titles))
    if args.html:
        title = f"{cfg.EVAL.DATASET} query {name}, protocol {args.protocol}"
        query_path = os.path.abspath(dataset.image_path(name))
        write_text(args.html, ranking_html(title, query_path, html_rows))
    print(
        f"{args.out}: query {name}, protocol {args.protocol}, "
        f"top {args.topk} before and after re-ranking"
    )
    return 0


def row_captions(ids, names, inliers=None):
    """'rank (inliers)\nname' of each image of a row (inliers: {image: count} of the sv row)."""
    return [
        f"{rank + 1}"
        + (f" ({inliers[int(image)]} inliers)" if inliers is not None else "")
        + f"\n{image_name}"
        for rank, (image, image_name) in enumerate(zip(ids, names))
    ]


if __name__ == "__main__":
    sys.exit(main())
