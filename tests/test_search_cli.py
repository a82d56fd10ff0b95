"""tools/search.py: one image against the synthetic database store, with spatial verification and
the picture.

The model is a tiny untrained one, so a real query's positives are not reliably first (its
descriptors carry no learnt invariance). The test therefore searches with a photometric
near-duplicate of one of a query's landmark views (2x upscaled, brighter, less contrast, JPEG
re-encoded): finding it first proves that the one-image path extracts like the extractor and that
search, verification, printing and drawing are wired, not retrieval quality.
"""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from core.config import load_cfg
from datasets.features import open_store
from datasets.revisitop import load_ground_truth
from tests.tiny import REPO, TINY_PRESET, extract_tiny_world
from tools.evaluation.benchmarks import database_store_folder
from tools.retrieval.one_image import extract_query
from tools.search import main


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    return root, extract_tiny_world(root)


def _near_duplicate(source, target):
    image = Image.open(source).convert("RGB")
    image = image.resize((2 * image.width, 2 * image.height), Image.BICUBIC)
    image = ImageEnhance.Contrast(ImageEnhance.Brightness(image).enhance(1.15)).enhance(0.9)
    image.save(target, quality=75)
    return target


def _sections(output):
    """{"global": [[rank, score, name]], "sv": [[rank, inliers, global rank, name, ...]]} from the
    printed tables."""
    sections, current = {"global": [], "sv": []}, None
    for line in output.splitlines():
        if line.startswith("global ranking"):
            current = "global"
        elif line.startswith("re-ranked by spatial verification"):
            current = "sv"
        elif current and line.split() and line.split()[0].isdigit():
            sections[current].append(line.split())
    return sections


def test_near_duplicate_of_a_landmark_view_comes_first(synthetic, tmp_path):
    root, options = synthetic
    ground_truth = load_ground_truth(root / "data" / "test" / "gnd_synth.pkl")
    view = ground_truth["imlist"][ground_truth["gnd"][0]["easy"][0]]  # a view of query 0's landmark
    image = _near_duplicate(root / "data" / "test" / "jpg" / f"{view}.jpg", tmp_path / "photo.jpg")
    picture = tmp_path / "ranking.png"
    command = [
        sys.executable,
        str(REPO / "tools" / "search.py"),
        "--cfg",
        TINY_PRESET,
        str(image),
        "--sv",
        "--topk",
        "5",
        "--draw",
        str(picture),
        *options,
    ]
    finished = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert finished.returncode == 0, finished.stderr
    tables = _sections(finished.stdout)
    assert [row[0] for row in tables["global"]] == ["1", "2", "3", "4", "5"]
    assert tables["global"][0][2] == view
    scores = [float(row[1]) for row in tables["global"]]
    assert scores == sorted(scores, reverse=True)
    assert len(tables["sv"]) == 5 and tables["sv"][0][3] == view
    inliers = [int(row[1]) for row in tables["sv"]]
    assert inliers == sorted(inliers, reverse=True) and inliers[0] > inliers[1]
    drawn = cv2.imread(str(picture))
    assert drawn is not None and drawn.shape == (2 * 160, 6 * 160, 3)  # 2 rows: query + top 5


def test_one_image_extraction_is_the_extractors(synthetic):
    root, options = synthetic
    cfg = load_cfg(TINY_PRESET, options)
    store = open_store(database_store_folder(cfg))
    name = store.names[7]
    query = extract_query(cfg, root / "data" / "test" / "jpg" / f"{name}.jpg", with_local=True)
    np.testing.assert_allclose(query.global_descriptor, store.global_descriptors()[7], atol=1e-5)
    np.testing.assert_allclose(query.local["locations"], store.local(name)["locations"], atol=1e-3)


def test_errors_are_reported(synthetic, tmp_path, capsys):
    root, options = synthetic
    image = root / "data" / "test" / "jpg" / "query_000.jpg"
    assert (
        main(["--cfg", TINY_PRESET, str(image), "--store", str(tmp_path / "nowhere"), *options])
        == 2
    )
    assert "search error" in capsys.readouterr().err
    assert main(["--cfg", TINY_PRESET, str(tmp_path / "missing.jpg"), *options]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    # a model the store was not extracted with
    other = [*options, "MODEL.HEADS.REDUCTION_DIM", "64"]
    assert main(["--cfg", TINY_PRESET, str(image), *other]) == 2
    assert "MODEL.HEADS.REDUCTION_DIM" in capsys.readouterr().err
