"""The DELG model: one backbone, a global branch on block4 and a local branch on gradient-stopped
block3.

    block3 ──(detach)──► local head ──► attention [B,1,h,w], descriptors [B,d,h,w] ──► attention
    classifier block4 ──► GeM ──► whitening FC (embedding) ──► margin head (global logits)

Because the local branch sees block3.detach(), the local losses train only the local head and one
backward pass of the summed loss is correct (the seed needed two).
"""

import torch.nn as nn

import modeling.local_head  # noqa: F401  (registers the local heads)
import modeling.margin_heads  # noqa: F401  (registers the margin heads)
from core.config import ConfigError
from modeling.geometry import local_geometry
from modeling.local_head import ATTENTION_INPUTS
from modeling.pooling import GeM
from modeling.registry import BACKBONES, LOCAL_HEADS, MARGIN_HEADS
from modeling.resnet import STAGE_DEPTHS, STANDARD_BLOCK, STEMS


class DELG(nn.Module):
    """Wires built parts together; sizes come from the parts (block4 channels, embedding size, class
    count)."""

    def __init__(self, backbone, local_head, margin_head, gem_p=3.0, gem_learnable=False):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p, learnable=gem_learnable)
        self.whiten = nn.Linear(backbone.block4_channels, margin_head.in_features)
        nn.init.normal_(self.whiten.weight, std=0.01)
        nn.init.zeros_(self.whiten.bias)
        self.margin = margin_head
        self.local_head = local_head
        self.attention_classifier = nn.Linear(local_head.pooled_dim, margin_head.num_classes)
        nn.init.normal_(self.attention_classifier.weight, std=0.01)
        nn.init.zeros_(self.attention_classifier.bias)
        self.global_dim = margin_head.in_features
        self.local_descriptor_dim = local_head.descriptor_dim
        self.num_classes = margin_head.num_classes
        self.local_geometry = local_geometry(backbone)

    # Parameter names of the layers whose shape depends on the number of classes: load_weights
    # leaves them out (with a line) when a checkpoint was trained on another class count.
    classifier_keys = ("margin.weight", "attention_classifier.weight", "attention_classifier.bias")

    def embed(self, block4):
        """Global embedding after the whitening FC, before L2 normalisation."""
        return self.whiten(self.pool(block4))

    def forward(self, images, labels=None):
        """Training forward. Without labels the margin head returns plain scaled cosine logits."""
        block3, block4 = self.backbone(images)
        embedding = self.embed(block4)
        local = self.local_head(block3.detach())
        return {
            "global_logits": self.margin(embedding, labels),
            "attention_logits": self.attention_classifier(local["pooled"]),
            "reconstruction_loss": local["reconstruction_loss"],
            "embedding": embedding,
            "attention": local["attention"],
        }

    def extract(self, images, want_global=True, want_local=True):
        """Features for retrieval, no logits. Call under torch.inference_mode() with the model in
        eval mode.

        Returns "global" [B, global_dim] (before L2 normalisation) when want_global, and "attention"
        [B, 1, h, w] and "local" [B, local_descriptor_dim, h, w] (not normalised) when want_local.
        block4 and the global head run only for want_global, the local head only for want_local.
        """
        block3 = self.backbone.forward_block3(images)
        out = {}
        if want_local:
            out["attention"], out["local"] = self.local_head.extract(
                self.backbone.local_pool(block3)
            )
        if want_global:
            out["global"] = self.embed(self.backbone.layer4(block3))
        return out


_BLOCKS = {"basic_transform": "basic", "bottleneck_transform": "bottleneck"}


