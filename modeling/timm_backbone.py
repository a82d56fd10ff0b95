"""Any timm model as a DELG backbone (``MODEL.TYPE timm``, the ``TIMM`` config section).

The model is always built untrained (``pretrained=False``: no download); ``TIMM.WEIGHTS`` loads a
local timm or torchvision checkpoint of it (``torch.load(weights_only=True)``). Models that offer
``dynamic_img_size`` are built with it. Three adapters, tried in this order:

- ViTs (``patch_embed`` + ``blocks`` + ``_pos_embed``, DINOv2 included), ``TimmViT``: the local
  map is the patch grid after block ``TIMM.LOCAL_BLOCK`` (final norm applied, prefix tokens
  dropped), the global map the patch grid after the last block; stride and receptive field are the
  patch size (a cell is one patch; attention makes the true field the whole image), padding 0.
  ``TIMM.LOCAL_STRIDE`` must equal the patch size.
- Models whose modules run in sequence (most CNNs, Swin, MambaOut), ``TimmCNN``: the local map is
  the stage whose reduction is ``TIMM.LOCAL_STRIDE``, the global map the last stage; the shared
  part runs the model's modules up to the local stage (timm's ``FeatureListNet`` order), the global
  part the rest, so a local-only scale skips the last stages. Channels-last stages (timm's
  ``output_fmt`` NHWC) leave as NCHW maps.
- Any other model with timm's ``forward_intermediates`` (HRNet, Twins, MViTv2, XCiT, ...),
  ``TimmIntermediates``: both maps in one pass; for a model whose maps all have one stride the
  local map is the entry ``TIMM.LOCAL_BLOCK``.

The receptive field of the last two is measured from gradients (modeling.geometry); where it
exceeds 1024 px or is global (squeeze-excitation, attention) a cell's box is its own stride x
stride block, as for a ViT. Each model is probed once on two awkward image sizes: the input is
cropped to the smallest multiple (1, then each stage's stride) at which it runs, as a strided
convolution would floor; a model that runs only at fixed sizes is refused in one line, since DELG
extracts at many image sizes. Parameters the global map does not reach are frozen: DELG trains
the backbone through the global map alone, and DDP stops on parameters without a gradient. The
map size for an input size is probed once per side.
"""

import torch

from core.config import ConfigError
from modeling.backbone import Backbone, MapSpec
from modeling.geometry import LocalGeometry, geometry_probe, measured_geometry
from modeling.registry import BACKBONES
from modeling.timm_models import (
    block_index,
    create_timm_model,
    crop_to_multiple,
    drop_head,
    eval_mode,
    freeze_unreached,
    is_vit,
    local_index,
    on_meta_device,
    parse_kwargs,
    size_failure,
    square_patch,
)


class _ProbedMaps(Backbone):
    """What the two stage-based adapters share: sizes from ``feature_info``, the crop multiple,
    the measured geometry and the probed map sizes."""

    def __init__(self, info, local_index):
        super().__init__()
        self.shapes = {
            "local": MapSpec(info[local_index]["num_chs"], info[local_index]["reduction"]),
            "global": MapSpec(info[-1]["num_chs"], info[-1]["reduction"]),
        }
        self.multiple = 1
        self._geometry, self._sides = None, {}

    def output_shape(self):
        return dict(self.shapes)

    def forward_local(self, images):
        """The local map of images (for probes of its size and receptive field)."""
        return self.local_map(self.forward_shared(images))

    def local_geometry(self):
        if self._geometry is None:
            stride, probe = self.shapes["local"].stride, geometry_probe(self)
            measured = measured_geometry(probe.forward_local, stride)
            self._geometry = measured or LocalGeometry(stride, stride, 0)
        return self._geometry

    def local_map_size(self, size):
        return tuple(self._map_side(side) for side in size)

    def _map_side(self, side):
        """The local map's side for an input side, probed once (a height depends only on the input
        height); 0 where either map cannot be computed (a stage too small for its layers: a
        ConvNeXt's 2 x 2 downsampling of a single row), which leaves the scale out."""
        if side not in self._sides:
            width = 4 * max(self.shapes["global"].stride, self.multiple)
            try:
                with eval_mode(self), torch.no_grad():
                    local, global_map = self(torch.zeros(1, 3, side, width))
                self._sides[side] = local.shape[2] if global_map.shape[2] else 0
            except (RuntimeError, AssertionError):  # too small for some layer
                self._sides[side] = 0
        return self._sides[side]


