"""Generalised-mean (GeM) pooling: p = 1 is average pooling, p -> infinity is max pooling."""

import torch
import torch.nn as nn


class GeM(nn.Module):
    """GeM over the spatial dimensions: [B, C, H, W] -> [B, C].

    The power is a parameter when learnable (the seed) and a buffer otherwise (the paper); either
    way it is stored as ``p`` with shape [1], so checkpoints of both variants share the key. Pooling
    runs in at least float32 (x ** 3 of activations overflows float16 under autocast); the result
    comes back in the input's dtype.
    """

    def __init__(self, p=3.0, learnable=False, eps=1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM power must be positive, got {p}")
        self.eps = eps
        power = torch.full((1,), float(p))
        if learnable:
            self.p = nn.Parameter(power)
        else:
            self.register_buffer("p", power)

    def forward(self, x):
        work = x.to(torch.promote_types(x.dtype, torch.float32))
        p = self.p.to(work.dtype)
        return work.clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p).to(x.dtype)

    def extra_repr(self):
        power = "?" if self.p.is_meta else f"{self.p.item():.4g}"
        return f"p={power}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"
