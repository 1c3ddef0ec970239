"""Bit-packing of spike tensors: 1 bit per element instead of 2 or 4 bytes, exactly reversible.

Side by side: the readable reference (``pack_bits_ref`` / ``unpack_bits_ref``, NumPy's packbits),
the Triton launchers around ``pack_bits_kernel`` / ``unpack_bits_kernel``, the eager torch path and
the public ``pack_bits`` / ``unpack_bits``. Element 8*i + j of the flattened tensor is bit j of byte
i ("little" bit order); the last byte is padded with zeros. ``a2sg_triton.memory`` uses these to
keep the spikes a layer saves for backward.
"""

import math

import numpy as np
import torch

from .backend import HAS_TRITON, resolve_backend
from .checks import check_tensor

if HAS_TRITON:
    import triton

    from ..kernels.bitpack import pack_bits_kernel, unpack_bits_kernel

BLOCK_BYTES = 512  # bytes per program: 4096 spikes


def packed_numel(numel):
    """Bytes that hold ``numel`` bits."""
    return (numel + 7) // 8


# -- reference ---------------------------------------------------------------------------------


def pack_bits_ref(x):
    """NumPy's packbits of x != 0, little bit order: the readable reference."""
    bits = x.detach().cpu().reshape(-1).numpy() != 0
    return torch.from_numpy(np.packbits(bits, bitorder="little")).to(x.device)


def unpack_bits_ref(packed, shape, dtype):
    bits = np.unpackbits(packed.cpu().numpy(), count=math.prod(shape), bitorder="little")
    return torch.from_numpy(bits).to(dtype).reshape(shape).to(packed.device)


# -- Triton launchers --------------------------------------------------------------------------


def pack_bits_triton(x):
    """x contiguous -> uint8 [ceil(numel / 8)]."""
    M = x.numel()
    packed = torch.empty(packed_numel(M), dtype=torch.uint8, device=x.device)
    if M > 0:
        pack_bits_kernel[(triton.cdiv(packed.numel(), BLOCK_BYTES),)](x, packed, M, BLOCK=BLOCK_BYTES)
    return packed


def unpack_bits_triton(packed, shape, dtype):
    x = torch.empty(shape, dtype=dtype, device=packed.device)
    if x.numel() > 0:
        unpack_bits_kernel[(triton.cdiv(packed.numel(), BLOCK_BYTES),)](packed, x, x.numel(), BLOCK=BLOCK_BYTES)
    return x


# -- eager torch path --------------------------------------------------------------------------


def _shifts(device):
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits_torch(x):
    M = x.numel()
    bits = torch.zeros(8 * packed_numel(M), dtype=torch.uint8, device=x.device)
    bits[:M] = x.reshape(-1) != 0
    return (bits.view(-1, 8) << _shifts(x.device)).sum(1, dtype=torch.uint8)


def unpack_bits_torch(packed, shape, dtype):
    bits = (packed[:, None] >> _shifts(packed.device)) & 1
    return bits.reshape(-1)[:math.prod(shape)].to(dtype).reshape(shape)


PACK = {"triton": pack_bits_triton, "torch": pack_bits_torch}
UNPACK = {"triton": unpack_bits_triton, "torch": unpack_bits_torch}


def pack_backend(backend, x):
    """'triton' or 'torch' for packing x (the inductor CPU backend packs with torch)."""
    return "triton" if resolve_backend(backend, x) == "triton" else "torch"


# -- public ------------------------------------------------------------------------------------


def pack_bits(x, backend="auto"):
    """Spikes x (any float tensor whose elements are exactly 0 or 1) -> uint8 [ceil(x.numel() / 8)].

    Each element becomes one bit: ``x != 0``. Values other than 0 and 1 are not checked (that would
    cost a pass over x): they come back as 1. ``backend``: "triton" (CUDA, or the interpreter),
    "torch", or "auto" (Triton for CUDA tensors).
    """
    check_tensor("x", x)
    backend = pack_backend(backend, x)
    return PACK[backend](x.contiguous())


def unpack_bits(packed, shape, dtype=torch.float32, backend="auto"):
    """The inverse of ``pack_bits``: a tensor of ``shape`` and ``dtype`` holding 0 and 1."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        got = f"{packed.dim()}-d {packed.dtype}" if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"packed must be a 1-d uint8 tensor from pack_bits, got {got}")
    shape = torch.Size(shape)
    if packed.numel() != packed_numel(shape.numel()):
        raise ValueError(f"packed holds {packed.numel()} bytes, shape {list(shape)} needs "
                         f"{packed_numel(shape.numel())}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    backend = pack_backend(backend, torch.empty(0, dtype=dtype, device=packed.device))
    return UNPACK[backend](packed, shape, dtype)
