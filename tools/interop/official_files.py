"""One image's features in the official DELF/DELG files, and the conventions that map them to ours.

The official ``extract_features.py`` writes ``<name>.delg_global`` (a serialized DatumProto of shape
[D]) and ``<name>.delg_local`` (a serialized DelfFeatures; DELF's ``.delf`` files are the same
message) per image. Conventions, official -> ours (the store, datasets/features.py):

- location: (y, x) floats in pixels of the image the features were extracted from (a query: its
  crop) -> (x, y), the same numbers swapped;
- scale: 1 / pyramid scale -> the pyramid scale (see ``pyramid_scales``);
- strength: the attention score -> ``scores``; orientation: always 0, not stored;
- descriptor: a DatumProto of shape [d], L2-normalised float32 -> a row of ``descriptors``.

Every value is a float32 on both sides, so a store -> files -> store round trip is exact.
"""

import os

import numpy as np
from google.protobuf.message import DecodeError

from core.io import atomic_path
from tools.interop.delf_pb import DatumProto, DelfFeatures

GLOBAL_EXTENSION = ".delg_global"
LOCAL_EXTENSION = ".delg_local"
DELF_EXTENSION = ".delf"  # DELF's local features: the same DelfFeatures message
# the official DELG pyramid (delg_gld_config.pbtxt) as the float32 values TensorFlow computes
OFFICIAL_SCALES = (0.25, 0.35355338, 0.5, 0.70710677, 1.0, 1.4142135, 2.0)


