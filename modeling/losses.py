"""The DELG training loss as a table of terms: global CE + beta * attention CE + lambda *
reconstruction MSE, summed in registration order.

A term is a function ``term(outputs, labels) -> 0-dim tensor`` on the dict returned by
``DELG.forward``, registered with its weight key under MODEL.LOSSES::

    @register_loss_term("name", "NAME_WEIGHT", default_weight=1.0)
    def name_term(outputs, labels): ...

The total is the weighted sum over the table; every term is also logged unweighted as
``loss_<name>`` (core/step.py). A term's weight is MODEL.LOSSES.<key> where the config has that key
(add it to core/config.py to set it from a YAML file), else its default_weight.
"""

from collections import namedtuple

import torch.nn as nn
import torch.nn.functional as F

from core.config import ConfigError
from modeling.registry import LOSS_TERMS

LossTerm = namedtuple("LossTerm", ["function", "weight_key", "default_weight"])


def register_loss_term(name, weight_key, default_weight=None):
    """Decorator adding ``function`` to the table under ``name``, weighted by MODEL.LOSSES.<key>."""

    def decorator(function):
        LOSS_TERMS.register(name)(LossTerm(function, weight_key, default_weight))
        return function

    return decorator


@register_loss_term("global", "GLOBAL_WEIGHT")
def global_term(outputs, labels):
    """Cross-entropy of the margin head's logits."""
    return F.cross_entropy(outputs["global_logits"].float(), labels)


@register_loss_term("attention", "ATTENTION_WEIGHT")
def attention_term(outputs, labels):
    """Cross-entropy of the attention classifier (beta)."""
    return F.cross_entropy(outputs["attention_logits"].float(), labels)


@register_loss_term("reconstruction", "RECONSTRUCTION_WEIGHT")
def reconstruction_term(outputs, labels):
    """The autoencoder's reconstruction MSE (lambda), computed by the local head."""
    return outputs["reconstruction_loss"].float()


class DelgLoss(nn.Module):
    """``loss, parts = DelgLoss(weights)(outputs, labels)``: weights {term name: weight} for the
    terms of the table (LOSS_TERMS), summed in the table's order.

    parts = {name: the unweighted term} as detached 0-dim float32 tensors, so that logging costs no
    device synchronisation until the caller asks for ``.item()``.
    """

    def __init__(self, weights):
        super().__init__()
        self.weights = dict(weights)
        self.terms = [(name, term.function) for name, term in LOSS_TERMS.entries()]
        unknown = sorted(set(self.weights) - {name for name, _ in self.terms})
        if unknown or len(self.weights) != len(self.terms):
            missing = sorted({name for name, _ in self.terms} - set(self.weights))
            raise ValueError(f"loss weights: unknown terms {unknown}, missing {missing}")

    def forward(self, outputs, labels):
        total, parts = None, {}
        for name, function in self.terms:
            value = function(outputs, labels)
            weighted = self.weights[name] * value
            total = weighted if total is None else total + weighted
            parts[name] = value.detach()
        return total, parts


def loss_weights(cfg):
    """{term name: weight} from MODEL.LOSSES (a term's default where the config lacks its key)."""
    weights = {}
    for name, term in LOSS_TERMS.entries():
        if term.weight_key in cfg.MODEL.LOSSES:
            weights[name] = float(cfg.MODEL.LOSSES[term.weight_key])
        elif term.default_weight is not None:
            weights[name] = float(term.default_weight)
        else:
            raise ConfigError(
                f"MODEL.LOSSES.{term.weight_key} (the weight of loss term {name!r}) is missing: "
                "add it to core/config.py or give the term a default_weight"
            )
    return weights


def build_loss(cfg):
    """DelgLoss over the registered terms with the weights of MODEL.LOSSES."""
    if cfg.MODEL.LOSS_FUN != "cross_entropy":
        raise ConfigError(
            "MODEL.LOSS_FUN must be cross_entropy (DELG trains with cross-entropy on margin "
            f"logits), got {cfg.MODEL.LOSS_FUN!r}"
        )
    return DelgLoss(loss_weights(cfg))
