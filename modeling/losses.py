"""The DELG training loss: global CE + beta * attention CE + lambda * reconstruction MSE."""

import torch.nn as nn
import torch.nn.functional as F

from core.config import ConfigError


class DelgLoss(nn.Module):
    """``loss, parts = DelgLoss(...)(outputs, labels)`` on the dict returned by ``DELG.forward``.

    parts = {"global", "attention", "reconstruction"}: the unweighted terms as detached 0-dim
    float32 tensors, so
    that logging costs no device synchronisation until the caller asks for ``.item()``.
    """

    def __init__(self, global_weight=1.0, attention_weight=1.0, reconstruction_weight=10.0):
        super().__init__()
        self.global_weight = global_weight
        self.attention_weight = attention_weight
        self.reconstruction_weight = reconstruction_weight

    def forward(self, outputs, labels):
        global_ce = F.cross_entropy(outputs["global_logits"].float(), labels)
        attention_ce = F.cross_entropy(outputs["attention_logits"].float(), labels)
        reconstruction = outputs["reconstruction_loss"].float()
        total = (
            self.global_weight * global_ce
            + self.attention_weight * attention_ce
            + self.reconstruction_weight * reconstruction
        )
        parts = {
            "global": global_ce.detach(),
            "attention": attention_ce.detach(),
            "reconstruction": reconstruction.detach(),
        }
        return total, parts


def build_loss(cfg):
    """DelgLoss with the weights of MODEL.LOSSES."""
    if cfg.MODEL.LOSS_FUN != "cross_entropy":
        raise ConfigError(
            "MODEL.LOSS_FUN must be cross_entropy (DELG trains with cross-entropy on margin "
            f"logits), got {cfg.MODEL.LOSS_FUN!r}"
        )
    weights = cfg.MODEL.LOSSES
    return DelgLoss(weights.GLOBAL_WEIGHT, weights.ATTENTION_WEIGHT, weights.RECONSTRUCTION_WEIGHT)
