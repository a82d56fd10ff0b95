"""TensorFlow 'SAME' padding, which depends on the input size (PyTorch's fixed padding cannot
express it).

For a side n, kernel k and stride s, TF 'SAME' gives ceil(n / s) outputs and pads
total = max((ceil(n / s) - 1) * s + k - n, 0) pixels, total // 2 before and the rest after.
Examples: conv 7x7/2 on an even side pads 2 before and 3 after (odd: 3 and 3); max-pool 3x3/2 on an
even side pads 0 before and 1 after (odd: 1 and 1).
Max-pools pad with -inf (TF ignores padded cells).
"""

import math

import torch.nn as nn
import torch.nn.functional as F


def same_padding(size, kernel, stride):
    """(before, after) of TF 'SAME' padding for one side of the given size."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePad2d(nn.Module):
    """Pads [B, C, H, W] as TF 'SAME' does for the following layer (kernel, stride) with value.

    ``geometry_padding`` is what modeling.geometry counts for it: the padding before an even side
    (an odd side shifts a TF map by up to one cell of the padded layer).
    """

    def __init__(self, kernel, stride, value=0.0):
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.value = value
        self.geometry_padding = same_padding(2 * kernel * stride, kernel, stride)[0]

    def forward(self, x):
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom), value=self.value)

    def extra_repr(self):
        return f"kernel={self.kernel}, stride={self.stride}, value={self.value}"
