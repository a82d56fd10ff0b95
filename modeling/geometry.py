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

import copy
from collections import namedtuple

import torch
import torch.nn as nn

from modeling.same_padding import same_padding

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


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def map_side(modules, side):
    """Side of the map after the given convs, pools and TF 'SAME' padding layers (a backbone's
    ``local_path_modules``) for an input side; 0 when a layer has no output cell at all (a 'valid'
    max-pool on a map smaller than its kernel: TensorFlow gives an empty map there)."""
    for module in modules:
        if hasattr(module, "geometry_padding"):
            side += sum(same_padding(side, module.kernel, module.stride))
        elif isinstance(module, _SPATIAL):
            kernel, stride = _first(module.kernel_size), _first(module.stride)
            padding, dilation = _first(module.padding), _first(getattr(module, "dilation", 1))
            side = (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
            if side < 1:
                return 0
    return side


def geometry_probe(module):
    """An eval-mode copy of module in which every input pixel of a receptive field reaches the
    output's gradient: parameters uniform in [0.5, 1], BatchNorm statistics (0, 1) and max-pools
    replaced by average pools of the same geometry (a max-pool's gradient reaches one pixel per
    window; a zero-initialised last BatchNorm of a residual block would cut its branch)."""
    with torch.inference_mode(False), torch.no_grad():  # plain tensors even from inference mode
        probe = copy.deepcopy(module).eval()
        generator = torch.Generator().manual_seed(0)
        for layer in probe.modules():
            _make_probe_layer(layer, generator)
    for parent in list(probe.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, _average_pool(child))
    return probe


def _make_probe_layer(layer, generator):
    for name, parameter in list(layer.named_parameters(recurse=False)):
        values = torch.rand(parameter.shape, generator=generator, device="cpu") * 0.5 + 0.5
        layer.register_parameter(name, nn.Parameter(values, requires_grad=False))
    for name, buffer in list(layer.named_buffers(recurse=False)):  # meta ones (model_info) as zeros
        plain = buffer.clone() if buffer.device.type != "meta" else None
        layer.register_buffer(
            name, torch.zeros_like(buffer, device="cpu") if plain is None else plain
        )
    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
        layer.running_mean.zero_()
        layer.running_var.fill_(1.0)


def _average_pool(pool):
    return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)


def measured_geometry(local_map, stride, side=128, max_side=1024, trials=2):
    """LocalGeometry of ``local_map(images)`` measured from gradients, for backbones whose layers
    are not listed (any timm CNN; run it on a geometry_probe copy): the input pixels that the centre
    cell's gradient reaches, over a few random positive inputs, give its receptive field; the first
    of them, ``stride * index - padding``, gives the padding. The side doubles until the field fits
    inside the input with a margin; None when it never does (a field over max_side, or a global
    operation such as squeeze-excitation or attention that lets every pixel reach every cell, or a
    model that does not run on a strip as wide as the side)."""
    width = max(32, 2 * stride)
    while side <= max_side:
        try:
            with torch.inference_mode(False), torch.enable_grad():  # also built without gradients
                rows, cell = _reached_rows(local_map, side, width, trials)
        except (RuntimeError, AssertionError):  # a layer that needs a wider strip
            if width >= side:
                return None
            width *= 2
            continue
        if rows.numel() and rows.min() > 0 and rows.max() < side - 1:
            first, last = int(rows.min()), int(rows.max())
            return LocalGeometry(last - first + 1, stride, stride * cell - first)
        side *= 2
    return None


def _reached_rows(local_map, side, width, trials):
    generator = torch.Generator().manual_seed(0)
    reached, centre = torch.zeros(side, dtype=torch.bool, device="cpu"), (0, 0)
    for _ in range(trials):
        # rows only: a tall strip two cells wide (every layer keeps an output)
        images = torch.rand(1, 3, side, width, generator=generator, device="cpu")
        images.requires_grad_(True)
        output = local_map(images)
        centre = output.shape[-2] // 2, output.shape[-1] // 2
        (gradient,) = torch.autograd.grad(output[0, :, centre[0], centre[1]].sum(), images)
        reached |= gradient[0].abs().sum(dim=(0, 2)) > 0
    return reached.nonzero().flatten(), centre[0]
