"""The learned local re-ranker: a pairwise transformer over the local descriptors of a query and a
database image, one logit per pair (docs/reranking.md).

AMES-like by default (``RERANKER.TYPE ames``): each image's tokens are its locals (descriptor
embedding + scale embedding + side embedding, optionally an (x, y) encoding) and one image token
(optionally carrying the global descriptor); every layer is self-attention inside each image,
cross-attention to the other image and a matching token attending to all tokens; the logit is read
from the matching token. No positional order is used and padded slots are masked out of every
attention, so the logit does not depend on the order of the locals or on padding. Query and database
counts may differ. The binarised variant projects locals to RERANKER.BITS values; the database
side is sign(z) in evaluation (128 bits = 16 bytes per local) and in training sign(z) with the
gradient of erf(sharpness * z) (RERANKER.BINARY_STRAIGHT_THROUGH; False: erf(sharpness * z)
itself); the query side stays real.

    model = build_reranker(cfg, local_dim, global_dim)
    logits = model(query, database)               # LocalBatch each (modeling/reranker_inputs.py)
    save_reranker(...); model, info = load_reranker(path)   # modeling/reranker_weights.py
"""

import torch
import torch.nn.functional as F
from torch import nn

from modeling.registry import RERANKERS
from modeling.reranker_layers import BinaryProjection, PairLayer