@BACKBONES.register("timm")
class TimmCNN(_ProbedMaps):
    """A timm model's modules in order, split after the local stage (see the module docstring)."""

    def __init__(self, model, local_index):
        from timm.models import FeatureListNet

        info = model.feature_info
        super().__init__(info, local_index)
        names = [entry["module"] for entry in info]
        self.body = FeatureListNet(
            model,
            out_indices=(local_index, len(info) - 1),
            flatten_sequential=any("." in name for name in names),
        )
        layers = list(self.body.return_layers)
        keys = list(self.body.keys())
        self.shared_names = keys[: keys.index(layers[0]) + 1]
        self.global_names = keys[keys.index(layers[0]) + 1 :]
        # Swin-like models keep channels last between stages; the maps leave as NCHW
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"

    @classmethod
    def describe(cls, cfg):
        return f"timm {cfg.TIMM.NAME}"

    @classmethod
    def from_config(cls, cfg):
        """The adapter of the TIMM section's model (the module docstring says which)."""
        timm_cfg = cfg.TIMM
        if cfg.MODEL.FREEZE_BN or cfg.MODEL.FREEZE_STEM:
            raise ConfigError(
                "MODEL.FREEZE_BN and MODEL.FREEZE_STEM apply to MODEL.TYPE resnet only"
            )
        kwargs = parse_kwargs(timm_cfg.KWARGS)
        model = create_timm_model(timm_cfg.NAME, kwargs, timm_cfg.WEIGHTS)
        if is_vit(model):
            drop_head(model)
            return TimmViT(model, timm_cfg.LOCAL_STRIDE, timm_cfg.LOCAL_BLOCK)
        index = local_index(model, timm_cfg.NAME, timm_cfg.LOCAL_STRIDE, timm_cfg.LOCAL_BLOCK)
        return _fitting_adapter(model, index, timm_cfg.NAME)

    def _run(self, names, x):
        for name in names:
            x = self.body[name](x)
        return x

    def forward_shared(self, images):
        return self._run(self.shared_names, crop_to_multiple(images, self.multiple))

    def local_map(self, shared):
        return self._nchw(shared)

    def global_map(self, shared):
        return self._nchw(self._run(self.global_names, shared))

    def _nchw(self, x):
        return x.permute(0, 3, 1, 2) if self.channels_last else x


class TimmIntermediates(_ProbedMaps):
    """Both maps of ``forward_intermediates`` in one pass (see the module docstring); the layers
    after the last map and the head are pruned (parameters without gradients, which DDP refuses)."""

    def __init__(self, model, local_index):
        info = model.feature_info
        super().__init__(info, local_index)
        self.indices = sorted({local_index, len(info) - 1})
        self.picks = (self.indices.index(local_index), len(self.indices) - 1)
        if hasattr(model, "prune_intermediate_layers"):
            model.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        self.model = model

    def forward_shared(self, images):
        return self.model.forward_intermediates(
            crop_to_multiple(images, self.multiple), indices=self.indices, intermediates_only=True
        )

    def local_map(self, shared):
        return shared[self.picks[0]]

    def global_map(self, shared):
        return shared[self.picks[1]]


def _fitting_adapter(model, index, name):
    """The first adapter of the model that runs at any size, cropped to the smallest multiple."""
    builders = [TimmCNN]  # TimmIntermediates last: it prunes the model
    if hasattr(model, "forward_intermediates"):
        builders.append(TimmIntermediates)
    multiples = sorted({1, *(entry["reduction"] for entry in model.feature_info)})
    failure = None
    for builder in builders:
        try:
            adapter = builder(model, index)
        except (AssertionError, KeyError, RuntimeError):  # modules that do not run in sequence
            continue
        if on_meta_device(model):  # model_info's shapes-only build: nothing to run
            return adapter
        for multiple in multiples:
            failure = size_failure(adapter, multiple)
            if failure is None:
                adapter.multiple = multiple
                freeze_unreached(adapter)
                return adapter
        failure = f"even cropped to multiples of {multiples[-1]}, {failure}"
    if failure is None:
        raise ConfigError(f"TIMM.NAME {name!r}: timm gives no feature maps of this model to use")
    raise ConfigError(
        f"TIMM.NAME {name!r} does not run at every input size ({failure}); DELG extracts at "
        f"many image sizes"
    )


class TimmViT(Backbone):
    """A timm vision transformer's patch grids (see the module docstring)."""

    def __init__(self, model, local_stride, local_block=-1):
        super().__init__()
        self.model = model
        self.patch = square_patch(model)
        if local_stride != self.patch:
            raise ConfigError(
                f"TIMM.LOCAL_STRIDE is {local_stride} but this ViT's patch grid has stride "
                f"{self.patch}: set TIMM.LOCAL_STRIDE {self.patch}"
            )
        self.local_block = block_index(len(model.blocks), local_block)
        self.channels = model.num_features

    def forward_shared(self, images):
        model = self.model
        height, width = images.shape[-2] // self.patch, images.shape[-1] // self.patch
        images = crop_to_multiple(images, self.patch)
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
