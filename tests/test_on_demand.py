"""+1M-style re-ranking: a global-only database (benchmark images plus distractors) gets local
features on demand, for the shortlisted images only, cached and reused; the features equal the
extractor's own."""

import logging
import re
import shutil

import numpy as np
import pytest

from core.config import load_cfg
from datasets.features import open_store
from datasets.revisitop import load_ground_truth
from tests.tiny import TINY_EXTRACTION, TINY_PRESET, generate_tiny_world
from tools.evaluation.run import evaluate
from tools.extraction.provenance import ProvenanceMismatch
from tools.extraction.runner import run_extraction
from tools.revisitop.protocols import protocol_gnds

SHORTLIST = 4
LOG_LINE = re.compile(
    r"local features on demand for (\d+) images: (\d+) from the cache in .*, (\d+) newly extracted"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Queries with local features (a normal extraction) and a global-only database of the 30
    benchmark images plus the 48 training images as distractors (EXTRACT.LOCAL False,
    EXTRACT.DISTRACTORS), side by side in features/."""
    root = tmp_path_factory.mktemp("on_demand")
    data = generate_tiny_world(root)
    test, distractor_root = data / "test", data / "train" / "train"
    distractors = sorted(
        str(path.relative_to(distractor_root)) for path in distractor_root.rglob("*.jpg")
    )
    (root / "distractors.txt").write_text("\n".join(distractors) + "\n")
    common = [*TINY_EXTRACTION, "EXTRACT.DATA_ROOT", str(test), "EVAL.DATA_ROOT", str(test)]
    assert run_extraction(load_cfg(TINY_PRESET, [*common, "OUT_DIR", str(root / "full")]))[0] == 0
    global_only = [
        *common,
        "OUT_DIR",
        str(root / "global"),
        "EXTRACT.LOCAL",
        "False",
        "EXTRACT.DISTRACTORS",
        str(root / "distractors.txt"),
        "EXTRACT.DISTRACTOR_ROOT",
        str(distractor_root),
    ]
    assert run_extraction(load_cfg(TINY_PRESET, global_only))[0] == 0
    shutil.copytree(root / "full" / "features" / "synth_query", root / "features" / "synth_query")
    shutil.copytree(
        root / "global" / "features" / "synth_database", root / "features" / "synth_database"
    )
    options = [
        *common,
        "EVAL.DATASET",
        "synth+1m",
        "EVAL.FEATURES_DIR",
        str(root / "features"),
        "EXTRACT.DISTRACTOR_ROOT",
        str(distractor_root),
        "OUT_DIR",
        str(root / "eval"),
        "EVAL.METHODS",
        "['global', 'sv']",
        "SV.SHORTLIST",
        str(SHORTLIST),
    ]
    return root, options


def _on_demand_counts(caplog):
    """(images needed, from the cache, newly extracted) of the one on-demand log line of the
    database."""
    found = [
        LOG_LINE.search(record.getMessage())
        for record in caplog.records
        if "synth_database" in record.getMessage()
    ]
    found = [match for match in found if match]
    assert len(found) == 1, caplog.text
    return tuple(int(value) for value in found[0].groups())


def _shortlisted(root):
    """Distinct database rows in any protocol's global shortlist (junk left out), computed here from
    the stores."""
    ground_truth = load_ground_truth(root / "data" / "test" / "gnd_synth.pkl")
    query_store, database_store = (
        open_store(root / "features" / "synth_query"),
        open_store(root / "features" / "synth_database"),
    )
    rows = [database_store.index_of(name) for name in ground_truth["imlist"]]
    queries = np.asarray(query_store.global_descriptors())[
        [query_store.index_of(n) for n in ground_truth["qimlist"]]
    ]
    ranking = np.argsort(
        -(queries @ np.asarray(database_store.global_descriptors()).T), axis=1, kind="stable"
    )
    gnd = [
        {key: np.asarray(rows)[entry[key]] for key in ("easy", "hard", "junk")}
        for entry in ground_truth["gnd"]
    ]
    shortlisted = set()
    for protocol_gnd in protocol_gnds(gnd).values():
        for ranked, entry in zip(ranking, protocol_gnd):
            shortlisted.update(ranked[~np.isin(ranked, entry["junk"])][:SHORTLIST].tolist())
    return shortlisted, len(database_store)


def test_sv_extracts_only_shortlisted_images_and_reuses_the_cache(world, caplog):
    root, options = world
    with caplog.at_level(logging.INFO):
        first = evaluate(load_cfg(TINY_PRESET, options))
    needed, cached, extracted = _on_demand_counts(caplog)
    shortlisted, database_size = _shortlisted(root)
    assert database_size == 30 + 48
    assert (needed, cached, extracted) == (len(shortlisted), 0, len(shortlisted))
    assert extracted < database_size
    assert 0 <= first["sv"]["M"]["mAP"] <= 100

    # the cached features are the extractor's: equal to those of the full extraction for the
    # benchmark images
    cache = [
        open_store(part)
        for part in (root / "eval" / "features" / "synth_database_local_cache").glob("*/part-*")
    ]
    cached_names = {name: (store, store.index_of(name)) for store in cache for name in store.names}
    assert len(cached_names) == len(shortlisted)
    full = open_store(root / "full" / "features" / "synth_database")
    compared = 0
    for name in set(cached_names) & set(full.names):
        store, row = cached_names[name]
        on_demand, reference = store.local_at(row), full.local(name)
        np.testing.assert_allclose(on_demand["locations"], reference["locations"], atol=1e-3)
        np.testing.assert_allclose(
            on_demand["descriptors"].astype(np.float32),
            reference["descriptors"].astype(np.float32),
            atol=2e-3,
        )
        compared += 1
    assert compared > 0

    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = evaluate(load_cfg(TINY_PRESET, options))
    assert _on_demand_counts(caplog) == (len(shortlisted), len(shortlisted), 0)
    assert second == first


def test_on_demand_features_must_match_the_queries_extraction(world):
    _, options = world
    with pytest.raises(ProvenanceMismatch, match="config.EXTRACT.MAX_FEATURES"):
        evaluate(load_cfg(TINY_PRESET, [*options, "EXTRACT.MAX_FEATURES", "50"]))


def test_asmk_needs_local_features_of_the_whole_database(world):
    _, options = world
    with pytest.raises(ValueError, match="holds no local features.*'sv'"):
        evaluate(load_cfg(TINY_PRESET, [*options, "EVAL.METHODS", "['asmk']"]))
