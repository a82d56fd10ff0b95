"""The DELG model: one backbone (modeling.backbone), a global branch on its global map (ResNet:
block4) and a local branch on its gradient-stopped local map (ResNet: block3).

    local map ──(detach)──► local head ──► attention [B,1,h,w], descriptors [B,d,h,w] ──► attention
    classifier; global map ──► GeM ──► whitening FC (embedding) ──► margin head (global logits)

Because the local branch sees a detached map, the local losses train only the local head and one
backward pass of the summed loss is correct (the seed needed two).
"""

import torch.nn as nn

import modeling.local_head  # noqa: F401  (registers the local heads)
import modeling.margin_heads  # noqa: F401  (registers the margin heads)
import modeling.resnet  # noqa: F401  (registers the backbone "resnet")
import modeling.timm_backbone  # noqa: F401  (registers the backbone "timm")
from core.config import ConfigError
from modeling.local_head import ATTENTION_INPUTS
from modeling.pooling import GeM
from modeling.registry import BACKBONES, LOCAL_HEADS, MARGIN_HEADS


class DELG(nn.Module):
    """Wires built parts together; sizes come from the parts (the backbone's output_shape(), the
    embedding size, the class count)."""

    def __init__(self, backbone, local_head, margin_head, gem_p=3.0, gem_learnable=False):
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(gem_p, learnable=gem_learnable)
        self.whiten = nn.Linear(backbone.output_shape()["global"].channels, margin_head.in_features)
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

    @property
    def local_geometry(self):
        """LocalGeometry of the local map (asked when extracting; a timm CNN measures it once)."""
        return self.backbone.local_geometry()

    # Parameter names of the layers whose shape depends on the number of classes: load_weights
    # leaves them out (with a line) when a checkpoint was trained on another class count.
    classifier_keys = ("margin.weight", "attention_classifier.weight", "attention_classifier.bias")

    def embed(self, global_map):
        """Global embedding after the whitening FC, before L2 normalisation."""
        return self.whiten(self.pool(global_map))

    def forward(self, images, labels=None):
        """Training forward. Without labels the margin head returns plain scaled cosine logits."""
        local_map, global_map = self.backbone(images)
        embedding = self.embed(global_map)
        local = self.local_head(local_map.detach())
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
        The global map and head run only for want_global, the local head only for want_local.
        """
        shared = self.backbone.forward_shared(images)
        out = {}
        if want_local:
            out["attention"], out["local"] = self.local_head.extract(
                self.backbone.local_map(shared)
            )
        if want_global:
            out["global"] = self.embed(self.backbone.global_map(shared))
        return out


def build_backbone(cfg):
    """The backbone of MODEL.TYPE (modeling.registry.BACKBONES), built by its from_config(cfg)."""
    return BACKBONES.get(cfg.MODEL.TYPE).from_config(cfg)


def describe_backbone(cfg):
    """The configured backbone in a few words (benchmark printouts)."""
    return BACKBONES.get(cfg.MODEL.TYPE).describe(cfg)


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
    shapes = backbone.output_shape()
    if heads.IN_FEAT not in (0, shapes["global"].channels):
        raise ConfigError(
            f"MODEL.HEADS.IN_FEAT is {heads.IN_FEAT} but this backbone's global map has "
            f"{shapes['global'].channels} channels (set 0 to derive it)"
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
        shapes["local"].channels,
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
