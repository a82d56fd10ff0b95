"""ResNet / ResNeXt backbones that give the block3 (local branch) and block4 (global branch) maps.

Parameter names follow torchvision (conv1, bn1, layer1.0.conv1, ..., layer1.0.downsample.0), so an
ImageNet torchvision file loads without renaming. Unlike torchvision, the width scales every stage
(WIDTH_PER_GROUP 32 = half-width network for fast CPU presets) and the stride of a bottleneck can
sit on its 1x1 conv (MSRA / the official TensorFlow ResNet) or on its 3x3 conv (torchvision, the
seed).

Local stride 32 follows the official DELG release: a 1x1 max-pool with stride 2 subsamples block3.
Here only the local branch sees the subsampled map; block4 keeps its own stride-2 first block on the
full block3 map. With the stride on the 1x1 conv both are the same computation (a strided 1x1 conv
is subsample-then-1x1); with the stride on the 3x3 conv this keeps block4 computing exactly what its
ImageNet weights were trained for.

Stems (``stem``): ``torchvision`` (conv1 7x7/2 padding 3, max-pool 3x3/2 padding 1: what
torchvision's ImageNet weights were trained with); ``keras`` (the official TF2/Keras ResNet-50:
conv1 TF 'same', i.e. 2 before / 3 after on an even side, max-pool 'valid'); ``slim`` (tf-slim
resnet_v1 of the TF1 releases: conv1 padding 3 / 3, pool1 TF 'SAME', i.e. 0 before / 1 after on an
even side). TF 'SAME' depends on the input size; modeling.same_padding computes it for any size.
With the stride on the 1x1 conv and local stride 32, the slim stem computes exactly what
tf-slim's resnet_v1 computes (slim strides the 3x3 conv of a block's last unit, with a 1x1
max-pool shortcut there; 1x1 convs, ReLU and the residual sum commute with that subsampling, see
tests/test_tf_parity_slim.py).
"""

import functools

import torch.nn as nn

from core.config import ConfigError
from modeling.backbone import Backbone, MapSpec
from modeling.geometry import compose_geometry, map_side
from modeling.registry import BACKBONES
from modeling.same_padding import SamePad2d

STEMS = ("torchvision", "keras", "slim")

STAGE_DEPTHS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
STANDARD_BLOCK = {18: "basic", 34: "basic", 50: "bottleneck", 101: "bottleneck", 152: "bottleneck"}
_BLOCKS = {"basic_transform": "basic", "bottleneck_transform": "bottleneck"}