def build_backbone(cfg):
    """The backbone of MODEL.TYPE from MODEL.*, RESNET.* and BN.*."""
    depth = cfg.MODEL.DEPTH
    if depth not in STAGE_DEPTHS:
        raise ConfigError(f"MODEL.DEPTH must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
    if cfg.RESNET.TRANS_FUN not in _BLOCKS:
        raise ConfigError(
            f"RESNET.TRANS_FUN must be one of {sorted(_BLOCKS)}, got {cfg.RESNET.TRANS_FUN!r}"
        )
    block = _BLOCKS[cfg.RESNET.TRANS_FUN]
    if block != STANDARD_BLOCK[depth]:
        expected = {v: k for k, v in _BLOCKS.items()}[STANDARD_BLOCK[depth]]
        raise ConfigError(
            f"RESNET.TRANS_FUN {cfg.RESNET.TRANS_FUN} does not fit MODEL.DEPTH {depth}: "
            f"ResNet-{depth} uses {expected}"
        )
    if cfg.MODEL.LOCAL_STRIDE not in (16, 32):
        raise ConfigError(f"MODEL.LOCAL_STRIDE must be 16 or 32, got {cfg.MODEL.LOCAL_STRIDE}")
    if cfg.RESNET.NUM_GROUPS < 1 or cfg.RESNET.WIDTH_PER_GROUP < 1:
        raise ConfigError("RESNET.NUM_GROUPS and RESNET.WIDTH_PER_GROUP must be positive")
    if cfg.RESNET.STEM not in STEMS:
        raise ConfigError(f"RESNET.STEM must be one of {STEMS}, got {cfg.RESNET.STEM!r}")
    return BACKBONES.get(cfg.MODEL.TYPE)(
        depth=depth,
        block=block,
        groups=cfg.RESNET.NUM_GROUPS,
        width_per_group=cfg.RESNET.WIDTH_PER_GROUP,
        stride_1x1=cfg.RESNET.STRIDE_1X1,
        local_stride=cfg.MODEL.LOCAL_STRIDE,
        bn_eps=cfg.BN.EPS,
        bn_momentum=cfg.BN.MOM,
        zero_init_final_gamma=cfg.BN.ZERO_INIT_FINAL_GAMMA,
        freeze_bn=cfg.MODEL.FREEZE_BN,
        freeze_stem=cfg.MODEL.FREEZE_STEM,
        stem=cfg.RESNET.STEM,
    )


def build_inference_model(cfg):
    """build_model for extraction and inspection, where the classifiers play no part:
    MODEL.NUM_CLASSES 0 (the trainer's "take the count from the data") builds them with one class,
    and load_weights skips them."""
    if cfg.MODEL.NUM_CLASSES <= 0:
        cfg = cfg.clone()
        cfg.MODEL.NUM_CLASSES = 1
    return build_model(cfg)


def build_model(cfg):
    """The whole DELG model for the config."""
    model_cfg, heads, local = cfg.MODEL, cfg.MODEL.HEADS, cfg.MODEL.LOCAL
    if model_cfg.NUM_CLASSES <= 0:
        raise ConfigError(
            "MODEL.NUM_CLASSES must be > 0 to build the model (the trainer sets it from the data); "
            f"got {model_cfg.NUM_CLASSES}"
        )
    if heads.REDUCTION_DIM <= 0:
        raise ConfigError(f"MODEL.HEADS.REDUCTION_DIM must be > 0, got {heads.REDUCTION_DIM}")
    backbone = build_backbone(cfg)
    if heads.IN_FEAT not in (0, backbone.block4_channels):
        raise ConfigError(
            f"MODEL.HEADS.IN_FEAT is {heads.IN_FEAT} but this backbone's block4 has "
            f"{backbone.block4_channels} channels (set 0 to derive it)"
        )
    if local.TYPE == "seed" and local.DESCRIPTOR_DIM != local.ATTENTION_DIM:
        raise ConfigError(
            "MODEL.LOCAL.TYPE seed uses the attention network's hidden map as descriptor: "
            f"MODEL.LOCAL.DESCRIPTOR_DIM ({local.DESCRIPTOR_DIM}) must equal "
            f"MODEL.LOCAL.ATTENTION_DIM ({local.ATTENTION_DIM})"
        )
    _check_attention_input(local)
    margin_head = MARGIN_HEADS.get(heads.MARGIN_TYPE)(
        heads.REDUCTION_DIM, model_cfg.NUM_CLASSES, heads.SCALE, heads.MARGIN
    )
    local_head = LOCAL_HEADS.get(local.TYPE)(
        backbone.block3_channels,
        local.ATTENTION_DIM,
        local.DESCRIPTOR_DIM,
        cfg.BN.EPS,
        cfg.BN.MOM,
        **_local_head_options(local),
    )
    return DELG(backbone, local_head, margin_head, heads.GEM_P, heads.GEM_LEARNABLE)


def _check_attention_input(local):
    if local.ATTENTION_INPUT not in ATTENTION_INPUTS:
        raise ConfigError(
            f"MODEL.LOCAL.ATTENTION_INPUT must be one of {ATTENTION_INPUTS}, "
            f"got {local.ATTENTION_INPUT!r}"
        )


def _local_head_options(local):
    """Options of the autoencoder head only: the seed head has no decoder (its attention always
    reads block3), so MODEL.LOCAL.ATTENTION_INPUT does not apply to it."""
    return {"attention_input": local.ATTENTION_INPUT} if local.TYPE == "autoencoder" else {}
