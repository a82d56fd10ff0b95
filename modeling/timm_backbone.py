"""Any timm model as a DELG backbone (``MODEL.TYPE timm``, the ``TIMM`` config section).

The model is always built untrained (``pretrained=False``: no download); ``TIMM.WEIGHTS`` loads a
local timm or torchvision checkpoint of it (``torch.load(weights_only=True)``).

- CNNs (anything with ``feature_info``): the local map is the stage whose reduction is
  ``TIMM.LOCAL_STRIDE``, the global map the last stage. The shared part runs the model's modules up
  to the local stage (timm's ``FeatureListNet`` order), the global part the rest. The receptive
  field is measured from gradients (modeling.geometry.measured_geometry); where it exceeds 1024 px
  or is global (squeeze-excitation) a cell's box is its own stride x stride block, as for a ViT.
  The map size for an input size is probed once per side. Models that keep their stages channels
  last (timm's ``output_fmt`` NHWC: Swin, MambaOut) are built with ``dynamic_img_size`` where they
  take it, cropped to a multiple of their patch, and give their maps as NCHW.
- ViTs (``patch_embed`` + ``blocks``, DINOv2 included), built with ``dynamic_img_size``: the local
  map is the patch grid after block ``TIMM.LOCAL_BLOCK`` (final norm applied, prefix tokens
  dropped), the global map the patch grid after the last block; stride and receptive field are the
  patch size (a cell is one patch; attention makes the true field the whole image), padding 0.
  ``TIMM.LOCAL_STRIDE`` must equal the patch size.

timm is imported when such a backbone is built, so the rest of the project does not need it.
"""

import ast
import contextlib
import os

import torch
import torch.nn as nn

from core.config import ConfigError
from modeling.backbone import Backbone, MapSpec
from modeling.geometry import LocalGeometry, geometry_probe, measured_geometry
from modeling.registry import BACKBONES


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
    """timm.create_model(name, pretrained=False, **kwargs) with the local checkpoint loaded."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"TIMM.NAME: unknown timm model {name!r} (see timm.list_models())")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as error:
        raise ConfigError(f"TIMM.KWARGS do not fit timm model {name!r}: {error}") from None
    if weights:
        _load_weights(model, name, weights)
    return model


def _load_weights(model, name, path):
    if not os.path.isfile(path):
        raise ConfigError(f"TIMM.WEIGHTS {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    state = {key.removeprefix("module."): value for key, value in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ
        lines = str(error).splitlines()
        mismatch = next((line for line in lines if "size mismatch" in line), lines[0])
        raise ConfigError(
            f"TIMM.WEIGHTS {path} does not fit timm model {name!r}: {mismatch.strip()}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(
            f"TIMM.WEIGHTS {path} does not fit timm model {name!r}: missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )


def is_vit(model):
    return all(hasattr(model, name) for name in ("patch_embed", "blocks", "_pos_embed"))


@BACKBONES.register("timm")
class TimmCNN(Backbone):
    """A timm CNN's modules in order, split after the local stage (see the module docstring)."""

    def __init__(self, model, local_index):
        super().__init__()
        from timm.models import FeatureListNet

        info = model.feature_info
        names = [entry["module"] for entry in info]
        self.body = FeatureListNet(
            model, out_indices=(local_index, len(info) - 1), flatten_sequential=_dotted(names)
        )
        layers = list(self.body.return_layers)
        keys = list(self.body.keys())
        self.shared_names = keys[: keys.index(layers[0]) + 1]
        self.global_names = keys[keys.index(layers[0]) + 1 :]
        self.shapes = {
            "local": MapSpec(info[local_index]["num_chs"], info[local_index]["reduction"]),
            "global": MapSpec(info[-1]["num_chs"], info[-1]["reduction"]),
        }
        # Swin-like models keep channels last between stages; the maps leave as NCHW
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
        self.patch = _square_patch(model) if hasattr(model, "patch_embed") else 1
        self._geometry, self._sides = None, {}

    @classmethod
    def describe(cls, cfg):
        return f"timm {cfg.TIMM.NAME}"

    @classmethod
    def from_config(cls, cfg):
        """TimmCNN, or TimmViT for a vision transformer, of the TIMM section."""
        timm_cfg = cfg.TIMM
        kwargs = parse_kwargs(timm_cfg.KWARGS)
        model = create_timm_model(timm_cfg.NAME, kwargs)
        if is_vit(model):
            model = create_timm_model(
                timm_cfg.NAME, {"dynamic_img_size": True, **kwargs}, timm_cfg.WEIGHTS
            )
            _drop_head(model)
            return TimmViT(model, timm_cfg.LOCAL_STRIDE, timm_cfg.LOCAL_BLOCK)
        if cfg.MODEL.FREEZE_BN or cfg.MODEL.FREEZE_STEM:
            raise ConfigError(
                "MODEL.FREEZE_BN and MODEL.FREEZE_STEM apply to MODEL.TYPE resnet only"
            )
        if getattr(model, "dynamic_img_size", True) is False:  # e.g. Swin: any input size
            model = create_timm_model(timm_cfg.NAME, {"dynamic_img_size": True, **kwargs})
        if timm_cfg.WEIGHTS:
            _load_weights(model, timm_cfg.NAME, timm_cfg.WEIGHTS)
        return cls(model, _stage_of_stride(model, timm_cfg.NAME, timm_cfg.LOCAL_STRIDE))

    def _run(self, names, x):
        for name in names:
            x = self.body[name](x)
        return x

    def forward_shared(self, images):
        return self._run(self.shared_names, _crop_to_multiple(images, self.patch))

    def local_map(self, shared):
        return self._nchw(shared)

    def global_map(self, shared):
        return self._nchw(self._run(self.global_names, shared))

    def _nchw(self, x):
        return x.permute(0, 3, 1, 2) if self.channels_last else x

    def forward_local(self, images):
        """The local map of images (for probes of its size and receptive field)."""
        return self.local_map(self.forward_shared(images))

    def output_shape(self):
        return dict(self.shapes)

    def local_geometry(self):
        if self._geometry is None:
            stride, probe = self.shapes["local"].stride, geometry_probe(self)
            measured = measured_geometry(probe.forward_local, stride)
            self._geometry = measured or LocalGeometry(stride, stride, 0)
        return self._geometry

    def local_map_size(self, size):
        return tuple(self._map_side(side) for side in size)

    def _map_side(self, side):
        """The local map's side for an input side, probed once (a CNN's height depends only on
        the input height)."""
        if side not in self._sides:
            width = 4 * self.shapes["local"].stride
            try:
                with _eval_mode(self), torch.no_grad():
                    self._sides[side] = self.forward_local(torch.zeros(1, 3, side, width)).shape[2]
            except RuntimeError:  # too small for some layer
                self._sides[side] = 0
        return self._sides[side]


