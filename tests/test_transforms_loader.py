import logging

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import load_cfg, reset_cfg
from datasets.loader import (
    FailureBudget,
    ImageClassificationDataset,
    TooManyBadImagesError,
    build_train_dataset,
    build_val_dataset,
    build_val_loader,
    collate_skip_failures,
    make_train_loader,
)
from datasets.transforms import Normalizer, TrainTransform, ValTransform, resize_longest_side

IDENTITY = Normalizer([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


@pytest.fixture(autouse=True)
def _restore_config():
    yield
    reset_cfg()


def test_normalizer_orders_channels_before_mean_and_std():
    red = torch.zeros(3, 2, 2, dtype=torch.uint8)
    red[0] = 255
    rgb = Normalizer([0.5, 0.25, 0.125], [0.5, 0.5, 0.25], "RGB")(red)
    torch.testing.assert_close(rgb[:, 0, 0], torch.tensor([1.0, -0.5, -0.5]))
    # mean/std given in BGR order
    bgr = Normalizer([0.125, 0.25, 0.5], [0.25, 0.5, 0.5], "BGR")(red)
    torch.testing.assert_close(bgr[:, 0, 0], torch.tensor([-0.5, -0.5, 1.0]))
    with pytest.raises(ValueError, match="RGB"):
        Normalizer([0, 0, 0], [1, 1, 1], "RBG")


def _horizontal_ramp(height, width):
    ramp = np.linspace(0, 255, width).astype(np.uint8)
    return np.repeat(np.repeat(ramp[None, :, None], height, axis=0), 3, axis=2)


def test_train_transform_crops_to_a_square_and_flips_only_when_asked():
    torch.manual_seed(0)
    image = _horizontal_ramp(60, 100)
    never = [TrainTransform(8, IDENTITY, flip=False)(image) for _ in range(20)]
    assert all(out.shape == (3, 8, 8) and out.dtype == torch.float32 for out in never)
    assert all(out[0, 4, -1] > out[0, 4, 0] for out in never)  # the ramp still rises left to right
    flipped = [TrainTransform(8, IDENTITY, flip=True)(image) for _ in range(20)]
    assert 0 < sum(bool(out[0, 4, -1] < out[0, 4, 0]) for out in flipped) < 20


def test_val_transform_resizes_the_short_side_and_takes_the_centre():
    image = np.zeros((40, 20, 3), dtype=np.uint8)
    image[:10] = (255, 0, 0)
    image[10:30] = (0, 0, 255)
    image[30:] = (0, 255, 0)
    out = ValTransform(10, IDENTITY)(image)
    assert out.shape == (3, 10, 10)
    assert torch.all(out[2, 1:-1] > 0.9) and torch.all(out[0, 1:-1] < 0.1)


def test_resize_longest_side_never_upscales():
    image = np.zeros((30, 50, 3), dtype=np.uint8)
    assert resize_longest_side(image, 20).shape == (12, 20, 3)
    assert resize_longest_side(image, 50) is image and resize_longest_side(image, 500) is image


def _save_noise(path, seed, size=12):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(
        np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ).save(path)


def test_corrupt_and_missing_images_are_skipped_logged_and_counted(tmp_path, caplog):
    for index in range(3):
        _save_noise(tmp_path / f"good{index}.jpg", index)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    samples = [
        ("good0.jpg", 0),
        ("corrupt.jpg", 1),
        ("good1.jpg", 2),
        ("missing.jpg", 3),
        ("good2.jpg", 4),
    ]
    dataset = ImageClassificationDataset(tmp_path, samples, ValTransform(8, IDENTITY))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collate_skip_failures)
    with caplog.at_level(logging.WARNING, logger="datasets.loader"):
        images, labels, num_failed = next(iter(loader))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 2, 4] and num_failed == 2
    logged = caplog.text
    assert str(tmp_path / "corrupt.jpg") in logged and str(tmp_path / "missing.jpg") in logged
    assert "does not exist" in logged

    budget = FailureBudget(max_fraction=0.5, min_images=1)
    budget.update(len(labels) + num_failed, num_failed)  # 2 of 5
    with pytest.raises(
        TooManyBadImagesError, match=r"6 of 10 images \(60.00%\).*MAX_BAD_IMAGE_FRACTION = 0.5"
    ):
        budget.update(5, 4)


def test_collate_of_a_batch_where_everything_failed():
    images, labels, num_failed = collate_skip_failures([None, None])
    assert images.numel() == 0 and labels.numel() == 0 and num_failed == 2


