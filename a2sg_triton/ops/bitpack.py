"""Bit-packing of spike tensors: 1 bit per element instead of 2 or 4 bytes, exactly reversible.

Side by side: the readable reference (``pack_bits_ref`` / ``unpack_bits_ref``, NumPy's packbits),
the Triton launchers around ``pack_bits_kernel`` / ``unpack_bits_kernel``, the eager torch path and
the public ``pack_bits`` / ``unpack_bits``. Element 8*i + j of the flattened tensor is bit j of byte
i ("little" bit order); the last byte is padded with zeros. ``a2sg_triton.memory`` uses these to
keep the spikes a layer saves for backward.
"""

import math
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
import torch

from .backend import HAS_TRITON, resolve_backend
from .checks import check_tensor

if HAS_TRITON:
    import triton

    from ..kernels.bitpack import pack_bits_kernel, unpack_bits_kernel

BLOCK_BYTES = 512  # bytes per program: 4096 spikes


def packed_numel(numel: int) -> int:
    """Bytes that hold ``numel`` bits.

    Args:
        numel: the number of bits (elements).

    Returns:
        ceil(numel / 8).
    """
    return (numel + 7) // 8


# -- reference ---------------------------------------------------------------------------------


def pack_bits_ref(x: torch.Tensor) -> torch.Tensor:
    """NumPy's packbits of x != 0, little bit order: the readable reference.

    Args:
        x: any tensor.

    Returns:
        uint8 [ceil(x.numel() / 8)] on x's device.
    """
    bits = x.detach().cpu().reshape(-1).numpy() != 0
    return torch.from_numpy(np.packbits(bits, bitorder="little")).to(x.device)


def unpack_bits_ref(packed: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """NumPy's unpackbits, little bit order: the reference inverse of ``pack_bits_ref``.

    Args:
        packed: uint8 [ceil(prod(shape) / 8)].
        shape: the unpacked tensor's shape.
        dtype: the unpacked tensor's dtype.

    Returns:
        0 and 1 of ``shape`` and ``dtype`` on packed's device.
    """
    bits = np.unpackbits(packed.cpu().numpy(), count=math.prod(shape), bitorder="little")
    return torch.from_numpy(bits).to(dtype).reshape(shape).to(packed.device)


# -- Triton launchers --------------------------------------------------------------------------


def pack_bits_triton(x: torch.Tensor) -> torch.Tensor:
    """x contiguous -> uint8 [ceil(numel / 8)]."""
    M = x.numel()
    packed = torch.empty(packed_numel(M), dtype=torch.uint8, device=x.device)
    if M > 0:
        pack_bits_kernel[(triton.cdiv(packed.numel(), BLOCK_BYTES),)](x, packed, M, BLOCK=BLOCK_BYTES)
    return packed


def unpack_bits_triton(packed: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """uint8 [ceil(prod(shape) / 8)] -> 0 and 1 of ``shape`` and ``dtype`` (``unpack_bits_kernel``)."""
    x = torch.empty(shape, dtype=dtype, device=packed.device)
    if x.numel() > 0:
        unpack_bits_kernel[(triton.cdiv(packed.numel(), BLOCK_BYTES),)](packed, x, x.numel(), BLOCK=BLOCK_BYTES)
    return x


# -- eager torch path --------------------------------------------------------------------------


def _shifts(device: torch.device) -> torch.Tensor:
    """uint8 [8]: 0 … 7, the bit positions of a byte."""
    return torch.arange(8, dtype=torch.uint8, device=device)


def pack_bits_torch(x: torch.Tensor) -> torch.Tensor:
    """``pack_bits_triton`` in torch ops: x (any shape) -> uint8 [ceil(numel / 8)]."""
    M = x.numel()
    bits = torch.zeros(8 * packed_numel(M), dtype=torch.uint8, device=x.device)
    bits[:M] = x.reshape(-1) != 0
    return (bits.view(-1, 8) << _shifts(x.device)).sum(1, dtype=torch.uint8)


def unpack_bits_torch(packed: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``unpack_bits_triton`` in torch ops."""
    bits = (packed[:, None] >> _shifts(packed.device)) & 1
    return bits.reshape(-1)[:math.prod(shape)].to(dtype).reshape(shape)


PACK: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"triton": pack_bits_triton, "torch": pack_bits_torch}
UNPACK: dict[str, Callable[[torch.Tensor, Sequence[int], torch.dtype], torch.Tensor]] = {
    "triton": unpack_bits_triton, "torch": unpack_bits_torch}


def pack_backend(backend: str, x: torch.Tensor) -> str:
    """'triton' or 'torch' for packing x (the inductor CPU backend packs with torch).

    Args:
        backend: one of BACKENDS.
        x: the tensor to pack (its device and dtype decide).

    Returns:
        "triton" or "torch".
    """
    return "triton" if resolve_backend(backend, x) == "triton" else "torch"


# -- public ------------------------------------------------------------------------------------


def pack_bits(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Spikes x (any float tensor whose elements are exactly 0 or 1) -> uint8 [ceil(x.numel() / 8)].

    Each element becomes one bit: ``x != 0``. Values other than 0 and 1 are not checked (that would
    cost a pass over x): they come back as 1. ``backend``: "triton" (CUDA, or the interpreter),
    "torch", or "auto" (Triton for CUDA tensors).

    Args:
        x: spikes, any shape.
        backend: "auto", "triton", "torch" or "inductor" (which packs with torch).

    Returns:
        uint8 [ceil(x.numel() / 8)].
    """
    check_tensor("x", x)
    backend = pack_backend(backend, x)
    return PACK[backend](x.contiguous())


def unpack_bits(packed: torch.Tensor, shape: Union[Sequence[int], torch.Size], dtype: torch.dtype = torch.float32,
                backend: str = "auto") -> torch.Tensor:
    """The inverse of ``pack_bits``: a tensor of ``shape`` and ``dtype`` holding 0 and 1.

    Args:
        packed: uint8 [ceil(prod(shape) / 8)] from ``pack_bits``.
        shape: the unpacked tensor's shape.
        dtype: a floating-point dtype.
        backend: as ``pack_bits``'s.

    Returns:
        0 and 1 of ``shape`` and ``dtype`` on packed's device.

    Raises:
        TypeError: packed is not a 1-d uint8 tensor, or dtype is not a floating-point dtype.
        ValueError: packed does not hold prod(shape) bits.
    """
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
