"""Google Landmarks v2 training lists, the landmark-id -> class-index mapping and the
train/validation split.

Two CSV layouts exist, told apart by their header line:
  ``train_clean.csv``: ``landmark_id,images``, the images being space-separated ids;
  ``train.csv``:       ``id,url,landmark_id``, one image per line.
Image ``abcdef...`` lives at ``train/a/b/c/abcdef....jpg`` under the dataset root.

Landmark ids are sparse (0..203093 for 81313 classes); the classifier needs 0..C-1, so ids are
mapped to class indices in ascending id order; the trainer saves the mapping as
OUT_DIR/class_mapping.json, so that a class index (for example a classifier's prediction) can be
turned back into a landmark id (ClassMapping.load, landmark_id).
"""

import csv
import hashlib
import re

from core.io import read_json, write_json
from datasets.list_dataset import ParseError

CLEAN_HEADER = ["landmark_id", "images"]
FULL_HEADER = ["id", "url", "landmark_id"]
_IMAGE_ID = re.compile(r"[0-9A-Za-z_-]{3,}")  # at least the three characters of the a/b/c folders
_MAPPING_FORMAT = "delg-class-mapping"


def gldv2_image_path(image_id, image_folder="train"):
    """Relative path of a GLDv2 image: ``train/a/b/c/<id>.jpg``."""
    return f"{image_folder}/{image_id[0]}/{image_id[1]}/{image_id[2]}/{image_id}.jpg"


