import triton
import triton.language as tl


@triton.jit
def pack_bits_kernel(
    x_ptr,  # [M] spikes, exactly 0 or 1, any float dtype
    packed_ptr,  # [ceil(M / 8)] out, uint8: element 8*i + j is bit j of byte i
    M,
    BLOCK: tl.constexpr,  # bytes per program
):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK)
    bit = tl.arange(0, 8)
    offs = byte[:, None] * 8 + bit[None, :]
    x = tl.load(x_ptr + offs, mask=offs < M, other=0.0)
    bits = tl.where(x != 0.0, 1, 0).to(tl.int32) << bit[None, :]
    tl.store(packed_ptr + byte, tl.sum(bits, axis=1).to(tl.uint8), mask=byte * 8 < M)


@triton.jit
def unpack_bits_kernel(
    packed_ptr,  # [ceil(M / 8)] uint8 from pack_bits_kernel
    x_ptr,  # [M] out, 0 or 1 in x's dtype
    M,
    BLOCK: tl.constexpr,  # bytes per program
):
    pid = tl.program_id(0).to(tl.int64)
    byte = pid * BLOCK + tl.arange(0, BLOCK)
    bit = tl.arange(0, 8)
    packed = tl.load(packed_ptr + byte, mask=byte * 8 < M, other=0).to(tl.int32)
    offs = byte[:, None] * 8 + bit[None, :]
    x = (packed[:, None] >> bit[None, :]) & 1
    tl.store(x_ptr + offs, x.to(x_ptr.dtype.element_ty), mask=offs < M)
