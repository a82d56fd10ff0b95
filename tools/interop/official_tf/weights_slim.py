"""TF1 / tf-slim DELG variables (the released archives) -> this framework's state dict.

Backbone names are tf-slim's resnet_v1 (public); the attention network's are the TF1 DELF code's
(``attention_block/attention/compute/conv1`` with BatchNorm, ``conv2`` with biases, and the
classifier ``attention_block/logits``). The GeM, whitening and autoencoder variables have no
public names, so slim_heads applies one rule to every variable outside the ``resnet_v1_*`` and
``attention_block`` scopes (optimizer slots and counters left out):
- whitening kernel: the one variable shaped [C4, R] or [1, 1, C4, R] (C4 = block4 channels);
- encoder kernel: the one shaped [1, 1, C3, D] with D < C3 (C3 = block3 channels);
- decoder kernel: the one shaped [1, 1, D, C3] for that D;
- each kernel's bias: the one rank-1 variable of its output size in the kernel's own scope;
- GeM power: the one scalar whose name contains "gem" or "power" (none: p 3, the DELG value).
No candidate, or more than one, stops the conversion with the candidates named.
"""

import re

import numpy as np

from tools.interop.official_tf.savedmodel import ConversionError
from tools.interop.official_tf.weights_tf import (
    _SLOT,
    SLIM_BN_EPS,
    _attention,
    _classifiers,
    _conv_with_bias,
    _dense,
)

_SLIM_ROOT = re.compile(r"^(.*?)resnet_v1_(\d+)/")
_UNIT = re.compile(r"block(\d)/unit_(\d+)/bottleneck_v1/(conv\d|shortcut)/")
_OURS = {
    "conv1": ("conv1", "bn1"),
    "conv2": ("conv2", "bn2"),
    "conv3": ("conv3", "bn3"),
    "shortcut": ("downsample.0", "downsample.1"),
}
_COUNTERS = re.compile(r"(^|/)(global_step|save_counter)$")


def slim_root(variables):
    """(scope prefix, depth) of the resnet_v1 variables, or None."""
    for name in sorted(variables):
        match = _SLIM_ROOT.match(name)
        if match:
            return match.group(1) + f"resnet_v1_{match.group(2)}/", int(match.group(2))
    return None


def _bn(scope):
    return {
        attr: f"{scope}BatchNorm/{attr}"
        for attr in ("gamma", "beta", "moving_mean", "moving_variance")
    }


def convert_slim(conversion, target_eps):
    root, _ = slim_root(conversion.variables)
    units = {}
    for name in conversion.variables:
        match = _UNIT.match(name[len(root) :]) if name.startswith(root) else None
        if match:
            units.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    conversion.facts["blocks"] = tuple(len(units.get(block, ())) for block in (1, 2, 3, 4))
    conversion.conv_bn(
        ("backbone.conv1", "backbone.bn1"),
        {"kernel": f"{root}conv1/weights"},
        _bn(f"{root}conv1/"),
        SLIM_BN_EPS,
        target_eps,
    )
    for block, numbers in sorted(units.items()):
        for unit in sorted(numbers):
            scope = f"{root}block{block}/unit_{unit}/bottleneck_v1/"
            ours = f"backbone.layer{block}.{unit - 1}"
            for layer, (conv, bn) in _OURS.items():
                if layer == "shortcut" and f"{scope}shortcut/weights" not in conversion.variables:
                    continue  # slim's last unit of a block: a 1x1 max-pool shortcut, no weights
                conversion.conv_bn(
                    (f"{ours}.{conv}", f"{ours}.{bn}"),
                    {"kernel": f"{scope}{layer}/weights"},
                    _bn(f"{scope}{layer}/"),
                    SLIM_BN_EPS,
                    target_eps,
                )
    attention = "attention_block/attention/compute/"
    prefix = _prefix_of(conversion.variables, attention + "conv1/weights")
    _attention(
        conversion,
        {
            "conv1": {"kernel": f"{prefix}{attention}conv1/weights"},
            "bn_conv1": _bn(f"{prefix}{attention}conv1/"),
            "conv2": {
                "kernel": f"{prefix}{attention}conv2/weights",
                "bias": f"{prefix}{attention}conv2/biases",
            },
        },
        SLIM_BN_EPS,
        target_eps,
    )
    logits = f"{prefix}attention_block/logits/"
    fc = {"kernel": logits + "weights", "bias": logits + "biases"}
    slim_heads(conversion, root, fc if fc["kernel"] in conversion.variables else {})


