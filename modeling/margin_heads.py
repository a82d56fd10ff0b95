"""Classification heads on the global embedding: cosine logits, with or without an angular margin.

All heads take (embedding [B, D], labels [B] or None) and return logits [B, num_classes]. Without
labels (validation, inspection) every head returns the plain scaled cosine s cos(theta). The cosine
and the margin arithmetic run in at least float32 with autocast off: the margin acts on cosines near
+-1, where bfloat16 keeps only 2-3 digits, and the head costs under 1% of a training step.
"""

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.registry import MARGIN_HEADS


def _autocast_off(device):
    return (
        contextlib.nullcontext()
        if device.type == "meta"
        else torch.autocast(device.type, enabled=False)
    )


@MARGIN_HEADS.register("cosine")
class CosineHead(nn.Module):
    """Normalised softmax: logits s cos(theta) for every class (margin unused)."""

    def __init__(self, in_features, num_classes, scale, margin=0.0):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.scale, self.margin = float(scale), float(margin)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embedding):
        """cos(theta) between each embedding and each class weight, [B, num_classes], clamped to
        [-1, 1]."""
        dtype = torch.promote_types(embedding.dtype, torch.float32)
        with _autocast_off(embedding.device):
            unit_embedding = F.normalize(embedding.to(dtype), dim=1)
            unit_weight = F.normalize(self.weight.to(dtype), dim=1)
            return F.linear(unit_embedding, unit_weight).clamp(-1.0, 1.0)

    def forward(self, embedding, labels=None):
        return self.scale * self.cosine(embedding)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, scale={self.scale}, "
            f"margin={self.margin}"
        )


def _target_with_margin(cosine, labels, margin):
    """(cos(theta), cos(theta + m)) of each sample's target class, [B, 1] each."""
    target = cosine.gather(1, labels.view(-1, 1).long())
    # clamped away from 0 so that the gradient of the square root stays finite at cos = +-1
    sine = (1.0 - target * target).clamp(min=1e-12).sqrt()
    return target, target * math.cos(margin) - sine * math.sin(margin)


@MARGIN_HEADS.register("arcface")
class ArcFaceHead(CosineHead):
    """ArcFace as in the official DELG release.

    Target class: s cos(theta + m) while theta + m < pi, else s cos(theta) (the margin is dropped,
    so the logit stays monotonic in theta); other classes: s cos(theta).
    """

    def forward(self, embedding, labels=None):
        cosine = self.cosine(embedding)
        if labels is None:
            return self.scale * cosine
        target, with_margin = _target_with_margin(cosine, labels, self.margin)
        # theta + m < pi  <=>  cos(theta) > cos(pi - m) = -cos(m)
        target_logit = torch.where(target > -math.cos(self.margin), with_margin, target)
        return self.scale * cosine.scatter(1, labels.view(-1, 1).long(), target_logit)


@MARGIN_HEADS.register("curricular_arcface")
class CurricularArcFaceHead(CosineHead):
    """The seed project's head: ArcFace with a CurricularFace-style modulation of hard negatives.

    Target class: cos(theta + m) while cos(theta) > cos(pi - m), else cos(theta) - m sin(pi - m)
    (CosFace-like fallback). Non-target classes with cos > cos(theta_target + m) (hard negatives)
    become cos (t + cos), where t is a running mean of the target cosine (momentum 0.01), updated
    before use in each training forward. All times s. Differs from the seed only in that t is not
    updated outside training mode.
    """

    t_momentum = 0.01

    def __init__(self, in_features, num_classes, scale, margin):
        super().__init__(in_features, num_classes, scale, margin)
        self.register_buffer("t", torch.zeros(1))

    def forward(self, embedding, labels=None):
        cosine = self.cosine(embedding)
        if labels is None:
            return self.scale * cosine
        target, with_margin = _target_with_margin(cosine, labels, self.margin)
        fallback = target - math.sin(math.pi - self.margin) * self.margin
        target_logit = torch.where(target > math.cos(math.pi - self.margin), with_margin, fallback)
        if self.training:
            with torch.no_grad():
                self.t.mul_(1.0 - self.t_momentum).add_(
                    self.t_momentum * target.mean().to(self.t.dtype)
                )
        t = self.t.to(cosine.dtype)
        hard = cosine > with_margin
        cosine = torch.where(hard, cosine * (t + cosine), cosine)
        return self.scale * cosine.scatter(1, labels.view(-1, 1).long(), target_logit)
