"""Google Landmarks v2 retrieval: the official solution file and mAP@100 as the Kaggle challenge
defines it.

``retrieval_solution_v2.1.csv`` has the header ``id,images,Usage``: a test image id, the
space-separated ids of its relevant index images, and ``Public``, ``Private`` or ``Ignored``.
Ignored rows are test images without ground truth (their images field reads ``None``); they are not
part of the solution, and neither are rows whose images field is empty. For every query of the
solution::

    AP@k(q) = sum_{i <= k} P@i(q) * rel_i(q) / min(m_q, k)

with ``m_q`` its number of relevant index images, ``rel_i`` 1 when the i-th prediction is relevant
and not already predicted at a better rank (a repeated id earns nothing but keeps its rank), and
mAP@k the mean over the queries of the solution: a query of the solution without predictions scores
0, predictions for other queries (the ignored test images, or the other Usage) are not counted.
"""

import csv
import logging
import re

import numpy as np

from datasets.list_dataset import ParseError

logger = logging.getLogger(__name__)

SOLUTION_HEADER = ["id", "images", "Usage"]
USAGES = ("Public", "Private", "Ignored")
_IMAGE_ID = re.compile(r"[0-9A-Za-z_-]+")


def read_retrieval_solution(path, usage=("Public", "Private")):
    """Return {query id: [relevant index ids]} for the rows of the given usage(s) that have relevant
    images."""
    wanted = _check_usage(usage)
    solution, skipped = {}, {"Ignored": 0, "other usage": 0, "no relevant images": 0}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = [field.strip() for field in next(rows, [])]
        if header != SOLUTION_HEADER:
            raise ParseError(
                path, 1, f"expected the header '{','.join(SOLUTION_HEADER)}'", ",".join(header)
            )
        seen = set()
        for row in rows:
            if not row:
                continue
            query_id, relevant, row_usage = _parse_row(path, rows.line_num, row, seen)
            if row_usage == "Ignored":
                skipped["Ignored"] += 1
            elif row_usage not in wanted:
                skipped["other usage"] += 1
            elif not relevant:
                skipped["no relevant images"] += 1
            else:
                solution[query_id] = relevant
    logger.info(
        "%s: %d queries with ground truth (%s); left out: %s",
        path,
        len(solution),
        "+".join(wanted),
        ", ".join(f"{count} {what}" for what, count in skipped.items()),
    )
    return solution


def _check_usage(usage):
    wanted = (usage,) if isinstance(usage, str) else tuple(usage)
    if not wanted or any(value not in ("Public", "Private") for value in wanted):
        raise ValueError(f"usage must be 'Public', 'Private' or both, got {usage!r}")
    return wanted


def _parse_row(path, line_number, row, seen):
    text = ",".join(row)
    if len(row) != 3:
        raise ParseError(path, line_number, "expected 3 fields 'id,images,Usage'", text)
    query_id, images, row_usage = (field.strip() for field in row)
    if not _IMAGE_ID.fullmatch(query_id):
        raise ParseError(
            path,
            line_number,
            f"expected a test image id of letters, digits, '_' or '-', not {query_id!r}",
            text,
        )
    if query_id in seen:
        raise ParseError(
            path, line_number, f"expected each test image once, {query_id!r} repeats", text
        )
    seen.add(query_id)
    if row_usage not in USAGES:
        raise ParseError(
            path, line_number, f"expected Usage {', '.join(USAGES)}, not {row_usage!r}", text
        )
    if row_usage == "Ignored" or images in ("", "None"):
        return query_id, [], row_usage
    relevant = images.split()
    for index_id in relevant:
        if not _IMAGE_ID.fullmatch(index_id):
            raise ParseError(
                path,
                line_number,
                f"expected space-separated index image ids, not {index_id!r}",
                text,
            )
    return query_id, list(dict.fromkeys(relevant)), row_usage


def average_precision_at_k(ranked_ids, relevant_ids, k=100):
    """AP@k of one query: ranked_ids best first; relevant_ids non-empty (see the module
    docstring)."""
    relevant = set(relevant_ids)
    if not relevant:
        raise ValueError("AP@k is undefined for a query without relevant images")
    found, total, credited = 0, 0.0, set()
    for rank, index_id in enumerate(list(ranked_ids)[:k], start=1):
        if index_id in relevant and index_id not in credited:
            found += 1
            total += found / rank
        credited.add(index_id)
    return total / min(len(relevant), k)


def mean_average_precision_at_k(predictions, solution, k=100):
    """mAP@k over the queries of ``solution`` ({query id: relevant ids}); predictions: {query id:
    ranked ids}."""
    if not solution:
        raise ValueError("the retrieval solution holds no query with relevant images")
    total = sum(
        average_precision_at_k(predictions.get(query_id, ()), relevant, k)
        for query_id, relevant in solution.items()
    )
    return total / len(solution)


def predictions_from_ranks(ranks, query_ids, index_ids, k=100):
    """{query id: [index ids]} from a rank matrix [n_queries, >= k] of index positions (best
    first)."""
    ranks = np.asarray(ranks)[:, :k]
    if len(ranks) != len(query_ids):
        raise ValueError(f"{len(ranks)} rows of ranks for {len(query_ids)} query ids")
    index_ids = np.asarray(index_ids)
    return {str(query_id): index_ids[row].tolist() for query_id, row in zip(query_ids, ranks)}
