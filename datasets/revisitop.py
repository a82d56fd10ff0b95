"""Revisited Oxford / Paris (revisitop): ground truth, database and query images, query crops, +1M
distractors.

Layout of a dataset folder ``<root>``: ``gnd_<name>.pkl`` and ``jpg/<image name>.jpg``. The ground
truth is a dict with ``imlist`` (database names), ``qimlist`` (query names) and ``gnd`` (one dict
per query: ``bbx``
[x1, y1, x2, y2] floats, ``easy`` / ``hard`` / ``junk`` indices into imlist).

Queries are cropped to their box by default: the benchmark's protocol, whose own example crops with
PIL, i.e. each coordinate rounded with Python's round(). Extracting whole query images inflates the
results.
"""

import logging
import os

import numpy as np
from torch.utils.data import Dataset

from datasets.image_io import read_image
from datasets.safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

_INDEX_KEYS = ("easy", "hard", "junk")


class GroundTruthError(ValueError):
    """A ground-truth file that does not have the revisitop structure; the message names the file
    and entry."""


def gnd_path(root, name):
    return os.path.join(root, f"gnd_{name}.pkl")


def load_ground_truth(path):
    """Read a gnd_<name>.pkl through the restricted unpickler and check its structure; return the
    dict."""
    gnd = safe_load_pickle(path)
    if not isinstance(gnd, dict):
        raise GroundTruthError(
            f"{path}: expected a dict with imlist, qimlist and gnd, got {type(gnd).__name__}"
        )
    missing = [key for key in ("imlist", "qimlist", "gnd") if key not in gnd]
    if missing:
        raise GroundTruthError(
            f"{path}: missing key(s) {', '.join(missing)} (expected imlist, qimlist and gnd)"
        )
    for key in ("imlist", "qimlist"):
        if not isinstance(gnd[key], (list, tuple)) or not all(
            isinstance(name, str) for name in gnd[key]
        ):
            raise GroundTruthError(f"{path}: '{key}' must be a list of image names (strings)")
    if not isinstance(gnd["gnd"], (list, tuple)) or len(gnd["gnd"]) != len(gnd["qimlist"]):
        raise GroundTruthError(
            f"{path}: 'gnd' must be a list with one entry per query ({len(gnd['qimlist'])})"
        )
    for query_index, entry in enumerate(gnd["gnd"]):
        _check_entry(path, query_index, entry, len(gnd["imlist"]))
    return gnd


def _check_entry(path, query_index, entry, database_size):
    where = f"{path}: gnd[{query_index}]"
    if not isinstance(entry, dict):
        raise GroundTruthError(f"{where} must be a dict with bbx, easy, hard and junk")
    missing = [key for key in ("bbx", *_INDEX_KEYS) if key not in entry]
    if missing:
        raise GroundTruthError(
            f"{where} lacks {', '.join(missing)} (expected bbx, easy, hard and junk)"
        )
    box = np.asarray(entry["bbx"], dtype=np.float64).ravel() if _is_numeric(entry["bbx"]) else None
    if (
        box is None
        or box.size != 4
        or not np.all(np.isfinite(box))
        or box[2] <= box[0]
        or box[3] <= box[1]
    ):
        raise GroundTruthError(
            f"{where}['bbx'] must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2, got {entry['bbx']}"
        )
    for key in _INDEX_KEYS:
        indices = np.asarray(entry[key]).ravel()
        if indices.size and not np.issubdtype(indices.dtype, np.integer):
            raise GroundTruthError(
                f"{where}['{key}'] must hold integer indices into imlist, got {indices.dtype}"
            )
        outside = indices[(indices < 0) | (indices >= database_size)]
        if outside.size:
            raise GroundTruthError(
                f"{where}['{key}'] holds index {int(outside[0])}, outside imlist "
                f"(0..{database_size - 1})"
            )


def _is_numeric(value):
    try:
        np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def round_box(box):
    """[x1, y1, x2, y2] floats -> ints rounded with Python's round(), exactly as PIL's Image.crop
    does."""
    return [int(round(float(value))) for value in box]


