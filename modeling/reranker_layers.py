"""The layers of the learned re-ranker (modeling/reranker.py): masked multi-head attention, the pair
layer (self-attention inside each image, cross-attention to the other image, a matching token that
attends to both, FFN) and the binarising projection. Sizes are constructor arguments."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention of x [B, N, dim] over context [B, M, dim]; padding [B, M] bool marks the
    context slots that take no part (True = padded), so their count and order change nothing."""

    def __init__(self, dim, heads, dropout=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, context, padding):
        batch, n, dim = x.shape
        head_dim = dim // self.heads
        q = self.query(x).view(batch, n, self.heads, head_dim).transpose(1, 2)
        kv = self.key_value(context).view(batch, context.shape[1], 2, self.heads, head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = ~padding[:, None, None, :]  # True: takes part
        drop = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out(out.transpose(1, 2).reshape(batch, n, dim))


class FeedForward(nn.Sequential):
    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )


class PairLayer(nn.Module):
    """One pre-norm layer over the two images' tokens a [B, Na, dim], b [B, Nb, dim] (their
    paddings pa, pb) and the matching token m [B, 1, dim]: self-attention inside each image (shared
    weights), cross-attention of each image to the other, the matching token attending to all
    tokens of both, and a shared FFN."""

    def __init__(self, dim, heads, ffn_dim, dropout=0.0):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, dropout)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attention = Attention(dim, heads, dropout)
        self.match_norm = nn.LayerNorm(dim)
        self.match_attention = Attention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, a, pa, b, pb, m):
        na, nb = self.self_norm(a), self.self_norm(b)
        a = a + self.self_attention(na, na, pa)
        b = b + self.self_attention(nb, nb, pb)
        na, nb = self.cross_norm(a), self.cross_norm(b)
        a, b = a + self.cross_attention(na, nb, pb), b + self.cross_attention(nb, na, pa)
        both = self.match_norm(torch.cat([a, b], dim=1))
        m = m + self.match_attention(self.match_norm(m), both, torch.cat([pa, pb], dim=1))
        a, b, m = (t + self.ffn(self.ffn_norm(t)) for t in (a, b, m))
        return a, b, m


class BinaryProjection(nn.Module):
    """A learned projection of local descriptors to `bits` values, initialised as a random
    (semi-)orthogonal rotation scaled to unit variance per bit (ITQ-like). encode(x, hard):
    erf(sharpness * z), the differentiable surrogate used in training, or sign(z) (hard). With
    straight_through the training forward is sign(z) too, its gradient erf's (what evaluation
    computes is what training sees)."""

    def __init__(self, in_dim, bits, sharpness=3.0, straight_through=False):
        super().__init__()
        self.sharpness = sharpness
        self.straight_through = straight_through
        self.weight = nn.Parameter(torch.empty(bits, in_dim))
        nn.init.orthogonal_(self.weight, gain=math.sqrt(in_dim))

    def forward(self, x):
        return F.linear(x, self.weight)

    def encode(self, x, hard):
        z = self(x)
        if hard:
            return torch.sign(z)
        soft = torch.erf(self.sharpness * z)
        return soft + (torch.sign(z) - soft).detach() if self.straight_through else soft
