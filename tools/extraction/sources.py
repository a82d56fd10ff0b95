"""The image sets extraction reads: an image folder, a list file, a GLDv2 index/test CSV, revisitop
datasets.

Each source is an ordered set of images with ``names``, ``path(i)`` (for failure reports) and
``read(i)`` -> (uint8 HxWx3 RGB image, crop box [x1, y1, x2, y2] or None). ``PreparedImages`` wraps
a source for DataLoader workers: it decodes, applies the EXTRACT.MAX_IMAGE_SIZE limit and turns
unreadable images into failure records, so that one bad file never stops an extraction.
"""

import csv
import os
from collections import Counter

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from core.config import ConfigError
from datasets.gldv2 import CLEAN_HEADER, read_gldv2_csv
from datasets.image_io import read_image
from datasets.list_dataset import ParseError, numbered_lines
from datasets.loader import init_worker
from datasets.revisitop import RevisitopDataset, RevisitopImages
from datasets.transforms import resize_longest_side, to_chw_tensor
from tools.extraction.stores import PARTS, part_store_names

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
# smaller images are upscaled: below this a ResNet's block4 map would be empty or degenerate
MIN_IMAGE_SIDE = 32


class PathImages:
    """Images given by file paths; names identify them in the store."""

    def __init__(self, names, paths):
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"image names must be unique; repeated: {', '.join(duplicates[:5])}")
        self.names = list(names)
        self.paths = list(paths)

    def __len__(self):
        return len(self.names)

    def path(self, index):
        return self.paths[index]

    def read(self, index):
        return read_image(self.paths[index]), None


class RevisitopPart:
    """The queries (cropped to their box unless the dataset says otherwise) or the database of a
    revisitop set."""

    def __init__(self, dataset, part):
        self.dataset = dataset
        self.images = RevisitopImages(dataset, part)
        self.names = list(self.images.names)

    def __len__(self):
        return len(self.names)

    def path(self, index):
        return self.dataset.image_path(self.names[index])

    def read(self, index):
        image, _, crop_box = self.images[index]
        return image, crop_box


def _name_of(relative_path):
    return os.path.splitext(relative_path.replace(os.sep, "/"))[0]


def _images_under(root, relative, nothing_found):
    """PathImages of the `relative` paths under root, named by _name_of; ConfigError with the
    message `nothing_found` when there are none."""
    if not relative:
        raise ConfigError(nothing_found)
    return PathImages(
        [_name_of(path) for path in relative], [os.path.join(root, path) for path in relative]
    )


def folder_images(root):
    """Every image file under root (recursively), sorted by relative path; names drop the
    extension."""
    relative = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        relative += [
            os.path.relpath(os.path.join(folder, f), root)
            for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        ]
    relative.sort()
    return _images_under(
        root,
        relative,
        f"EXTRACT.DATA_ROOT {root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found",
    )


def list_images(list_path, root):
    """A list file with one image path per line (relative to root), optionally followed by an
    integer label."""
    relative = []
    for _, text in numbered_lines(list_path):
        parts = text.rsplit(None, 1)
        has_label = len(parts) == 2 and parts[1].lstrip("-").isdigit()
        relative.append(parts[0] if has_label else text)
    return _images_under(
        root,
        relative,
        f"EXTRACT.SPLIT {list_path}: no images listed (expected one image path per line)",
    )