def clip_box(box, width, height):
    """Clip an integer box to the image; raise ValueError when nothing is left."""
    x1, y1, x2, y2 = box
    clipped = [
        min(max(x1, 0), width),
        min(max(y1, 0), height),
        min(max(x2, 0), width),
        min(max(y2, 0), height),
    ]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise ValueError(f"crop box {box} lies outside the {width}x{height} image")
    return clipped


def read_distractor_list(path):
    """revisitop1m-style list: one image path per line, relative to the distractor folder."""
    with open(path, encoding="utf-8") as handle:
        names = [line.strip() for line in handle]
    return [name for name in names if name and not name.startswith("#")]


class RevisitopDataset:
    """One revisitop dataset (roxford5k, rparis6k, synth, ...), optionally with distractors in the
    database."""

    def __init__(
        self,
        root,
        name,
        crop_queries=True,
        distractors=None,
        distractor_root=None,
        reader=read_image,
    ):
        self.root = str(root)
        self.name = name
        self.crop_queries = crop_queries
        self.reader = reader
        ground_truth = load_ground_truth(gnd_path(self.root, name))
        self.gnd = ground_truth["gnd"]
        self.query_names = list(ground_truth["qimlist"])
        self.query_boxes = [round_box(entry["bbx"]) for entry in self.gnd]
        self.database_names = list(ground_truth["imlist"])
        self.num_benchmark_images = len(self.database_names)
        self._distractor_paths = {}
        if distractors:
            self._add_distractors(distractors, distractor_root)
        if not crop_queries:
            logger.warning(
                "%s: queries are NOT cropped to their bounding boxes; the benchmark's protocol "
                "crops them and results on full query images are not comparable to published "
                "numbers",
                name,
            )

    def _add_distractors(self, list_path, distractor_root):
        folder = (
            str(distractor_root) if distractor_root else os.path.dirname(os.path.abspath(list_path))
        )
        names = read_distractor_list(list_path)
        clashes = set(names) & (set(self.database_names) | set(self.query_names))
        if clashes:
            raise ValueError(
                f"{list_path}: distractor names clash with {self.name} images, e.g. "
                f"{min(clashes)!r}"
            )
        self._distractor_paths = {name: os.path.join(folder, name) for name in names}
        self.database_names.extend(names)

    def image_path(self, name):
        """jpg/<name>.jpg under root for benchmark images; distractors live under their own
        folder."""
        distractor = self._distractor_paths.get(name)
        return (
            distractor if distractor is not None else os.path.join(self.root, "jpg", f"{name}.jpg")
        )

    def read_query(self, index):
        """Return (uint8 HxWx3 image, crop box [x1, y1, x2, y2] applied, or None when not
        cropping)."""
        image = self.reader(self.image_path(self.query_names[index]))
        if not self.crop_queries:
            return image, None
        height, width = image.shape[:2]
        try:
            x1, y1, x2, y2 = clip_box(self.query_boxes[index], width, height)
        except ValueError as error:
            raise ValueError(
                f"{self.name} query {index} ({self.query_names[index]}): {error}"
            ) from None
        return np.ascontiguousarray(image[y1:y2, x1:x2]), [x1, y1, x2, y2]

    def read_database(self, index):
        return self.reader(self.image_path(self.database_names[index]))


class RevisitopImages(Dataset):
    """Torch Dataset over the queries or the database; items (uint8 HxWx3 image, name, crop box or
    None)."""

    def __init__(self, dataset, part):
        if part not in ("query", "database"):
            raise ValueError(f"part must be 'query' or 'database', got {part!r}")
        self.dataset = dataset
        self.part = part
        self.names = dataset.query_names if part == "query" else dataset.database_names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, index):
        if self.part == "query":
            image, crop_box = self.dataset.read_query(index)
            return image, self.names[index], crop_box
        return self.dataset.read_database(index), self.names[index], None
