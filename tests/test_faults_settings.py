"""Settings and values that used to run and change the numbers without a word: negative shortlists,
counts and alphas (refused when the config loads, the key named), and NaN or infinite global
descriptors in a store (refused naming the store folder and the image)."""

import pickle

import numpy as np
import pytest

from core.config import ConfigError, load_cfg
from datasets.features import FeatureStoreError, write_store
from tests.eval_helpers import cpu_eval_options, unit_rows
from tools.evaluation.run import evaluate
from tools.knn.finite import NonFiniteDescriptors
from tools.knn.global_search import exact_search
from tools.revisitop.evaluate import main as evaluate_main


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SV.SHORTLIST", "-5"),
        ("RERANK.SG_SHORTLIST", "-1"),
        ("RERANK.QE_K", "-2"),
        ("RERANK.DBA_K", "0"),
        ("EVAL.SEARCH_TOPK", "-100"),
        ("EVAL.KAPPAS", "[1, -5]"),
        ("RERANK.QE_ALPHA", "-3.0"),
        ("RERANK.DBA_ALPHA", "-0.5"),
        ("RERANK.DBA_CHUNK", "0"),
    ],
)
def test_negative_counts_and_alphas_are_refused_at_load_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"config key {key} = .*: expected .*>= "):
        load_cfg("", [key, value])


def test_a_bad_value_in_a_file_is_refused_too_and_every_bad_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("SV:\n  SHORTLIST: -1\nRERANK:\n  DBA_ALPHA: .nan\n")
    with pytest.raises(ConfigError) as caught:
        load_cfg(str(path))
    assert "SV.SHORTLIST" in str(caught.value) and "RERANK.DBA_ALPHA" in str(caught.value)
    assert load_cfg("", ["SV.SHORTLIST", "0", "RERANK.QE_ALPHA", "0"]).SV.SHORTLIST == 0


def test_evaluate_refuses_a_negative_shortlist_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        evaluate_main(cpu_eval_options(tmp_path, "tiny", "['sv']", "SV.SHORTLIST", "-5"))
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "SV.SHORTLIST" in error and "\n" not in error


def _world(root, bad_database_row=None, bad_query_row=None, value=np.nan):
    """A global-only revisitop world of 4 queries and 30 database images (gnd_tiny.pkl and the
    stores), with one descriptor set to value."""
    rng = np.random.default_rng(0)
    queries, database = (unit_rows(rng.standard_normal((n, 8))) for n in (4, 30))
    if bad_database_row is not None:
        database[bad_database_row, 3] = value
    if bad_query_row is not None:
        queries[bad_query_row, 0] = value
    gnd = [{"easy": [q], "hard": [q + 10], "junk": [q + 20], "bbx": [0, 0, 9, 9]} for q in range(4)]
    imlist, qimlist = [f"db_{i:02d}" for i in range(30)], [f"q_{i}" for i in range(4)]
    with open(root / "gnd_tiny.pkl", "wb") as handle:
        pickle.dump({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, handle)
    write_store(root / "features" / "tiny_query", qimlist, queries)
    write_store(root / "features" / "tiny_database", imlist, database)


def _evaluate(root):
    options = cpu_eval_options(root, "tiny", "['global']", "EVAL.DATA_ROOT", str(root))
    return evaluate(load_cfg("", options))


@pytest.mark.parametrize(
    ("row", "value", "why"),
    [(2, np.nan, "relevant to query 2"), (25, np.inf, "relevant to no query")],
)
def test_a_non_finite_database_descriptor_names_the_store_and_the_image(tmp_path, row, value, why):
    _world(tmp_path, bad_database_row=row, value=value)
    with pytest.raises(FeatureStoreError) as caught:
        _evaluate(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "features" / "tiny_database") in message, why
    assert f"'db_{row:02d}'" in message and "not finite" in message, why


def test_a_non_finite_query_descriptor_names_the_query_store_and_image(tmp_path):
    _world(tmp_path, bad_query_row=1)
    with pytest.raises(FeatureStoreError) as caught:
        _evaluate(tmp_path)
    assert str(tmp_path / "features" / "tiny_query") in str(caught.value)
    assert "'q_1'" in str(caught.value)


def test_the_search_names_every_bad_row_it_meets(tmp_path):
    database = unit_rows(np.random.default_rng(1).standard_normal((50, 8)))
    database[[7, 33, 34]] = np.nan
    for chunk_size, rows in ((64, [7, 33, 34]), (16, [7])):  # the first chunk at fault
        with pytest.raises(NonFiniteDescriptors) as caught:
            exact_search(database[40:42], database, 5, chunk_size)
        assert caught.value.side == "database" and caught.value.rows == rows
    _world(tmp_path)
    assert set(_evaluate(tmp_path)) == {"global"}  # finite stores evaluate as before
