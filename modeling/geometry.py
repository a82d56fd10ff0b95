"""Receptive field, stride and padding of the local feature map, composed from the backbone's layer
definitions.

A feature cell (i, j) of the local map sees the input box
    stride * [i, j, i, j] + [-padding, -padding, -padding + rf - 1, -padding + rf - 1]
(the official DELG convention). Walking the convs and pools from the input with kernel k, stride s,
padding p and dilation d: rf += d (k - 1) * jump, padding += p * jump, jump *= s; residual shortcuts
are shorter paths and leave rf unchanged.

Values for ResNet-50 block3 (see tests/test_model_geometry.py):
- stride on the 1x1 conv (MSRA / the official TensorFlow ResNet): rf 291, padding 145, stride 16 --
  the official constants;
- stride on the 3x3 conv (torchvision, the seed, RESNET.STRIDE_1X1 False): rf 267, padding 133,
  stride 16.
  The official extraction code uses 291/145 for it too; the box centre, stride * index, is the same
  either way because padding == (rf - 1) / 2, only the box size (used by NMS) differs.
The 1x1 max-pool of local stride 32 adds nothing to rf or padding: rf 291 (267), padding 145 (133),
stride 32.

TF stems (RESNET.STEM) pad by the input size (modeling.same_padding); a padding layer counts with
its padding before an even side. With the stride on the 1x1 conv: keras stem padding 142 (conv1 2
before, max-pool none: 3 px less than the torchvision stem), slim stem 143 (pool1 0 before). The
official extraction code uses rf 291, padding 145 for every layout, i.e. its stored centres sit
3 (keras) or 2 (slim) px before the true receptive-field centres.
"""

from collections import namedtuple

import torch.nn as nn

LocalGeometry = namedtuple("LocalGeometry", ["receptive_field", "stride", "padding"])

_SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _square(value, name, module):
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if values[0] != values[1]:
        raise ValueError(
            f"{type(module).__name__} has a non-square {name} {values}; geometry assumes square "
            "layers"
        )
    return values[0]


def compose_geometry(modules):
    """LocalGeometry after applying the given convs and pools in order (other modules are
    ignored)."""
    receptive_field, jump, padding = 1, 1, 0
    for module in modules:
        if hasattr(module, "geometry_padding"):  # a size-dependent padding layer (SamePad2d)
            padding += module.geometry_padding * jump
            continue
        if not isinstance(module, _SPATIAL):
            continue
        kernel = _square(module.kernel_size, "kernel", module)
        stride = _square(module.stride, "stride", module)
        pad = _square(module.padding, "padding", module)
        dilation = _square(getattr(module, "dilation", 1), "dilation", module)
        receptive_field += dilation * (kernel - 1) * jump
        padding += pad * jump
        jump *= stride
    return LocalGeometry(receptive_field, jump, padding)


def local_geometry(backbone):
    """Geometry of the map the local head sees; the backbone lists its path with
    ``local_path_modules()``."""
    return compose_geometry(backbone.local_path_modules())
