"""Local heads on the (gradient-stopped) block3 map: attention scores, local descriptors, and what
their losses need.

Two variants share the attention network (conv1x1 -> hidden, BN, ReLU, conv1x1 -> 1, softplus):
- ``autoencoder`` (the paper): descriptor = conv1x1 in -> d (no activation); decoder conv1x1 d ->
  in, ReLU; the reconstruction loss is the MSE between the decoder output and block3. What the
  attention network reads (``attention_input``):
  ``decoder`` (official TF2 DELG, ``Delf.global_and_local_forward_pass``): attention on the decoder
  output; the attention classifier sees mean_hw(attention * L2-normalised block3).
  ``block3`` (TF1 DELF wiring): attention on block3; the attention classifier sees
  mean_hw(attention * L2-normalised decoder output).
- ``seed`` (the seed project): descriptor = BN(conv1(x)) of the attention network, the 512-d map
  taken before the
  ReLU; the attention classifier sees mean_hw(attention * L2-normalised descriptor); no
  reconstruction loss.

Every head returns from ``forward`` a dict with "attention" [B, 1, h, w], "descriptors" [B, d, h, w]
(not normalised), "pooled" [B, pooled_dim] (input of the attention classifier) and
"reconstruction_loss" (scalar), and from ``extract`` just (attention, descriptors). Convs start as
in the official (Keras) release: Glorot-uniform weights, zero biases.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from modeling.registry import LOCAL_HEADS


def _conv1x1(in_channels, out_channels):
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class AttentionNetwork(nn.Module):
    """conv1x1 in -> hidden, BN, ReLU, conv1x1 hidden -> 1, softplus."""

    def __init__(self, in_channels, hidden_channels, bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, hidden_channels)
        self.bn = nn.BatchNorm2d(hidden_channels, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = _conv1x1(hidden_channels, 1)

    def hidden(self, x):
        """BN(conv1(x)), before the ReLU: the seed's local descriptor."""
        return self.bn(self.conv1(x))

    def score(self, hidden):
        return F.softplus(self.conv2(F.relu(hidden)))

    def forward(self, x):
        return self.score(self.hidden(x))


class Autoencoder(nn.Module):
    """conv1x1 in -> d (the local descriptor, no activation), conv1x1 d -> in with ReLU (the
    reconstruction)."""

    def __init__(self, in_channels, descriptor_dim):
        super().__init__()
        self.encoder = _conv1x1(in_channels, descriptor_dim)
        self.decoder = _conv1x1(descriptor_dim, in_channels)

    def forward(self, x):
        reduced = self.encoder(x)
        return reduced, F.relu(self.decoder(reduced))


def attention_pool(features, attention):
    """mean over h, w of attention * L2-normalised features:
    [B, C, h, w], [B, 1, h, w] -> [B, C]."""
    return (attention * F.normalize(features, dim=1)).mean(dim=(2, 3))


ATTENTION_INPUTS = ("decoder", "block3")


@LOCAL_HEADS.register("autoencoder")
class AutoencoderLocalHead(nn.Module):
    """The paper's local head: attention network and autoencoder on block3; the attention network
    reads the decoder output (``attention_input="decoder"``, official TF2) or block3 itself."""

    def __init__(
        self,
        in_channels,
        attention_dim,
        descriptor_dim,
        bn_eps=1e-5,
        bn_momentum=0.1,
        attention_input="decoder",
    ):
        super().__init__()
        if attention_input not in ATTENTION_INPUTS:
            raise ValueError(
                f"attention input must be one of {ATTENTION_INPUTS}, got {attention_input!r}"
            )
        self.attention = AttentionNetwork(in_channels, attention_dim, bn_eps, bn_momentum)
        self.autoencoder = Autoencoder(in_channels, descriptor_dim)
        self.attention_input = attention_input
        self.descriptor_dim = descriptor_dim
        self.pooled_dim = in_channels

    def extract(self, block3):
        if self.attention_input == "block3":
            return self.attention(block3), self.autoencoder.encoder(block3)
        descriptors, reconstruction = self.autoencoder(block3)
        return self.attention(reconstruction), descriptors

    def forward(self, block3):
        descriptors, reconstruction = self.autoencoder(block3)
        if self.attention_input == "decoder":
            attention = self.attention(reconstruction)
            pooled = attention_pool(block3, attention)
        else:
            attention = self.attention(block3)
            pooled = attention_pool(reconstruction, attention)
        dtype = torch.promote_types(block3.dtype, torch.float32)
        return {
            "attention": attention,
            "descriptors": descriptors,
            "pooled": pooled,
            "reconstruction_loss": F.mse_loss(reconstruction.to(dtype), block3.to(dtype)),
        }


@LOCAL_HEADS.register("seed")
class SeedLocalHead(nn.Module):
    """The seed's local head: the attention network's hidden map BN(conv1(x)) is also the local
    descriptor."""

    def __init__(self, in_channels, attention_dim, descriptor_dim, bn_eps=1e-5, bn_momentum=0.1):
        super().__init__()
        if descriptor_dim != attention_dim:
            raise ValueError(
                "the seed local head's descriptor is the attention network's hidden map: "
                f"descriptor dim {descriptor_dim} must equal attention dim {attention_dim}"
            )
        self.attention = AttentionNetwork(in_channels, attention_dim, bn_eps, bn_momentum)
        self.descriptor_dim = descriptor_dim
        self.pooled_dim = attention_dim

    def extract(self, block3):
        hidden = self.attention.hidden(block3)
        return self.attention.score(hidden), hidden

    def forward(self, block3):
        attention, descriptors = self.extract(block3)
        return {
            "attention": attention,
            "descriptors": descriptors,
            "pooled": attention_pool(descriptors, attention),
            "reconstruction_loss": torch.zeros((), device=block3.device),
        }