def _prefix_of(variables, suffix):
    for name in variables:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise ConversionError(f"required variable {suffix} is missing from the archive")


def _channels(conversion, key):
    return conversion.state[key].shape[0]


def _candidates(conversion, root):
    return {
        name: np.shape(value)
        for name, value in conversion.variables.items()
        if not name.startswith(root)
        and "attention_block/" not in name
        and not _SLOT.search(name)
        and not _COUNTERS.search(name)
    }


def _one(candidates, what, test):
    found = sorted(name for name, shape in candidates.items() if test(name, shape))
    if len(found) != 1:
        listing = ", ".join(f"{name} {list(candidates[name])}" for name in found) or "none"
        raise ConversionError(f"the {what} must be exactly one variable; candidates: {listing}")
    return found[0]


def _bias(candidates, kernel, size):
    scope = kernel.rsplit("/", 1)[0] + "/" if "/" in kernel else ""
    return _one(
        candidates,
        f"bias of {kernel} ([{size}] in {scope or 'the root scope'})",
        lambda name, shape: (
            len(shape) == 1
            and shape[0] == size
            and name.rsplit("/", 1)[0] + "/" == scope
            and name != kernel
        ),
    )


def slim_heads(conversion, root, attention_fc):
    """Whitening, autoencoder, GeM power and (training) classifiers by the module docstring's
    rule."""
    candidates = _candidates(conversion, root)
    c3 = _channels(conversion, "backbone.layer3.0.conv3.weight")
    c4 = _channels(conversion, "backbone.layer4.0.conv3.weight")
    cosine = sorted(name for name in candidates if name.rsplit("/", 1)[-1] == "cosine_weights")
    for name in cosine:
        candidates.pop(name)
    whitening = _one(
        candidates,
        f"whitening kernel ([{c4}, R] or [1, 1, {c4}, R])",
        lambda name, shape: (
            (len(shape) == 2 and shape[0] == c4) or (len(shape) == 4 and shape[:3] == (1, 1, c4))
        ),
    )
    reduction = candidates[whitening][-1]
    _dense(
        conversion, "whiten", {"kernel": whitening, "bias": _bias(candidates, whitening, reduction)}
    )
    _slim_autoencoder(conversion, candidates, c3)
    _slim_gem_power(conversion, candidates)
    _classifiers(conversion, cosine[0] if len(cosine) == 1 else None, attention_fc)


def _slim_autoencoder(conversion, candidates, c3):
    """The encoder (the one [1, 1, C3, D] kernel, D < C3) and the decoder ([1, 1, D, C3])."""
    encoder = _one(
        candidates,
        f"encoder kernel ([1, 1, {c3}, D], D < {c3})",
        lambda name, shape: len(shape) == 4 and shape[:3] == (1, 1, c3) and shape[3] < c3,
    )
    dim = candidates[encoder][3]
    _conv_with_bias(
        conversion,
        "local_head.autoencoder.encoder",
        {"kernel": encoder, "bias": _bias(candidates, encoder, dim)},
    )
    decoder = _one(
        candidates,
        f"decoder kernel ([1, 1, {dim}, {c3}])",
        lambda name, shape: tuple(shape) == (1, 1, dim, c3),
    )
    _conv_with_bias(
        conversion,
        "local_head.autoencoder.decoder",
        {"kernel": decoder, "bias": _bias(candidates, decoder, c3)},
    )
    conversion.facts["decoder_kernel"] = decoder


def _slim_gem_power(conversion, candidates):
    """The GeM power: at most one scalar named like "gem" or "power" (none: p 3, the DELG value)."""
    powers = [
        name
        for name, shape in candidates.items()
        if len(shape) <= 1
        and int(np.prod(shape)) == 1
        and re.search("gem|power", name, re.IGNORECASE)
    ]
    if len(powers) > 1:
        raise ConversionError(f"the GeM power must be at most one variable; candidates: {powers}")
    if powers:
        conversion.put("pool.p", conversion.take(powers[0]).reshape(1), powers)
