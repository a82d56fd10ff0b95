"""Building timm models for DELG: create, load a local checkpoint, choose the local stage, and find
which input sizes a model takes (modeling/timm_backbone.py turns the model into a backbone).

timm is imported when a model is built, so the rest of the project does not need it.
"""

import ast
import contextlib
import os
import sys

import torch
import torch.nn as nn

from core.config import ConfigError

# probe sizes (height, width) as the extraction pyramid gives them: between them, each of the
# first five halvings of a side meets an odd size (97, 131, 163, 229 odd; 230 = 2 x 115,
# 228 = 4 x 57, 300 = 4 x 75, 232 = 8 x 29, 240 = 16 x 15), in both directions
PROBE_SIZES = ((97, 230), (131, 228), (163, 232), (229, 240), (300, 224))


def parse_kwargs(items):
    """{key: value} of TIMM.KWARGS entries "key=value" (value a Python literal, else a string)."""
    kwargs = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"TIMM.KWARGS entry {item!r} must be key=value, e.g. depth=4")
        try:
            kwargs[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = text.strip()
    return kwargs


def create_timm_model(name, kwargs, weights=""):
    """timm.create_model(name, pretrained=False, **kwargs) with the local checkpoint loaded; built
    for any input size (``dynamic_img_size``) where the model's constructor offers it."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"TIMM.NAME: unknown timm model {name!r} (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False, **{"dynamic_img_size": True, **kwargs})
    except TypeError:  # a model of fixed or free input size without the option
        try:
            model = timm.create_model(name, pretrained=False, **kwargs)
        except TypeError as error:
            raise ConfigError(f"TIMM.KWARGS do not fit timm model {name!r}: {error}") from None
    if weights:
        load_weights(model, name, weights)
    return model


def load_weights(model, name, path):
    if not os.path.isfile(path):
        raise ConfigError(f"TIMM.WEIGHTS {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    head = _is_head(model)  # DELG never reads the classifier: a checkpoint may have any or none
    state = _timm_layout(model, {key.removeprefix("module."): v for key, v in state.items()})
    state = {key: value for key, value in state.items() if not head(key)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        lines = str(error).splitlines()
        mismatch = next((line for line in lines if "size mismatch" in line), lines[0])
        raise ConfigError(
            f"TIMM.WEIGHTS {path} does not fit timm model {name!r}: {mismatch.strip()}"
        ) from None
    missing = [key for key in result.missing_keys if not head(key)]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"TIMM.WEIGHTS {path} does not fit timm model {name!r}: missing "
            f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def _timm_layout(model, state):
    """The checkpoint in timm's layout, converted by the model family's own checkpoint filter where
    timm has one (as for its downloads): an original DINOv2, CLIP or DeiT checkpoint, a position
    table of another grid (resampled). A state the filter cannot read is returned as it was."""
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(state, model)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError):
        return state


def _is_head(model):
    """Whether a parameter name belongs to the model's classifier (timm's pretrained_cfg names it:
    "fc", "head.fc", ("head", "head_dist"), ...)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((names,) if isinstance(names, str) else names))
    return lambda key: key.startswith(prefixes) if prefixes else False


def is_vit(model):
    """A timm VisionTransformer (DINOv2, DeiT and the others of vision_transformer.py); EVA, BEiT
    and XCiT, built otherwise, go through forward_intermediates."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def drop_head(model):
    """DELG reads feature maps: the classifier and its pooling would be parameters without
    gradients (which DDP refuses)."""
    model.reset_classifier(0)
    for name in ("fc_norm", "attn_pool"):
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())


def local_index(model, name, stride, block):
    """Index in ``feature_info`` of the local map: the last stage of ``stride`` before the last
    stage, or, for a model whose every entry has one stride (a plain transformer's blocks), the
    entry ``block`` (TIMM.LOCAL_BLOCK)."""
    reductions = [entry["reduction"] for entry in getattr(model, "feature_info", [])]
    if not reductions:
        raise ConfigError(f"TIMM.NAME {name!r} has no feature_info (no feature maps to use)")
    if len(set(reductions)) == 1:
        if stride != reductions[0]:
            raise ConfigError(
                f"TIMM.LOCAL_STRIDE is {stride} but every map of {name!r} has stride "
                f"{reductions[0]}: set TIMM.LOCAL_STRIDE {reductions[0]}"
            )
        return block_index(len(reductions), block)
    if stride not in reductions[:-1]:
        raise ConfigError(
            f"TIMM.LOCAL_STRIDE must be the stride of a stage of {name!r} before its last: one of "
            f"{reductions[:-1]}, got {stride}"
        )
    return max(index for index, value in enumerate(reductions[:-1]) if value == stride)


def block_index(depth, block):
    if not -depth <= block < depth:
        raise ConfigError(f"TIMM.LOCAL_BLOCK must be in [-{depth}, {depth - 1}], got {block}")
    return block % depth


def square_patch(model):
    height, width = model.patch_embed.patch_size
    if height != width:
        raise ConfigError(f"TIMM.NAME: non-square patches {height}x{width} are not supported")
    return height


def crop_to_multiple(images, multiple):
    """The images' top left part whose sides are multiples of ``multiple`` (as a strided
    convolution would floor; a patch embedding or a stage that adds two paths may need it)."""
    height = images.shape[-2] // multiple * multiple
    width = images.shape[-1] // multiple * multiple
    return images[..., :height, :width]


# what a timm model raises on an input it cannot take (shapes, its own asserts, position tables)
INPUT_ERRORS = (
    RuntimeError,
    AssertionError,
    ValueError,
    IndexError,
    TypeError,
    NotImplementedError,
)


def first_line(error, limit=120):
    """``<type>: <first line of the message>`` of an error, cut to ``limit`` characters."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:limit]}"


def size_failure(backbone, multiple):
    """None when the backbone's forward runs on every probe size cropped to ``multiple``, else
    the first size that fails and timm's error, in one line."""
    for size in PROBE_SIZES:
        images = crop_to_multiple(torch.zeros(1, 3, *size), multiple)
        try:
            with eval_mode(backbone), torch.no_grad():
                backbone(images)
        except INPUT_ERRORS as error:
            return f"{images.shape[-2]}x{images.shape[-1]}: {first_line(error)}"
    return None


def freeze_unreached(backbone):
    """Freezes (requires_grad False) the parameters that the global map does not reach (HRNet's
    fuse layers towards branches it does not read): DELG trains the backbone with the global loss
    alone (the local branch is gradient-stopped), so they would never get a gradient, which stops
    DDP. Returns their names."""
    images = torch.randn(1, 3, *PROBE_SIZES[0], generator=torch.Generator().manual_seed(0))
    trainable = [(name, p) for name, p in backbone.named_parameters() if p.requires_grad]
    with eval_mode(backbone), torch.enable_grad():
        _, global_map = backbone(images)
        gradients = torch.autograd.grad(
            global_map.sum(), [p for _, p in trainable], allow_unused=True
        )
    frozen = []
    for (name, parameter), gradient in zip(trainable, gradients, strict=True):
        if gradient is None:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def on_meta_device(model):
    return any(parameter.device.type == "meta" for parameter in model.parameters())


@contextlib.contextmanager
def eval_mode(module):
    """Runs a block with the module in eval mode (no BatchNorm statistics change, no dropout)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