class TimmViT(Backbone):
    """A timm vision transformer's patch grids (see the module docstring)."""

    def __init__(self, model, local_stride, local_block=-1):
        super().__init__()
        self.model = model
        self.patch = _square_patch(model)
        if local_stride != self.patch:
            raise ConfigError(
                f"TIMM.LOCAL_STRIDE is {local_stride} but this ViT's patch grid has stride "
                f"{self.patch}: set TIMM.LOCAL_STRIDE {self.patch}"
            )
        depth = len(model.blocks)
        if not -depth <= local_block < depth:
            raise ConfigError(
                f"TIMM.LOCAL_BLOCK must be in [-{depth}, {depth - 1}], got {local_block}"
            )
        self.local_block = local_block % depth
        self.channels = model.num_features

    def forward_shared(self, images):
        model = self.model
        height, width = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        images = _crop_to_multiple(images, self.patch)
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
        for block in model.blocks[: self.local_block + 1]:
            tokens = block(tokens)
        return tokens, (height, width)

    def _grid(self, tokens, grid):
        patches = self.model.norm(tokens)[:, self.model.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)

    def local_map(self, shared):
        return self._grid(*shared)

    def global_map(self, shared):
        tokens, grid = shared
        for block in self.model.blocks[self.local_block + 1 :]:
            tokens = block(tokens)
        return self._grid(tokens, grid)

    def output_shape(self):
        spec = MapSpec(self.channels, self.patch)
        return {"local": spec, "global": spec}

    def local_geometry(self):
        return LocalGeometry(self.patch, self.patch, 0)

    def local_map_size(self, size):
        return tuple(side // self.patch for side in size)


def _drop_head(model):
    """DELG reads patch grids: the classifier and its pooling would be parameters without gradients
    (which DDP refuses)."""
    model.reset_classifier(0)
    for name in ("fc_norm", "attn_pool"):
        if isinstance(getattr(model, name, None), nn.Module):
            setattr(model, name, nn.Identity())


def _dotted(names):
    return any("." in name for name in names)


def _stage_of_stride(model, name, stride):
    reductions = [entry["reduction"] for entry in getattr(model, "feature_info", [])]
    if not reductions:
        raise ConfigError(f"TIMM.NAME {name!r} has no feature_info (no feature maps to use)")
    if stride not in reductions[:-1]:
        raise ConfigError(
            f"TIMM.LOCAL_STRIDE must be the stride of a stage of {name!r} before its last: one of "
            f"{reductions[:-1]}, got {stride}"
        )
    return max(index for index, value in enumerate(reductions[:-1]) if value == stride)


def _crop_to_multiple(images, patch):
    """The images' top left part whose sides are multiples of the patch size (as a strided
    convolution would floor; timm's patch embeddings refuse other sizes)."""
    height, width = images.shape[-2] // patch * patch, images.shape[-1] // patch * patch
    return images[..., :height, :width]


def _square_patch(model):
    height, width = model.patch_embed.patch_size
    if height != width:
        raise ConfigError(f"TIMM.NAME: non-square patches {height}x{width} are not supported")
    return height


@contextlib.contextmanager
def _eval_mode(module):
    """Runs a block with the module in eval mode (no BatchNorm statistics change, no dropout)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
