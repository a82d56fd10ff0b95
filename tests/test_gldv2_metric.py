from fractions import Fraction

import numpy as np
import pytest

from datasets.list_dataset import ParseError
from tools.gldv2.metric import (
    average_precision_at_k,
    mean_average_precision_at_k,
    predictions_from_ranks,
    read_retrieval_solution,
)

SOLUTION = """id,images,Usage
q1,a b c,Public
q2,"d e",Private
q3,None,Ignored
q4,,Public
q5,f,Private
"""
PREDICTIONS = {
    "q1": ["a", "x", "b", "a", "y"],  # hits at ranks 1 and 3; the repeated 'a' earns nothing
    "q2": ["x", "d"],  # a hit at rank 2
    "q3": ["z"],  # ignored row: not counted
    "q4": ["a"],  # no relevant images: not in the solution, not counted
}  # q5 has no predictions: AP 0
AP_Q1 = (Fraction(1, 1) + Fraction(2, 3)) / 3
AP_Q2 = Fraction(1, 2) / 2


def _write(tmp_path, text, name="retrieval_solution_v2.1.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reader_leaves_out_ignored_rows_and_rows_without_relevant_images(tmp_path):
    path = _write(tmp_path, SOLUTION)
    assert read_retrieval_solution(path) == {"q1": ["a", "b", "c"], "q2": ["d", "e"], "q5": ["f"]}
    assert read_retrieval_solution(path, usage="Public") == {"q1": ["a", "b", "c"]}
    assert read_retrieval_solution(path, usage=("Private",)) == {"q2": ["d", "e"], "q5": ["f"]}
    with pytest.raises(ValueError, match="usage"):
        read_retrieval_solution(path, usage="Ignored")


def test_map_at_100_matches_hand_computed_values(tmp_path):
    path = _write(tmp_path, SOLUTION)
    both = mean_average_precision_at_k(PREDICTIONS, read_retrieval_solution(path))
    assert both == pytest.approx(float((AP_Q1 + AP_Q2 + 0) / 3))  # = 29/108
    public = mean_average_precision_at_k(PREDICTIONS, read_retrieval_solution(path, usage="Public"))
    assert public == pytest.approx(float(AP_Q1))
    private = mean_average_precision_at_k(
        PREDICTIONS, read_retrieval_solution(path, usage="Private")
    )
    assert private == pytest.approx(float(AP_Q2 / 2))


def test_only_the_first_k_predictions_count_and_the_divisor_is_capped_at_k():
    relevant = [f"r{i}" for i in range(150)]
    # 100 hits / min(150, 100)
    assert average_precision_at_k(relevant, relevant) == pytest.approx(1.0)
    assert average_precision_at_k(["x", "y", "r0"], relevant, k=2) == 0.0
    assert average_precision_at_k(["x", "r0"], ["r0", "r1"], k=1) == 0.0
    assert average_precision_at_k(["x", "r0"], ["r0"], k=2) == pytest.approx(0.5)
    assert average_precision_at_k([], ["r0"]) == 0.0
    with pytest.raises(ValueError):
        mean_average_precision_at_k({"q": ["a"]}, {})


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("id,images\nq1,a\n", 1, "expected the header 'id,images,Usage'"),
        ("id,images,Usage\nq1,a b,Public\nq2,a,Public,extra\n", 3, "expected 3 fields"),
        ("id,images,Usage\nq1,a,Public\n\nq2,a,Secret\n", 4, "expected Usage"),
        ("id,images,Usage\nq1,a,Public\nq1,b,Private\n", 3, "repeats"),
        ("id,images,Usage\nq 1,a,Public\n", 2, "test image id"),
        ("id,images,Usage\nq1,a;b,Public\n", 2, "index image ids"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, text)
    with pytest.raises(ParseError, match=message) as error:
        read_retrieval_solution(path)
    assert str(error.value).startswith(f"{path}:{line}:")


def test_predictions_from_ranks_maps_positions_to_ids():
    ranks = np.array([[2, 0, 1], [1, 2, 0]])
    predictions = predictions_from_ranks(ranks, ["q1", "q2"], ["a", "b", "c"], k=2)
    assert predictions == {"q1": ["c", "a"], "q2": ["b", "c"]}
