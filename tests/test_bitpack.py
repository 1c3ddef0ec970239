"""Bit-packing of spikes (pack_bits / unpack_bits) against NumPy's packbits, both backends.

The kernels run under the interpreter without CUDA (backend="triton" on CPU tensors).
"""

import math

import pytest
import torch

from a2sg_triton.ops.bitpack import pack_bits, pack_bits_ref, unpack_bits, unpack_bits_ref
from helpers import KERNEL_DEVICE

DTYPES = {"torch": [torch.float32, torch.float16, torch.float64], "triton": [torch.float32, torch.float16]}


def spikes_like(shape, seed=0, dtype=torch.float32, device=KERNEL_DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < 0.3).to(dtype).to(device)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_pack_round_trip_matches_reference(backend, nan_outputs):
    # 0, a partial byte, exactly one byte, and 3 blocks of 4096 spikes with a ragged tail
    for dtype in DTYPES[backend]:
        for numel in (0, 5, 8, 3 * 4096 + 77):
            x = spikes_like((numel,), seed=numel, dtype=dtype)
            packed = pack_bits(x, backend=backend)
            assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel / 8)
            assert torch.equal(packed, pack_bits_ref(x))
            back = unpack_bits(packed, x.shape, dtype, backend=backend)
            assert back.dtype == dtype and torch.equal(back, x)
            assert torch.equal(unpack_bits_ref(packed, x.shape, dtype), x)


def test_pack_non_contiguous_and_shapes():
    x = spikes_like((6, 7, 5)).transpose(0, 2)
    assert torch.equal(unpack_bits(pack_bits(x), x.shape), x)


def test_pack_bad_arguments():
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        pack_bits(torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pack_bits([1.0, 0.0])
    packed = pack_bits(torch.ones(9))
    with pytest.raises(TypeError, match="packed must be a 1-d uint8 tensor"):
        unpack_bits(packed.float(), (9,))
    with pytest.raises(ValueError, match=r"packed holds 2 bytes, shape \[20\] needs 3"):
        unpack_bits(packed, (20,))
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        unpack_bits(packed, (9,), torch.int32)
    with pytest.raises(ValueError, match="backend must be one of"):
        pack_bits(torch.ones(9), backend="cuda")
