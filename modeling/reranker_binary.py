"""Packing of a binary re-ranker's +-1 database codes into bytes (bit 1 = positive, np.packbits
order: the first value is the most significant bit of the first byte); 128 values = 16 bytes."""

import numpy as np
import torch


def pack_codes(codes):
    """+-1 values [..., bits] (tensor or array; bits a multiple of 8) -> uint8 [..., bits // 8]."""
    values = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if values.shape[-1] % 8:
        raise ValueError(f"codes of {values.shape[-1]} values: a multiple of 8 expected")
    return np.packbits(values > 0, axis=-1)


def unpack_codes(packed, dtype=torch.float32):
    """uint8 [..., bytes] -> +-1 tensor [..., 8 * bytes]."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1)
    return torch.from_numpy(bits).to(dtype) * 2 - 1
