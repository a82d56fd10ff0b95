"""Model weights from files: ImageNet ResNets (torchvision or pycls), seed DELG checkpoints and our
own.

Every file is read with ``torch.load(weights_only=True)``: a checkpoint can hold tensors, numbers
and strings but can never run code. Each format has an explicit conversion to this framework's
parameter names (see modeling/delg.py: backbone.*, pool.p, whiten.*, margin.*, local_head.*,
attention_classifier.*), and every load logs a report: loaded, dropped by the conversion, classifier
left out, missing, unexpected.

Rules: a shape mismatch is an error (the file does not fit the config), except for the classifier
layers when only
the number of classes differs (fine-tuning on another dataset): those are left out with a line.
Missing or unexpected backbone tensors are an error too (wrong depth or width); missing head tensors
are expected when the file is an ImageNet backbone and are reported.
"""

import os
import pickle
import re
from dataclasses import dataclass, field

import torch

FORMAT_NAMES = {
    "ours": "a checkpoint of this framework",
    "seed": "a seed DELG checkpoint (pycls model_state)",
    "torchvision": "a torchvision ImageNet ResNet",
    "pycls": "a pycls ImageNet ResNet",
}


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the model; the message names the file and
    the keys."""


# ------------------------------------------------------------------------------------------ reading
def read_checkpoint(path):
    """The object stored in path, loaded on the CPU with weights_only=True."""
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(
            f"{path}: refused: not a PyTorch weights file, or one that stores Python objects which "
            f"could run code when loaded ({refusal_reason(error)}); it was not loaded. Use a file "
            "of tensors only (a state_dict saved by torch.save)"
        ) from None
    except Exception as error:  # truncated zip, wrong magic number, I/O errors
        raise WeightsError(
            f"{path}: unreadable as a PyTorch file ({type(error).__name__}: {error})"
        ) from None


def refusal_reason(error):
    """What torch's weights_only unpickler refused ('the global posix.system'), without its advice
    to load with weights_only=False or to allow-list the global, either of which would run the
    file's code."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"the global {found.group(1)}" if found else "not a file of tensors and plain data"


def state_dict_of(checkpoint, path="checkpoint"):
    """The parameter dict inside a checkpoint: ours ("model"), pycls/seed ("model_state"),
    "state_dict", or bare.

    Wrapper prefixes of DistributedDataParallel ("module.") and torch.compile ("_orig_mod.") are
    removed.
    """
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: expected a dict of tensors, found {type(checkpoint).__name__}")
    for key in ("model", "model_state", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state = {}
    for key, value in checkpoint.items():
        if not torch.is_tensor(value):
            raise WeightsError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict"
            )
        state[re.sub(r"^(module\.|_orig_mod\.)+", "", key)] = value
    return state


def detect_format(state):
    """ "ours", "seed", "torchvision", "pycls", or None, from the key names."""
    keys = state.keys()
    if any(key.startswith("backbone.") for key in keys):
        return "ours"
    if any(key.startswith("globalmodel.") for key in keys):
        return "seed"
    if "conv1.weight" in keys and any(key.startswith("layer1.") for key in keys):
        return "torchvision"
    if "stem.conv.weight" in keys and any(key.startswith("s1.") for key in keys):
        return "pycls"
    return None


# -------------------------------------------------------------------------------------- conversions
# Each returns (converted state dict, {dropped key: reason}).
def convert_ours(state):
    return dict(state), {}


def convert_torchvision_resnet(state):
    """torchvision ResNet -> backbone.*; the ImageNet classifier (fc.*) is dropped."""
    converted, dropped = {}, {}
    for key, value in state.items():
        if key.startswith("fc."):
            dropped[key] = "ImageNet classifier"
        else:
            converted[f"backbone.{key}"] = value
    return converted, dropped


_PYCLS_STEM = {"stem.conv.": "conv1.", "stem.bn.": "bn1."}
_PYCLS_BLOCK = re.compile(r"^s(\d+)\.b(\d+)\.(.+)$")
_PYCLS_BLOCK_PARTS = {
    "proj.": "downsample.0.",
    "bn.": "downsample.1.",
    "f.a.": "conv1.",
    "f.a_bn.": "bn1.",
    "f.b.": "conv2.",
    "f.b_bn.": "bn2.",
    "f.c.": "conv3.",
    "f.c_bn.": "bn3.",
}