class OfficialFileError(ValueError):
    """A file that is missing or not a valid official feature file; the message names the file and
    says why (``path`` and ``reason`` hold both parts)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


# ----------------------------------------------------------------------------------------- scales
def official_scales(scales):
    """Pyramid scales s -> the official per-feature value 1 / s (float32)."""
    return (1.0 / np.asarray(scales, dtype=np.float64)).astype(np.float32)


def pyramid_scales(values, known=OFFICIAL_SCALES):
    """Official values 1 / s -> pyramid scales s (float32).

    A value that a known scale k exports to exactly (``official_scales(k) == value``) gives k back
    bit for bit; others give float32(1 / value). Without the known scales the reciprocal of a
    float32 reciprocal misses the original by one unit in the last place for about one scale in
    six.
    """
    values = np.asarray(values, dtype=np.float32)
    scales = (1.0 / values.astype(np.float64)).astype(np.float32)
    known = np.unique(np.asarray(known, dtype=np.float32))
    if len(known) and len(values):
        exported = official_scales(known)
        match = values[:, None] == exported[None, :]
        found = match.any(axis=1)
        scales[found] = known[match[found].argmax(axis=1)]
    return scales


# ------------------------------------------------------------------------------------------ names
def _file_key(name):
    """The file a name gives, relative to its folder ('./a' and 'a' give 'a'); None for a name
    that leads outside the folder (absolute, '..', empty)."""
    if name and os.sep not in name and name not in (".", ".."):
        return name  # the common case, without the slower normpath
    key = os.path.normpath(name) if name else ".."
    if os.path.isabs(key) or key == "." or key == ".." or key.startswith(".." + os.sep):
        return None
    return key


def check_file_names(names, folder, where):
    """Raise ValueError naming both images when two names give one file under folder, or naming
    the image whose name leads out of folder; where says whose list the names are."""
    seen = {}
    for index, name in enumerate(names):
        key = _file_key(name)
        if key is None:
            raise ValueError(f"{where}: image {index} is named {name!r}, not a file under {folder}")
        if key in seen:
            first = seen[key]
            raise ValueError(
                f"{where}: images {first} ({names[first]!r}) and {index} ({name!r}) have one file "
                f"name ({os.path.join(folder, key)}); one would overwrite the other: rename one"
            )
        seen[key] = index


# ---------------------------------------------------------------------------------------- tensors
def _datum(values):
    datum = DatumProto()
    values = np.asarray(values, dtype=np.float32)
    datum.shape.dim.extend(values.shape)
    datum.float_list.value.extend(values.ravel().tolist())
    return datum


def _datum_array(datum, path, what):
    if datum.WhichOneof("kind_oneof") != "float_list":
        kind = datum.WhichOneof("kind_oneof") or "no values"
        raise OfficialFileError(path, f"{what} holds {kind}, expected a float_list")
    values = np.asarray(datum.float_list.value, dtype=np.float32)
    shape = tuple(int(dim) for dim in datum.shape.dim) or (len(values),)
    if int(np.prod(shape)) != len(values):
        raise OfficialFileError(path, f"{what} has shape {list(shape)} but {len(values)} values")
    return values.reshape(shape)


def _parse(message_class, path):
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise OfficialFileError(path, f"cannot be read ({error.strerror})") from None
    try:
        return message_class.FromString(data)
    except DecodeError as error:
        raise OfficialFileError(
            path, f"not a serialized {message_class.DESCRIPTOR.name} ({error})"
        ) from None


def _write(path, message):
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(message.SerializeToString())


# ----------------------------------------------------------------------------------- global files
def write_global(path, descriptor):
    """Write a [D] global descriptor as a .delg_global file."""
    descriptor = np.asarray(descriptor, dtype=np.float32)
    if descriptor.ndim != 1:
        raise ValueError(f"{path}: a global descriptor is one vector, got shape {descriptor.shape}")
    _write(path, _datum(descriptor))


def read_global(path):
    """The [D] float32 global descriptor of a .delg_global file."""
    values = _datum_array(_parse(DatumProto, path), path, "the global descriptor")
    if values.ndim != 1 or not len(values):
        raise OfficialFileError(
            path, f"the global descriptor has shape {list(values.shape)}, expected [D] with D > 0"
        )
    if not np.all(np.isfinite(values)):
        raise OfficialFileError(path, "the global descriptor holds non-finite values")
    return values


# ------------------------------------------------------------------------------------ local files
def write_local(path, locations, scales, scores, descriptors):
    """Write one image's local features (our conventions: locations (x, y), pyramid scales) as a
    .delg_local / .delf file in the official conventions."""
    locations = np.asarray(locations, dtype=np.float32).reshape(-1, 2)
    inverse = official_scales(scales)
    scores = np.asarray(scores, dtype=np.float32)
    descriptors = np.asarray(descriptors, dtype=np.float32)
    if not len(locations) == len(inverse) == len(scores) == len(descriptors):
        raise ValueError(f"{path}: local feature arrays of different lengths")
    features = DelfFeatures()
    dim = descriptors.shape[1] if descriptors.ndim == 2 else 0
    # Python floats hold float32 values exactly; converting whole arrays at once is the fast path
    columns = zip(locations.tolist(), inverse.tolist(), scores.tolist(), descriptors.tolist())
    for (x, y), scale, score, descriptor in columns:
        feature = features.feature.add(x=x, y=y, scale=scale, orientation=0.0, strength=score)
        feature.descriptor.shape.dim.append(dim)
        feature.descriptor.float_list.value.extend(descriptor)
    _write(path, features)


def _descriptor_rows(features, path):
    """[n, d] float32 from the features' DatumProto descriptors (one array call: per-feature
    conversion costs most of the reading time)."""
    datums = [feature.descriptor for feature in features]
    for index, datum in enumerate(datums):
        if datum.WhichOneof("kind_oneof") != "float_list":
            _datum_array(datum, path, f"feature {index}'s descriptor")  # raises, naming the fault
    lengths = {len(datum.float_list.value) for datum in datums}
    shapes = {tuple(datum.shape.dim) for datum in datums} - {()}
    if len(lengths) > 1 or (shapes and shapes != {tuple(lengths)}):
        found = sorted(map(list, shapes)) or sorted(lengths)
        raise OfficialFileError(path, f"descriptors of shapes {found}, expected one shape [d]")
    if not datums:
        return np.zeros((0, 0), np.float32)
    return np.array([datum.float_list.value for datum in datums], dtype=np.float32)


def read_local(path, known_scales=OFFICIAL_SCALES, expected_count=None):
    """One image's local features in our conventions: locations [n, 2] (x, y), scales [n] (pyramid
    scales, see pyramid_scales), scores [n], descriptors [n, d], all float32.

    expected_count: the number of features the writer recorded (export_info.json), if known. A
    DelfFeatures message cut at a feature boundary still parses, so only a recorded count shows
    that features are missing."""
    features = _parse(DelfFeatures, path).feature
    if expected_count is not None and len(features) != expected_count:
        raise OfficialFileError(
            path,
            f"{len(features)} features, but {expected_count} were written (export_info.json): "
            "the file is truncated or was replaced",
        )
    descriptors = _descriptor_rows(features, path)
    fields = np.array(
        [(f.x, f.y, f.scale, f.strength) for f in features], dtype=np.float32
    ).reshape(len(features), 4)
    if not (np.all(np.isfinite(fields)) and np.all(np.isfinite(descriptors))):
        raise OfficialFileError(path, "non-finite feature values")
    if np.any(fields[:, 2] <= 0):
        raise OfficialFileError(path, "a feature scale is not positive (expected 1 / scale)")
    return {
        "locations": np.ascontiguousarray(fields[:, :2]),
        "scales": pyramid_scales(fields[:, 2], known_scales),
        "scores": np.ascontiguousarray(fields[:, 3]),
        "descriptors": descriptors,
    }
