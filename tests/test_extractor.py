"""End to end: tools/extractor.py on tiny images with a tiny ResNet-18 (initial weights, seeded)."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_cfg
from datasets.features import open_store
from modeling import build_model
from tests.tiny import REPO, TINY_R18
from tools.extraction.runner import ABORT_ENV, run_extraction
from tools.extraction.shards import shard_folder
from tools.extraction.sources import folder_images, gldv2_images, list_images
from tools.extractor import main as extractor_main

TINY_MODEL = [
    *TINY_R18,
    "MODEL.NUM_CLASSES",
    "0",
    "MODEL.LOCAL_STRIDE",
    "16",
    "MODEL.HEADS.REDUCTION_DIM",
    "32",
    "MODEL.LOCAL.ATTENTION_DIM",
    "16",
    "MODEL.LOCAL.DESCRIPTOR_DIM",
    "16",
    "DEVICE",
    "cpu",
    "DATA_LOADER.NUM_WORKERS",
    "0",
    "EXTRACT.ATTENTION_THRESHOLD",
    "0.0",
    "EXTRACT.MAX_FEATURES",
    "40",
    "EXTRACT.GLOBAL_SCALES",
    "[0.7071, 1.0]",
    "EXTRACT.LOCAL_SCALES",
    "[0.7071, 1.0]",
]


def _picture(height, width, seed):
    """A smooth random picture (noise upsampled), so that features vary across the image."""
    coarse = np.random.default_rng(seed).integers(
        0, 256, size=(max(2, height // 8), max(2, width // 8), 3)
    )
    return np.array(
        Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.BILINEAR)
    )


def _folder(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(_picture(height, width, index)).save(root / f"img_{index}.png")
    return root


def _options(data_root, out_dir, *extra):
    return [
        *TINY_MODEL,
        "EXTRACT.FORMAT",
        "folder",
        "EXTRACT.DATASET",
        "set",
        "EXTRACT.DATA_ROOT",
        str(data_root),
        "EXTRACT.OUTPUT_DIR",
        str(out_dir),
        *extra,
    ]


def _extract(data_root, out_dir, *extra):
    return run_extraction(load_cfg("", _options(data_root, out_dir, *extra)))


def _assert_same_store(left, right):
    assert left.names == right.names
    np.testing.assert_allclose(left.global_descriptors(), right.global_descriptors(), atol=1e-5)
    for name in left.names:
        a, b = left.local(name), right.local(name)
        for field in ("locations", "scales", "scores"):
            np.testing.assert_allclose(
                a[field], b[field], rtol=1e-4, atol=1e-4, err_msg=f"{name} {field}"
            )
        np.testing.assert_allclose(
            a["descriptors"].astype(np.float32), b["descriptors"].astype(np.float32), atol=2e-3
        )


def _sorted_by_location(features):
    order = np.lexsort((features["locations"][:, 0], features["locations"][:, 1]))
    return features["locations"][order], features["scores"][order]


def test_upscaled_copy_gives_locations_twice_as_large(tmp_path):
    image = _picture(64, 96, seed=3)
    for name, pixels in (
        ("original", image),
        ("upscaled", image.repeat(2, axis=0).repeat(2, axis=1)),
    ):
        (tmp_path / name).mkdir()
        Image.fromarray(pixels).save(tmp_path / name / "img.png")
    keep_all = ["EXTRACT.MAX_FEATURES", "1000", "EXTRACT.GLOBAL", "False"]
    _extract(tmp_path / "original", tmp_path / "a", "EXTRACT.LOCAL_SCALES", "[1.0]", *keep_all)
    _extract(tmp_path / "upscaled", tmp_path / "b", "EXTRACT.LOCAL_SCALES", "[0.5]", *keep_all)
    # the MAX_IMAGE_SIZE limit brings the copy back to 96 px too: the same network input by the
    # other route
    _extract(
        tmp_path / "upscaled",
        tmp_path / "c",
        "EXTRACT.LOCAL_SCALES",
        "[1.0]",
        "EXTRACT.MAX_IMAGE_SIZE",
        "96",
        *keep_all,
    )
    original, original_scores = _sorted_by_location(open_store(tmp_path / "a" / "set").local("img"))
    assert len(original) == 4 * 6  # every cell of the stride-16 map of 64 x 96 pixels
    for run in ("b", "c"):
        upscaled, upscaled_scores = _sorted_by_location(
            open_store(tmp_path / run / "set").local("img")
        )
        assert upscaled.shape == original.shape
        assert np.abs(upscaled - 2 * original).max() <= 1.0
        # the same cells, seen alike
        assert np.corrcoef(upscaled_scores, original_scores)[0, 1] > 0.9


def test_list_csv_and_folder_sources_name_and_locate_images(tmp_path):
    (tmp_path / "list.txt").write_text("# comment\nsub dir/a b.jpg 3\nc.png\n")
    listed = list_images(tmp_path / "list.txt", "/data")
    assert listed.names == ["sub dir/a b", "c"] and listed.path(0) == "/data/sub dir/a b.jpg"
    (tmp_path / "index.csv").write_text("id\n00cba0067c078490\nf1e2d3\n")
    index = gldv2_images(tmp_path / "index.csv", "/gld/index")
    assert (
        index.names == ["00cba0067c078490", "f1e2d3"]
        and index.path(1) == "/gld/index/f/1/e/f1e2d3.jpg"
    )
    (tmp_path / "clean.csv").write_text("landmark_id,images\n1,abc f1e\n2,0a1\n")
    clean = gldv2_images(tmp_path / "clean.csv", "/gld")
    assert clean.names == ["abc", "f1e", "0a1"] and clean.path(2) == "/gld/0/a/1/0a1.jpg"
    (tmp_path / "bad.csv").write_text("landmark,images\n1,abc\n")
    with pytest.raises(ValueError, match="bad.csv:1: expected a header whose first column is 'id'"):
        gldv2_images(tmp_path / "bad.csv", "/gld")
    _folder(tmp_path / "images" / "b", [(8, 8)])
    Image.fromarray(_picture(8, 8, 1)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert folder_images(str(tmp_path / "images")).names == ["a", "b/img_0"]
    Image.fromarray(_picture(8, 8, 1)).save(tmp_path / "images" / "a.png")
    with pytest.raises(ValueError, match="repeated: a"):
        folder_images(str(tmp_path / "images"))


def test_unreadable_image_is_listed_and_the_rest_extracted(tmp_path):
    data = _folder(tmp_path / "data", [(48, 64), (12, 40)])  # the second is tiny: upscaled to 32 px
    # single-channel file
    Image.fromarray(_picture(40, 40, 9)[:, :, 0]).save(data / "img_2_gray.png")
    (data / "img_1b_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    exit_code, _ = _extract(data, tmp_path / "out")
    assert exit_code == 1
    store = open_store(tmp_path / "out" / "set")
    assert store.names == ["img_0", "img_1", "img_2_gray"]
    tiny = store.local("img_1")
    assert (
        len(tiny["scores"]) > 0
        and tiny["locations"][:, 1].max() < 12
        and tiny["locations"][:, 0].max() < 40
    )
    failures = json.loads((tmp_path / "out" / "set" / "failures.json").read_text())
    assert [f["name"] for f in failures] == ["img_1b_broken"] and failures[0]["path"].endswith(
        "img_1b_broken.jpg"
    )
    assert failures[0]["reason"]
    assert (
        store.provenance["num_failures"] == 1
        and store.provenance["checkpoint_sha256"] == "initial-weights"
    )


def test_checkpoint_is_loaded_and_its_hash_recorded(tmp_path):
    data = _folder(tmp_path / "data", [(48, 64)])
    torch.manual_seed(123)
    model = build_model(load_cfg("", [*TINY_MODEL, "MODEL.NUM_CLASSES", "7"]))
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pyth")
    _extract(data, tmp_path / "initial")
    assert (
        _extract(data, tmp_path / "trained", "TEST.WEIGHTS", str(tmp_path / "weights.pyth"))[0] == 0
    )
    store = open_store(tmp_path / "trained" / "set")
    digest = hashlib.sha256((tmp_path / "weights.pyth").read_bytes()).hexdigest()
    assert store.provenance["checkpoint_sha256"] == digest
    initial = open_store(tmp_path / "initial" / "set").global_descriptors()
    assert not np.allclose(store.global_descriptors(), initial, atol=1e-3)


def test_training_only_keys_leave_the_provenance_alone(tmp_path):
    """Stores extracted from one checkpoint with configs that differ only in training keys (losses,
    margin head, class count) hold the same features: the provenance, and so evaluation's check,
    must not tell them apart. A feature key does."""
    from tools.extraction.provenance import difference

    data = _folder(tmp_path / "data", [(48, 64)])
    model = build_model(load_cfg("", [*TINY_MODEL, "MODEL.NUM_CLASSES", "7"]))
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pyth")
    weights = ["TEST.WEIGHTS", str(tmp_path / "weights.pyth"), "MODEL.NUM_CLASSES", "7"]
    _extract(data, tmp_path / "a", *weights)
    _extract(
        data,
        tmp_path / "b",
        *weights,
        "MODEL.HEADS.SCALE",
        "30.0",
        "MODEL.HEADS.MARGIN_TYPE",
        "cosine",
        "MODEL.LOSSES.RECONSTRUCTION_WEIGHT",
        "1.0",
        "MODEL.NUM_CLASSES",
        "12",
        "MODEL.FREEZE_BN",
        "True",
    )
    _extract(data, tmp_path / "c", *weights, "MODEL.HEADS.GEM_P", "4.0")
    stores = {name: open_store(tmp_path / name / "set") for name in "abc"}
    assert stores["a"].provenance == stores["b"].provenance
    _assert_same_store(stores["a"], stores["b"])
    assert (
        difference(stores["a"].provenance, stores["c"].provenance, ())[0]
        == "config.MODEL.HEADS.GEM_P"
    )


def test_revisitop_queries_are_cropped_by_default(tmp_path):
    root = tmp_path / "mini"
    (root / "jpg").mkdir(parents=True)
    for index, name in enumerate(["q0", "d0", "d1"]):
        Image.fromarray(_picture(80, 112, index)).save(root / "jpg" / f"{name}.jpg", quality=95)
    gnd = {
        "imlist": ["d0", "d1"],
        "qimlist": ["q0"],
        "gnd": [{"bbx": [10.4, 20.5, 90.6, 70.2], "easy": [0], "hard": [], "junk": [1]}],
    }
    with open(root / "gnd_mini.pkl", "wb") as handle:
        pickle.dump(gnd, handle)
    options = [*TINY_MODEL, "EXTRACT.DATASET", "mini", "EXTRACT.DATA_ROOT", str(root)]
    exit_code, _ = run_extraction(
        load_cfg("", [*options, "EXTRACT.OUTPUT_DIR", str(tmp_path / "out")])
    )
    assert exit_code == 0
    queries = open_store(tmp_path / "out" / "mini_query")
    assert open_store(tmp_path / "out" / "mini_database").names == ["d0", "d1"]
    assert queries.crop_boxes == {"q0": [10, 20, 91, 70]}  # rounded like PIL's crop
    locations = queries.local("q0")["locations"]
    assert locations[:, 0].max() < 81 and locations[:, 1].max() < 50  # in the 81 x 50 crop's frame
    # the stored query is the crop's: the same as extracting the cropped picture itself
    crop = np.array(
        Image.open(root / "jpg" / "q0.jpg").convert("RGB").crop((10.4, 20.5, 90.6, 70.2))
    )
    (tmp_path / "crop").mkdir()
    Image.fromarray(crop).save(tmp_path / "crop" / "q0.png")
    _extract(tmp_path / "crop", tmp_path / "crop_out")
    np.testing.assert_allclose(
        queries.global_descriptors(),
        open_store(tmp_path / "crop_out" / "set").global_descriptors(),
        atol=1e-5,
    )
    uncropped = run_extraction(
        load_cfg(
            "",
            [
                *options,
                "EXTRACT.OUTPUT_DIR",
                str(tmp_path / "full"),
                "EXTRACT.CROP_QUERIES",
                "False",
            ],
        )
    )
    assert uncropped[0] == 0 and open_store(tmp_path / "full" / "mini_query").crop_boxes == {}


def _command_line(data, out_dir, processes=1):
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        if processes > 1
        else []
    )
    return [
        sys.executable,
        *launcher,
        "tools/extractor.py",
        *_options(data, out_dir, "EXTRACT.SHARD_SIZE", "2"),
    ]


def _run(command, **env):
    environment = dict(os.environ, OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Six images extracted by one process in shards of two: the uninterrupted reference."""
    root = tmp_path_factory.mktemp("sharded")
    data = _folder(root / "data", [(48, 64), (64, 48), (40, 40), (56, 72), (64, 64), (36, 50)])
    result = _run(_command_line(data, root / "one"))
    assert result.returncode == 0, result.stderr[-3000:]
    return data, open_store(root / "one" / "set")