def pycls_backbone_key(key):
    """Our backbone name for a pycls ResNet key (stem.conv -> conv1, s3.b2.f.a_bn -> layer3.1.bn1,
    ...), or None."""
    for old, new in _PYCLS_STEM.items():
        if key.startswith(old):
            return "backbone." + new + key[len(old) :]
    match = _PYCLS_BLOCK.match(key)
    if match:
        stage, block, rest = match.groups()
        for old, new in _PYCLS_BLOCK_PARTS.items():
            if rest.startswith(old):
                return f"backbone.layer{stage}.{int(block) - 1}.{new}{rest[len(old) :]}"
    return None


def convert_pycls_resnet(state):
    """pycls ImageNet ResNet -> backbone.*; the ImageNet classifier (head.*) is dropped."""
    converted, dropped = {}, {}
    for key, value in state.items():
        new = pycls_backbone_key(key)
        if new is not None:
            converted[new] = value
        elif key.startswith("head."):
            dropped[key] = "ImageNet classifier"
        else:
            converted[key] = value  # reported as unexpected
    return converted, dropped


# seed module -> ours: Delg.globalmodel (pycls ResNet + GlobalHead), desc_cls (Arcface), localmodel
# (SpatialAttention2d), att_cls (ResHead: avg-pool + fc)
_SEED_HEADS = {
    "globalmodel.head.pool.": "pool.",
    "globalmodel.head.fc.": "whiten.",
    "desc_cls.": "margin.",
    "localmodel.": "local_head.attention.",
    "att_cls.fc.": "attention_classifier.",
}


def convert_seed_checkpoint(state):
    """Seed DELG checkpoint -> ours, every key renamed explicitly; unknown keys are kept (reported
    as unexpected)."""
    converted = {}
    for key, value in state.items():
        new = None
        if key.startswith("globalmodel.") and not key.startswith("globalmodel.head."):
            new = pycls_backbone_key(key[len("globalmodel.") :])
        for old, replacement in _SEED_HEADS.items():
            if key.startswith(old):
                new = replacement + key[len(old) :]
        converted[new or key] = value
    return converted, {}


CONVERTERS = {
    "ours": convert_ours,
    "seed": convert_seed_checkpoint,
    "torchvision": convert_torchvision_resnet,
    "pycls": convert_pycls_resnet,
}


# ------------------------------------------------------------------------------------------ loading
@dataclass
class LoadReport:
    path: str
    source: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    dropped: dict = field(default_factory=dict)
    skipped_classifier: list = field(default_factory=list)  # (key, file shape, model shape)
    total: int = 0
    unused: list = field(default_factory=list)  # model tensors the caller does not use

    def lines(self):
        lines = [
            f"weights {self.path} ({FORMAT_NAMES[self.source]}): loaded {len(self.loaded)} of "
            f"{self.total} model tensors"
        ]
        if self.unused:
            lines[0] += (
                f" (the classifiers, {len(self.unused)} tensors, play no part here and are not "
                "counted)"
            )
        if self.dropped:
            reasons = sorted(set(self.dropped.values()))
            lines.append(
                f"  dropped by the conversion: {_summary(self.dropped)} ({'; '.join(reasons)})"
            )
        for key, file_shape, model_shape in self.skipped_classifier:
            lines.append(
                f"  classifier left out: {key} is {file_shape} in the file, {model_shape} in the "
                "model (another number of classes); it keeps its initialisation"
            )
        if self.missing:
            lines.append(
                f"  missing from the file, left at initialisation: {_summary(self.missing)}"
            )
        if self.unexpected:
            lines.append(f"  unexpected in the file, ignored: {_summary(self.unexpected)}")
        return lines


def _leave_out(report, unused):
    """Take the tensors the caller does not use out of the report's counts and lines."""
    report.unused = sorted(unused)
    report.total -= len(unused)
    report.loaded = [key for key in report.loaded if key not in unused]
    report.missing = [key for key in report.missing if key not in unused]
    report.skipped_classifier = [e for e in report.skipped_classifier if e[0] not in unused]