def gldv2_images(csv_path, root):
    """GLDv2 index.csv / test.csv / train.csv: an ``id`` column, or train_clean.csv (the training
    split of the learned re-ranker); image <id> lives at root/a/b/c/<id>.jpg."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = [field.strip() for field in next(rows, [])]
        if header == CLEAN_HEADER:
            ids = [image for images in read_gldv2_csv(csv_path).values() for image in images]
            return _gldv2_paths(ids, root, csv_path)
        if not header or header[0] != "id":
            raise ParseError(
                csv_path,
                1,
                f"expected a header whose first column is 'id', or '{','.join(CLEAN_HEADER)}'",
                ",".join(header),
            )
        ids = []
        for row in rows:
            if not row:
                continue
            image_id = row[0].strip()
            if len(image_id) < 3 or not image_id.replace("_", "").replace("-", "").isalnum():
                raise ParseError(
                    csv_path,
                    rows.line_num,
                    "expected an image id of at least 3 letters or digits",
                    ",".join(row),
                )
            ids.append(image_id)
    return _gldv2_paths(ids, root, csv_path)


def _gldv2_paths(ids, root, csv_path):
    if not ids:
        raise ConfigError(f"EXTRACT.SPLIT {csv_path}: no image ids")
    paths = [os.path.join(root, i[0], i[1], i[2], f"{i}.jpg") for i in ids]
    return PathImages(ids, paths)


def _split_path(split, root):
    if not split:
        raise ConfigError(
            "EXTRACT.SPLIT must name the list or CSV file for EXTRACT.FORMAT list / gldv2"
        )
    for candidate in (split, os.path.join(root, split)):
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(
        f"EXTRACT.SPLIT {split}: no such file (looked in the working directory and in {root})"
    )


def build_sources(cfg):
    """[(store name, source)] for the EXTRACT.* dataset: revisitop sets give a query and a database
    store."""
    extract = cfg.EXTRACT
    root, name, fmt = extract.DATA_ROOT, extract.DATASET, extract.FORMAT
    if not root or not os.path.isdir(root):
        raise ConfigError(
            f"EXTRACT.DATA_ROOT {root!r} is not a folder (the dataset's root is needed)"
        )
    if fmt == "revisitop":
        dataset = RevisitopDataset(
            root,
            name,
            crop_queries=extract.CROP_QUERIES,
            distractors=extract.DISTRACTORS or None,
            distractor_root=extract.DISTRACTOR_ROOT or None,
        )
        return [
            (store_name, RevisitopPart(dataset, part))
            for store_name, part in zip(part_store_names(name), PARTS)
        ]
    if fmt == "folder":
        return [(name, folder_images(root))]
    if fmt == "list":
        return [(name, list_images(_split_path(extract.SPLIT, root), root))]
    if fmt == "gldv2":
        return [(name, gldv2_images(_split_path(extract.SPLIT, root), root))]
    raise ConfigError(f"EXTRACT.FORMAT must be revisitop, folder, list or gldv2, got {fmt!r}")


def prepare_image(image, max_image_size, rounding="half_up", min_size=0):
    """Limit the longest side to max_image_size (EXTRACT.SIZE_ROUNDING rounding); with min_size 0
    upscale images with a side under MIN_IMAGE_SIDE (official, min_size > 0: never upscale)."""
    image = resize_longest_side(image, max_image_size, rounding)
    height, width = image.shape[:2]
    if min_size > 0 or min(height, width) >= MIN_IMAGE_SIDE:
        return image
    factor = MIN_IMAGE_SIDE / min(height, width)
    size = (max(MIN_IMAGE_SIDE, round(width * factor)), max(MIN_IMAGE_SIDE, round(height * factor)))
    return np.array(Image.fromarray(image).resize(size, resample=Image.BILINEAR))


def keep_item(item):
    """collate_fn of the batch_size=None loaders over PreparedImages: the prepared item itself
    (module-level, so loader workers can pickle it)."""
    return item


def item_loader(images, num_workers, pin_memory=False):
    """A DataLoader over PreparedImages (or a Subset of them) yielding one prepared item at a time,
    with the worker init of every loader (datasets.loader.init_worker)."""
    return DataLoader(
        images,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=keep_item,
        worker_init_fn=init_worker,
    )


class PreparedImages(Dataset):
    """Items for the extraction loop: a dict with index, name, and either the prepared pixels or an
    error.

    Pixels are a uint8 [3, H, W] tensor (normalisation runs on the device); ``image_size`` is the
    (height, width) of the image as read (after a query crop), the frame of the stored locations.
    """

    def __init__(self, source, max_image_size, rounding="half_up", min_size=0):
        self.source = source
        self.max_image_size = max_image_size
        self.rounding = rounding
        self.min_size = min_size

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        item = {"index": index, "name": self.source.names[index], "error": None}
        try:
            image, crop_box = self.source.read(index)
        except (
            ValueError,
            OSError,
        ) as error:  # ImageReadError is a ValueError, as is a crop outside the image
            item.update(error=getattr(error, "reason", str(error)), path=self.source.path(index))
            return item
        item.update(
            pixels=to_chw_tensor(
                prepare_image(image, self.max_image_size, self.rounding, self.min_size)
            ),
            image_size=image.shape[:2],
            crop_box=crop_box,
        )
        return item