def read_gldv2_csv(path):
    """Return {landmark id: [image ids]} from train_clean.csv or train.csv (detected by the
    header)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        header = [field.strip() for field in header] if header else []
        if header == CLEAN_HEADER:
            return _read_clean_rows(path, rows)
        if header == FULL_HEADER:
            return _read_full_rows(path, rows)
    shown = ",".join(header)
    raise ParseError(
        path,
        1,
        f"expected the header '{','.join(CLEAN_HEADER)}' or '{','.join(FULL_HEADER)}'",
        shown,
    )


def _records(path, rows):
    """Yield (line where the record starts, row) for the non-empty rows. A quote left open makes
    the csv module read the following lines into one field: that is an error at the line where the
    quote opened, showing that line only."""
    start = rows.line_num + 1
    for row in rows:
        if any("\n" in field or "\r" in field for field in row):
            first_line = ",".join(row).splitlines()[0]
            raise ParseError(
                path,
                start,
                f"a quote opened on this line is not closed (the csv reader ran on to line "
                f"{rows.line_num})",
                first_line,
            )
        if row:
            yield start, row
        start = rows.line_num + 1


def _read_clean_rows(path, rows):
    images = {}
    for line, row in _records(path, rows):
        if len(row) != 2:
            raise ParseError(
                path, line, "expected 'landmark_id,image_id image_id ...'", ",".join(row)
            )
        landmark_id = _parse_landmark_id(path, line, row[0], row)
        ids = row[1].split()
        if not ids:
            raise ParseError(
                path, line, "expected at least one image id after the comma", ",".join(row)
            )
        for image_id in ids:
            _check_image_id(path, line, image_id, row)
        images.setdefault(landmark_id, []).extend(ids)
    return images


def _read_full_rows(path, rows):
    images = {}
    for line, row in _records(path, rows):
        if len(row) < 3:  # URLs may hold commas, so the id is the first field and the landmark last
            raise ParseError(path, line, "expected 'id,url,landmark_id'", ",".join(row))
        image_id = row[0].strip()
        _check_image_id(path, line, image_id, row)
        landmark_id = _parse_landmark_id(path, line, row[-1], row)
        images.setdefault(landmark_id, []).append(image_id)
    return images


def _parse_landmark_id(path, line_number, text, row):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ParseError(
            path,
            line_number,
            f"expected a non-negative integer landmark id, not {text!r}",
            ",".join(row),
        )
    return value


def _check_image_id(path, line_number, image_id, row):
    if not _IMAGE_ID.fullmatch(image_id):
        expected = f"expected image ids of at least 3 letters, digits, '_' or '-', not {image_id!r}"
        raise ParseError(path, line_number, expected, ",".join(row))


class ClassMapping:
    """Sparse dataset labels (landmark ids) <-> contiguous class indices, in ascending label
    order."""

    def __init__(self, landmark_ids):
        self.landmark_ids = sorted({int(label) for label in landmark_ids})
        self._index = {label: index for index, label in enumerate(self.landmark_ids)}

    @classmethod
    def identity(cls, num_classes):
        """The mapping of datasets whose labels are class indices already (the seed's lists)."""
        return cls(range(num_classes))

    @property
    def num_classes(self):
        return len(self.landmark_ids)

    def __len__(self):
        return len(self.landmark_ids)

    def __eq__(self, other):
        return isinstance(other, ClassMapping) and self.landmark_ids == other.landmark_ids

    def index(self, landmark_id):
        try:
            return self._index[landmark_id]
        except KeyError:
            raise KeyError(
                f"label {landmark_id} is not one of the {self.num_classes} training classes"
            ) from None

    def landmark_id(self, class_index):
        return self.landmark_ids[class_index]

    def save(self, path):
        write_json(
            path, {"format": _MAPPING_FORMAT, "landmark_ids": self.landmark_ids}, indent=None
        )

    @classmethod
    def load(cls, path):
        data = read_json(path)
        if not isinstance(data, dict) or data.get("format") != _MAPPING_FORMAT:
            raise ValueError(
                f"{path}: not a class mapping (expected a JSON object with format "
                f"'{_MAPPING_FORMAT}')"
            )
        ids = data.get("landmark_ids")
        valid = isinstance(ids, list) and all(type(label) is int for label in ids)
        if not valid or any(a >= b for a, b in zip(ids, ids[1:])):
            raise ValueError(
                f"{path}: 'landmark_ids' must be a list of integers in strictly ascending order"
            )
        return cls(ids)


def split_train_val(items_by_class, val_fraction, seed):
    """Hold out round(val_fraction * n) items of each class (at least one stays in train); return
    (train, val).

    Which items go to validation depends only on (seed, item) through a hash, not on the file order
    or on the other classes, so the split is the same on every machine and survives reordering of
    the CSV.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    train, val = {}, {}
    for label, items in items_by_class.items():
        num_val = min(int(val_fraction * len(items) + 0.5), len(items) - 1)
        if num_val <= 0:
            train[label] = list(items)
            continue
        order = sorted(items, key=lambda item: _split_key(seed, item))
        held_out = set(order[:num_val])
        train[label] = [item for item in items if item not in held_out]
        val[label] = [item for item in items if item in held_out]
    return train, val


def _split_key(seed, item):
    return hashlib.blake2b(f"{seed}/{item}".encode(), digest_size=8).digest()


def to_samples(items_by_class, mapping, item_to_path=lambda item: item):
    """Flatten {label: [items]} into [(relative image path, class index)] in ascending label
    order."""
    samples = []
    for label in sorted(items_by_class):
        class_index = mapping.index(label)
        samples.extend((item_to_path(item), class_index) for item in items_by_class[label])
    return samples


def load_gldv2_split(csv_path, val_fraction, seed, image_folder="train"):
    """Read a GLDv2 CSV; return (train samples, val samples, ClassMapping) with samples (relative
    path, class)."""
    images = read_gldv2_csv(csv_path)
    if not images:
        raise ValueError(f"{csv_path}: no images listed")
    mapping = ClassMapping(images)
    train, val = split_train_val(images, val_fraction, seed)

    def to_path(image_id):
        return gldv2_image_path(image_id, image_folder)

    return to_samples(train, mapping, to_path), to_samples(val, mapping, to_path), mapping
