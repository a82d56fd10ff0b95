"""The picture of a one-image search (tools/search.py --draw): the query, its global top-k and,
when verified, the shortlist re-ranked by spatial verification (tools/retrieval/one_image.py)."""

from core.io import write_png
from datasets.image_io import read_image
from tools.extraction.on_demand import image_source_of
from tools.vis.ranking import ROW_TITLES, ranking_grid

# tools/vis/ranking.py's grey border: a user's image has no ground truth to colour by
NEUTRAL_LABEL = "junk"


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
            [
                f"{rank} {score:.4f}\n{store.names[int(row)]}"  # near-duplicates differ late
                for rank, (row, score) in enumerate(zip(result.ranked, result.scores), start=1)
            ],
        )
    ]
    if result.reranked is not None:
        rows.append(
            (
                images(result.reranked),
                [NEUTRAL_LABEL] * len(result.reranked),
                [
                    f"{rank} ({result.inliers[int(row)]} inliers)\n{store.names[int(row)]}"
                    for rank, row in enumerate(result.reranked, start=1)
                ],
            )
        )
    titles = [ROW_TITLES["global"], ROW_TITLES["sv"]][: len(rows)]
    write_png(path, ranking_grid(read_image(query.path), rows, titles=titles))
    return path