@RERANKERS.register("ames")
class PairwiseReranker(nn.Module):
    """One logit per (query, database) pair of LocalBatches with the same batch size."""

    def __init__(
        self,
        local_dim,
        dim=128,
        depth=5,
        heads=2,
        ffn_dim=1024,
        dropout=0.0,
        num_scales=7,
        global_dim=0,
        xy_encoding=False,
        bits=0,
        sharpness=3.0,
        similarity_k=0,
        straight_through=False,
    ):
        super().__init__()
        binary = BinaryProjection(local_dim, bits, sharpness, straight_through) if bits else None
        self.binary = binary
        self.embed = nn.Linear(bits or local_dim, dim)
        self.scale_embedding = nn.Embedding(num_scales, dim)
        self.side_embedding = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.image_token = nn.Parameter(torch.randn(2, dim) * 0.02)
        self.match_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.global_embed = nn.Linear(global_dim, dim) if global_dim else None
        self.xy_embed = nn.Linear(2, dim) if xy_encoding else None
        self.similarity_k = similarity_k
        self.similarity_embed = (
            nn.Sequential(nn.Linear(similarity_k, dim), nn.GELU(), nn.Linear(dim, dim))
            if similarity_k
            else None
        )
        self.layers = nn.ModuleList(PairLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        self.num_scales = num_scales

    @torch.no_grad()
    def database_codes(self, descriptors):
        """Binary models: descriptors [..., d] -> their +-1 codes [..., BITS] (sign of the learned
        projection), what a database stores."""
        if self.binary is None:
            raise ValueError("database_codes: this re-ranker is not binary (RERANKER.BINARY False)")
        weight = self.binary.weight
        return self.binary.encode(descriptors.to(weight.device, weight.dtype), hard=True)

    def descriptor_inputs(self, batch, side, coded):
        """The descriptors as the embedding reads them: as stored, or (binary) the query's real
        projection and the database's codes (erf in training, sign in evaluation)."""
        x = batch.descriptors.to(self.embed.weight.dtype)
        if self.binary is not None and not coded:
            x = self.binary.encode(x, hard=not self.training) if side else self.binary(x)
        return x

    def local_inputs(self, batch, x, side, similarity):
        """The embedded locals [B, N, dim] of one side (0 query, 1 database)."""
        tokens = self.embed(x) + self.scale_embedding(batch.scales.clamp(0, self.num_scales - 1))
        if self.xy_embed is not None:
            tokens = tokens + self.xy_embed(normalised_locations(batch.locations, batch.padding))
        if similarity is not None:
            tokens = tokens + self.similarity_embed(similarity)
        return tokens + self.side_embedding[side]

    def image_tokens(self, batch, x, side, similarity=None):
        """[B, N + 1, dim] and padding [B, N + 1]: the image token first, never padded."""
        locals_ = self.local_inputs(batch, x, side, similarity)
        token = self.image_token[side].expand(locals_.shape[0], 1, -1)
        if self.global_embed is not None:
            token = token + self.global_embed(batch.global_descriptor.to(token.dtype))[:, None]
        padding = torch.cat([torch.zeros_like(batch.padding[:, :1]), batch.padding], dim=1)
        return torch.cat([token, locals_], dim=1), padding

    def forward(self, query, database, database_coded=False):
        if query.descriptors.shape[0] != database.descriptors.shape[0]:
            raise ValueError(
                f"{query.descriptors.shape[0]} query rows but {database.descriptors.shape[0]} "
                "database rows: one pair per row"
            )
        xa = self.descriptor_inputs(query, 0, coded=False)
        xb = self.descriptor_inputs(database, 1, coded=database_coded)
        sa, sb = None, None
        if self.similarity_embed is not None:
            sa, sb = best_similarities(xa, query.padding, xb, database.padding, self.similarity_k)
        a, pa = self.image_tokens(query, xa, 0, sa)
        b, pb = self.image_tokens(database, xb, 1, sb)
        m = self.match_token.expand(a.shape[0], 1, -1)
        for layer in self.layers:
            a, b, m = layer(a, pa, b, pb, m)
        return self.head(self.norm(m[:, 0])).squeeze(-1).float()


def best_similarities(xa, pa, xb, pb, k):
    """Each local's k highest cosine similarities to the other image's locals (padded slots left
    out, -1 where the other image has fewer than k): [B, Na, k] and [B, Nb, k]."""
    sim = F.normalize(xa, dim=-1) @ F.normalize(xb, dim=-1).transpose(1, 2)
    low = torch.tensor(-1.0, dtype=sim.dtype, device=sim.device)
    sim = torch.where(pa[:, :, None] | pb[:, None, :], low, sim)
    extra = torch.full_like(sim[:, :1, :1], -1.0)  # so that top-k exists when an image is short
    to_a = torch.cat([sim, extra.expand(-1, sim.shape[1], k)], dim=2).topk(k, dim=2).values
    to_b = torch.cat([sim, extra.expand(-1, k, sim.shape[2])], dim=1).topk(k, dim=1).values
    return to_a, to_b.transpose(1, 2)


def normalised_locations(locations, padding):
    """(x, y) centred on each image's mean and divided by its spread (padded slots left out), so
    the encoding does not depend on the image size or on padding."""
    keep = (~padding).unsqueeze(-1).to(locations.dtype)
    count = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (locations * keep).sum(1, keepdim=True) / count
    spread = (((locations - mean) ** 2 * keep).sum((1, 2), keepdim=True) / count).sqrt()
    return (locations - mean) / spread.clamp(min=1e-6)


def combine_scores(global_scores, logits, lam, gamma):
    """The final score lam * global + (1 - lam) * sigmoid(gamma * logit)."""
    return lam * global_scores + (1.0 - lam) * torch.sigmoid(gamma * logits)


def build_reranker(cfg, local_dim, global_dim=0):
    """The re-ranker of cfg.RERANKER for locals of local_dim (global_dim: the stores' global
    descriptor size, used with RERANKER.GLOBAL_TOKEN)."""
    r = cfg.RERANKER
    return RERANKERS.get(r.TYPE)(
        local_dim,
        dim=r.DIM,
        depth=r.DEPTH,
        heads=r.HEADS,
        ffn_dim=r.FFN_DIM,
        dropout=r.DROPOUT,
        num_scales=r.NUM_SCALES,
        global_dim=global_dim if r.GLOBAL_TOKEN else 0,
        xy_encoding=r.XY_ENCODING,
        bits=r.BITS if r.BINARY else 0,
        sharpness=r.BINARY_SHARPNESS,
        similarity_k=r.SIMILARITY_K,
        straight_through=r.BINARY_STRAIGHT_THROUGH,
    )