def test_failure_budget_allows_a_few_early_failures_then_the_fraction():
    budget = FailureBudget(max_fraction=0.01, min_images=1000)
    budget.update(32, 10)  # 10 <= 0.01 * 1000
    with pytest.raises(TooManyBadImagesError):
        budget.update(32, 1)
    strict = FailureBudget(max_fraction=0.0, min_images=1000)
    strict.update(100, 0)
    with pytest.raises(TooManyBadImagesError):
        strict.update(1, 1)
    restored = FailureBudget(0.5)
    restored.load_state_dict(budget.state_dict())
    assert (restored.seen, restored.failed) == (64, 11)


def _gldv2_root(tmp_path):
    """3 landmarks (ids 30, 10, 20) x 5 images in the GLDv2 layout."""
    lines = ["landmark_id,images"]
    for landmark in (30, 10, 20):
        ids = [f"{landmark:02d}{index}abcdef" for index in range(5)]
        for image_id in ids:
            _save_noise(
                tmp_path / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg",
                landmark,
            )
        lines.append(f"{landmark},{' '.join(ids)}")
    (tmp_path / "train_clean.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def _cfg(root, *opts):
    base = [
        "TRAIN.DATA_ROOT",
        str(root),
        "TRAIN.IM_SIZE",
        "8",
        "TEST.IM_SIZE",
        "8",
        "TRAIN.BATCH_SIZE",
        "4",
    ]
    return load_cfg(opts=base + ["TEST.BATCH_SIZE", "2", "DATA_LOADER.PIN_MEMORY", "False", *opts])


def _epoch(loader, epoch=0):
    loader.sampler.set_epoch(epoch)
    return [(images, labels, failed) for images, labels, failed in loader]


def test_gldv2_builders_split_and_loaders_count_failures_across_workers(tmp_path):
    cfg = _cfg(_gldv2_root(tmp_path), "TRAIN.VAL_FRACTION", "0.2", "DATA_LOADER.NUM_WORKERS", "2")
    train, mapping = build_train_dataset(cfg)
    val, val_mapping = build_val_dataset(cfg)
    assert mapping.landmark_ids == [10, 20, 30] and val_mapping == mapping
    assert len(train) == 12 and len(val) == 3 and sorted(val.labels.tolist()) == [0, 1, 2]
    assert not set(map(train.image_path, range(12))) & set(map(val.image_path, range(3)))

    (tmp_path / train.image_path(5)).unlink()
    batches = _epoch(make_train_loader(train, 4, 2, collate_skip_failures, seed=7))
    assert len(batches) == 3 and sum(failed for _, _, failed in batches) == 1
    assert sum(len(labels) for _, labels, _ in batches) == 11

    again = _epoch(make_train_loader(train, 4, 2, collate_skip_failures, seed=7))
    for (images, labels, _), (images_again, labels_again, _) in zip(batches, again):
        assert torch.equal(labels, labels_again) and torch.equal(images, images_again)

    halves = [build_val_loader(cfg, val, rank, world_size=2) for rank in (0, 1)]
    # none repeated
    assert [sum(len(labels) for _, labels, _ in loader) for loader in halves] == [2, 1]


def test_list_builders_and_test_split_labels(tmp_path):
    for index in range(4):
        _save_noise(tmp_path / "img" / f"{index}.jpg", index)
    (tmp_path / "train_list.txt").write_text("img/0.jpg 0\nimg/1.jpg 2\nimg/2.jpg 2\n")
    (tmp_path / "val_list.txt").write_text("img/3.jpg 1\n")
    cfg = _cfg(
        tmp_path,
        "TRAIN.SPLIT",
        "train_list.txt",
        "TRAIN.VAL_FRACTION",
        "0.0",
        "TEST.SPLIT",
        "val_list.txt",
    )
    train, mapping = build_train_dataset(cfg)
    # seed labels are kept as they are
    assert mapping.num_classes == 3 and train.labels.tolist() == [0, 2, 2]
    val, _ = build_val_dataset(cfg)
    assert val.labels.tolist() == [1] and val[0][0].shape == (3, 8, 8)

    (tmp_path / "val_list.txt").write_text("img/3.jpg 9\n")
    with pytest.raises(ValueError, match="TEST.SPLIT .*val_list.txt.*label 9"):
        build_val_dataset(cfg)
    with pytest.raises(ValueError, match="lower TRAIN.BATCH_SIZE"):
        make_train_loader(train, 4, 0, collate_skip_failures, seed=0)


def test_missing_split_file_names_the_key_and_the_default_root():
    cfg = load_cfg(opts=["TRAIN.DATASET", "no_such_dataset"])
    with pytest.raises(
        FileNotFoundError, match=r"TRAIN.SPLIT: .*datasets/data/no_such_dataset/train_clean.csv"
    ):
        build_train_dataset(cfg)