def _summary(keys, shown=6):
    """ "N tensors: a, b" or, for long lists, "N tensors (backbone.layer1 10, pool 1, ...): the
    first few, ..."."""
    keys = sorted(keys)
    if len(keys) <= shown:
        return f"{len(keys)} tensors: {', '.join(keys)}"
    groups = {}
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[:2]) if parts[0] == "backbone" else parts[0]
        groups[group] = groups.get(group, 0) + 1
    by_group = ", ".join(f"{group} {count}" for group, count in groups.items())
    return f"{len(keys)} tensors ({by_group}): {', '.join(keys[:shown])}, ..."


def _shape(tensor):
    return list(tensor.shape)


def _is_backbone(key):
    return key.startswith("backbone.")


def _counts(key):
    # absent from old checkpoints; harmless to keep at zero
    return not key.endswith("num_batches_tracked")


def load_weights(model, path, log=print, strict=False, unused=()):
    """Load a weights file of any supported format into model, log the report, and return it
    (LoadReport).

    Raises WeightsError for shape mismatches (other than the classifier's class count) and for
    missing or unexpected backbone tensors; with strict=True also for missing or unexpected head
    tensors (extraction). unused: model tensors the caller does not use (the classifiers at
    extraction), loaded when they fit but left out of the counts and the report.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # torch.compile
    state = state_dict_of(read_checkpoint(path), path)
    source = detect_format(state)
    if source is None:
        first = ", ".join(list(state)[:5])
        raise WeightsError(
            f"{path}: unrecognised parameter names (first: {first}); expected this framework's "
            "(backbone.*), the seed's (globalmodel.*), torchvision's (conv1.*, layer1.*) or pycls' "
            "(stem.*, s1.*)"
        )
    converted, dropped = CONVERTERS[source](state)
    target = model.state_dict()
    classifier_keys = set(getattr(model, "classifier_keys", ()))
    report = LoadReport(path=path, source=source, dropped=dropped, total=len(target))
    to_load, mismatched = _sort_tensors(converted, target, classifier_keys, report)
    skipped = {key for key, _, _ in report.skipped_classifier}
    report.missing = [key for key in target if key not in to_load and key not in skipped]
    report.loaded = sorted(to_load)
    _leave_out(report, set(unused) & set(target))
    _check(report, mismatched, path, strict, classifier_keys)
    model.load_state_dict(to_load, strict=False)
    for line in report.lines():
        log(line)
    if source == "torchvision" and getattr(getattr(model, "backbone", None), "stride_1x1", False):
        log(
            "note: torchvision ResNets stride on the 3x3 conv; this model strides on the 1x1 "
            "(RESNET.STRIDE_1X1 True, the official layout): the weights fit and fine-tuning adapts "
            "them; set RESNET.STRIDE_1X1 False to keep torchvision's layout"
        )
    return report


def _sort_tensors(converted, target, classifier_keys, report):
    """(the tensors that fit the model, 'key: shapes' of those that do not); the file's tensors
    the model lacks and the classifiers of another class count go to the report."""
    mismatched, to_load = [], {}
    for key, value in converted.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            to_load[key] = value
        elif key in classifier_keys and value.shape[1:] == target[key].shape[1:]:
            report.skipped_classifier.append((key, _shape(value), _shape(target[key])))
        else:
            mismatched.append(
                f"{key}: {_shape(value)} in the file, {_shape(target[key])} in the model"
            )
    return to_load, mismatched


def _check(report, mismatched, path, strict, classifier_keys=()):
    hint = (
        "check MODEL.DEPTH, RESNET.WIDTH_PER_GROUP, RESNET.NUM_GROUPS, MODEL.HEADS.REDUCTION_DIM "
        "and MODEL.LOCAL.*"
    )
    if mismatched:
        raise WeightsError(
            f"{path}: {len(mismatched)} tensors do not fit the model ({hint}):\n  "
            + "\n  ".join(mismatched)
        )
    # strict (extraction): every feature head must come from the file; the classifiers play no
    # part in features (an official inference archive has none)
    missing = [
        key
        for key in report.missing
        if _counts(key) and ((strict and key not in classifier_keys) or _is_backbone(key))
    ]
    unexpected = [key for key in report.unexpected if strict or _is_backbone(key)]
    if missing or unexpected:
        what = [f"missing {_summary(missing)}"] if missing else []
        what += [f"unexpected {_summary(unexpected)}"] if unexpected else []
        raise WeightsError(
            f"{path} ({FORMAT_NAMES[report.source]}) does not fit the model ({hint}): "
            + "; ".join(what)
        )
