"""The backbone contract: what DELG needs from a backbone, written once.

A backbone turns images into two maps (like detectron2's ``Backbone.output_shape()`` and timm's
``feature_info``, but for DELG's two branches):

    images ──forward_shared──► shared map ──local_map──►  local map  (local head, gradient-stopped)
                                          └─global_map──► global map (GeM, whitening, margin head)

- ``forward_shared(images)``: the computation both branches share. DELG detaches what the local
  branch sees, so the local losses train only the local head (the official gradient stop); every
  module of ``forward_shared`` is trained by the global loss alone.
- ``local_map(shared)``: the map the local head reads (ResNet: block3, max-pooled at local stride
  32; a timm CNN: the stage of the chosen stride; a ViT: the patch grid of the local block).
- ``global_map(shared)``: the map GeM pools (ResNet: block4; timm: the last stage / block).
- ``output_shape()``: ``{"local": MapSpec, "global": MapSpec}`` (channels, stride).
- ``local_geometry()``: ``modeling.geometry.LocalGeometry`` (receptive field, stride, padding) of
  the local map, which places keypoints and boxes.
- ``local_map_size(size)``: the (h, w) of the local map for an input (height, width); 0 on a side
  means no cell at all (the extraction pyramid leaves such a scale out).

A backbone registers a class with ``@BACKBONES.register("name")`` (modeling.registry) and a
``from_config(cfg)`` class method, the only place that reads the config; ``MODEL.TYPE name`` picks
it. ``forward`` is written here once.
"""

from collections import namedtuple

import torch.nn as nn

MapSpec = namedtuple("MapSpec", ["channels", "stride"])


class Backbone(nn.Module):
    """Base class of DELG backbones; subclasses implement the methods that raise here."""

    @classmethod
    def from_config(cls, cfg):
        raise NotImplementedError(f"{cls.__name__} does not implement from_config(cfg)")

    @classmethod
    def describe(cls, cfg):
        """A short name of the configured backbone for printouts."""
        return cls.__name__

    def forward_shared(self, images):
        raise NotImplementedError

    def local_map(self, shared):
        raise NotImplementedError

    def global_map(self, shared):
        raise NotImplementedError

    def output_shape(self):
        raise NotImplementedError

    def local_geometry(self):
        raise NotImplementedError

    def local_map_size(self, size):
        raise NotImplementedError

    def forward(self, images):
        """(local map, global map) of the images."""
        shared = self.forward_shared(images)
        return self.local_map(shared), self.global_map(shared)
