"""Fault injection on training data: unreadable images against the bad-image budget."""

from pathlib import Path

import pytest

from core import trainer
from core.config import load_cfg
from tests.tiny import TINY_PRESET, generate_tiny_world, tiny_training_options


@pytest.fixture(scope="module")
def damaged_root(tmp_path_factory):
    """The tiny training set with every eighth image (12.5 %) overwritten by garbage."""
    root = generate_tiny_world(tmp_path_factory.mktemp("baddata")) / "train"
    images = sorted(Path(root).rglob("*.jpg"))
    for image in images[::8]:
        image.write_bytes(b"not a jpeg")
    return root


def test_bad_image_budget_stops_a_small_run(damaged_root, tmp_path):
    opts = tiny_training_options(
        damaged_root, tmp_path, "OPTIM.MAX_ITER", "8", "TRAIN.MAX_BAD_IMAGE_FRACTION", "0.01"
    )
    assert trainer.train_in_process(load_cfg(TINY_PRESET, opts).dump()) == trainer.EXIT_BAD_IMAGES