class BasicBlock(nn.Module):
    """3x3, BN, ReLU, 3x3, BN, plus the (projected) input, ReLU."""

    expansion = 1
    final_bn = "bn2"  # zero-initialised by BN.ZERO_INIT_FINAL_GAMMA

    def __init__(
        self, in_channels, planes, stride, norm_layer, inner_width=None, groups=1, stride_1x1=False
    ):
        super().__init__()
        if groups != 1 or (inner_width is not None and inner_width != planes):
            raise ValueError(
                "the basic block supports neither groups nor a separate inner width (ResNeXt)"
            )
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = _projection(in_channels, planes, stride, norm_layer)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1, BN, ReLU, 3x3 (grouped), BN, ReLU, 1x1 (x4 channels), BN, plus the (projected) input,
    ReLU."""

    expansion = 4
    final_bn = "bn3"

    def __init__(
        self, in_channels, planes, stride, norm_layer, inner_width=None, groups=1, stride_1x1=False
    ):
        super().__init__()
        width = planes if inner_width is None else inner_width
        out_channels = planes * self.expansion
        stride_a, stride_b = (stride, 1) if stride_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride=stride_a, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(
            width, width, 3, stride=stride_b, padding=1, groups=groups, bias=False
        )
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out_channels, stride, norm_layer)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _projection(in_channels, out_channels, stride, norm_layer):
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm_layer(out_channels)
    )


@BACKBONES.register("resnet")
class ResNet(Backbone):
    """ResNet-18/34/50/101/152 (ResNeXt with groups > 1); the shared map is block3, the local map
    block3 (max-pooled at local stride 32), the global map block4 (modeling.backbone).

    width_per_group: with groups == 1 the base width of the network (64 standard, 32 halves every
    stage and the
    stem); with groups > 1 the width of one group of the 3x3 convs (ResNeXt-50 32x4d: groups 32,
    width 4).
    local_stride: 16 (block3 as is) or 32 (1x1 max-pool, stride 2, on the local branch; see the
    module docstring).
    stem: torchvision, keras or slim (the padding of conv1 and the max-pool; module docstring).
    """

    def __init__(self, depth=50, block=None, groups=1, width_per_group=64, stride_1x1=False,
                 local_stride=16, bn_eps=1e-5, bn_momentum=0.1, zero_init_final_gamma=False,
                 freeze_bn=False, freeze_stem=False, stem="torchvision"):  # fmt: skip
        super().__init__()
        _check_arguments(stem, depth, local_stride)
        block = block or STANDARD_BLOCK[depth]
        block_class = {"basic": BasicBlock, "bottleneck": Bottleneck}[block]
        # basic blocks have no 1x1 conv to stride
        self.stride_1x1 = stride_1x1 and block_class is Bottleneck
        if groups > 1 and block_class is BasicBlock:
            raise ValueError("grouped convolutions (ResNeXt) need bottleneck blocks")
        norm_layer = functools.partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
        base = width_per_group if groups == 1 else 64
        self.freeze_bn = freeze_bn
        self.freeze_stem = freeze_stem
        self.local_stride = local_stride

        self.stem = stem
        self._build_stem(base, norm_layer)
        in_channels = base
        for index, num_blocks in enumerate(STAGE_DEPTHS[depth]):
            planes = base * 2**index
            inner_width = None if groups == 1 else width_per_group * groups * 2**index
            blocks = []
            for block_index in range(num_blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(
                    block_class(
                        in_channels, planes, stride, norm_layer, inner_width, groups, stride_1x1
                    )
                )
                in_channels = planes * block_class.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            if index == 2:
                self.block3_channels = in_channels
        self.block4_channels = in_channels
        self.local_pool = (
            nn.MaxPool2d(kernel_size=1, stride=2) if local_stride == 32 else nn.Identity()
        )
        self._init_weights(zero_init_final_gamma)
        self._freeze_parameters()

    def _build_stem(self, base, norm_layer):
        """conv1, bn1, relu, maxpool (torchvision names) and the TF padding layers before conv1 and
        the max-pool (no parameters; identities for the torchvision stem)."""
        keras = self.stem == "keras"
        self.conv1_pad = SamePad2d(7, 2) if keras else nn.Identity()
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=0 if keras else 3, bias=False)
        self.bn1 = norm_layer(base)
        self.relu = nn.ReLU(inplace=True)
        slim = self.stem == "slim"
        self.maxpool_pad = SamePad2d(3, 2, float("-inf")) if slim else nn.Identity()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1 if self.stem == "torchvision" else 0)

    def _init_weights(self, zero_init_final_gamma):
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_final_gamma:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(getattr(module, module.final_bn).weight)

    def _frozen_modules(self):
        if self.freeze_stem:
            yield from (self.conv1, self.bn1)
        if self.freeze_bn:
            yield from (m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))

    def _freeze_parameters(self):
        for module in self._frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode=True):
        """Frozen BatchNorm layers stay in eval mode, so their running statistics never change."""
        super().train(mode)
        for module in self._frozen_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward_shared(self, images):
        """Stem to block3, before the optional local max-pool."""
        x = self.relu(self.bn1(self.conv1(self.conv1_pad(images))))
        x = self.maxpool(self.maxpool_pad(x))
        return self.layer3(self.layer2(self.layer1(x)))

    def local_map(self, shared):
        return self.local_pool(shared)

    def global_map(self, shared):
        return self.layer4(shared)

    def output_shape(self):
        return {
            "local": MapSpec(self.block3_channels, self.local_stride),
            "global": MapSpec(self.block4_channels, 32),
        }

    def local_geometry(self):
        return compose_geometry(self.local_path_modules())

    def local_map_size(self, size):
        modules = self.local_path_modules()
        return tuple(map_side(modules, side) for side in size)

    def local_path_modules(self):
        """Convs and pools from the input to the local map, in order, along the main (longest) path
        of each block.

        modeling.geometry composes receptive field, stride and padding from these modules'
        definitions.
        """
        modules = [self.conv1_pad, self.conv1, self.maxpool_pad, self.maxpool]
        for layer in (self.layer1, self.layer2, self.layer3):
            for block in layer:
                modules += [m for name, m in block.named_children() if name.startswith("conv")]
        return modules + [self.local_pool]

    @classmethod
    def describe(cls, cfg):
        return f"resnet-{cfg.MODEL.DEPTH}"

    @classmethod
    def from_config(cls, cfg):
        """The ResNet of MODEL.DEPTH, MODEL.LOCAL_STRIDE, MODEL.FREEZE_*, RESNET.* and BN.*."""
        depth, resnet = cfg.MODEL.DEPTH, cfg.RESNET
        _check_config(depth, resnet, cfg.MODEL.LOCAL_STRIDE)
        return cls(
            depth=depth,
            block=_BLOCKS[resnet.TRANS_FUN],
            groups=resnet.NUM_GROUPS,
            width_per_group=resnet.WIDTH_PER_GROUP,
            stride_1x1=resnet.STRIDE_1X1,
            local_stride=cfg.MODEL.LOCAL_STRIDE,
            bn_eps=cfg.BN.EPS,
            bn_momentum=cfg.BN.MOM,
            zero_init_final_gamma=cfg.BN.ZERO_INIT_FINAL_GAMMA,
            freeze_bn=cfg.MODEL.FREEZE_BN,
            freeze_stem=cfg.MODEL.FREEZE_STEM,
            stem=resnet.STEM,
        )


def _check_arguments(stem, depth, local_stride):
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if depth not in STAGE_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
    if local_stride not in (16, 32):
        raise ValueError(f"local stride must be 16 or 32, got {local_stride}")


def _check_config(depth, resnet, local_stride):
    if depth not in STAGE_DEPTHS:
        raise ConfigError(f"MODEL.DEPTH must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
    if resnet.TRANS_FUN not in _BLOCKS:
        raise ConfigError(
            f"RESNET.TRANS_FUN must be one of {sorted(_BLOCKS)}, got {resnet.TRANS_FUN!r}"
        )
    if _BLOCKS[resnet.TRANS_FUN] != STANDARD_BLOCK[depth]:
        expected = {v: k for k, v in _BLOCKS.items()}[STANDARD_BLOCK[depth]]
        raise ConfigError(
            f"RESNET.TRANS_FUN {resnet.TRANS_FUN} does not fit MODEL.DEPTH {depth}: "
            f"ResNet-{depth} uses {expected}"
        )
    if local_stride not in (16, 32):
        raise ConfigError(f"MODEL.LOCAL_STRIDE must be 16 or 32, got {local_stride}")
    if resnet.NUM_GROUPS < 1 or resnet.WIDTH_PER_GROUP < 1:
        raise ConfigError("RESNET.NUM_GROUPS and RESNET.WIDTH_PER_GROUP must be positive")
    if resnet.STEM not in STEMS:
        raise ConfigError(f"RESNET.STEM must be one of {STEMS}, got {resnet.STEM!r}")