def test_two_process_torchrun_equals_one_process(reference, tmp_path):
    data, one_process = reference
    result = _run(_command_line(data, tmp_path / "two", processes=2))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "two" / "set" / "_shards").exists()
    _assert_same_store(open_store(tmp_path / "two" / "set"), one_process)


def test_killed_run_resumes_without_recomputing_finished_shards(reference, tmp_path, capsys):
    data, uninterrupted = reference
    killed = _run(_command_line(data, tmp_path / "out"), **{ABORT_ENV: "1"})
    assert killed.returncode != 0
    store = tmp_path / "out" / "set"
    assert (Path(shard_folder(store, 0)) / "meta.json").is_file()
    assert not (store / "meta.json").exists() and not Path(shard_folder(store, 1)).exists()
    # refuses to merge an incomplete set of shards
    assert extractor_main(["--merge", str(store)]) == 2
    assert f"shard {shard_folder(store, 1)} is missing" in capsys.readouterr().err
    exit_code, summary = _extract(data, tmp_path / "out", "EXTRACT.SHARD_SIZE", "2")
    assert exit_code == 0
    assert summary["set"]["computed_shards"] == [1, 2] and summary["set"]["images_processed"] == 4
    _assert_same_store(open_store(store), uninterrupted)
    again_code, again = _extract(data, tmp_path / "out", "EXTRACT.SHARD_SIZE", "2")
    # a finished store is not touched
    assert again_code == 0 and again["set"]["images_processed"] == 0


def test_attention_picture_is_written(tmp_path):
    from tools.vis.attention import main as attention_main

    Image.fromarray(_picture(48, 64, 5)).save(tmp_path / "img.png")
    out = tmp_path / "pictures" / "img.png"
    assert attention_main([str(tmp_path / "img.png"), "--out", str(out), *TINY_MODEL]) == 0
    picture = Image.open(out)
    assert picture.format == "PNG" and picture.size[0] > 100
