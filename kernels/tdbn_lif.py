import triton
import triton.language as tl

from .neuron import lif_bwd_steps, lif_step


@triton.jit
def tdbn_output(y, mean, scale, bias):
    """tdBN's output (y - mean) * scale + bias (scale = weight * invstd) in fp32, with one explicit
    fma, so that every kernel that calls this rounds exactly alike."""
    return tl.fma(y - mean, scale, bias)


@triton.jit
def tdbn_fwd_kernel(
    y_ptr,  # [M] conv output in memory order, any float dtype
    mean_ptr,  # [C] fp32 batch mean
    scale_ptr,  # [C] fp32 weight * invstd
    bias_ptr,  # [C] fp32
    z_ptr,  # [M] out, y's dtype and memory order
    M,
    C,
    channel_div,  # element m belongs to channel (m // channel_div) % C
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    c = (offs // channel_div) % C
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    bias = tl.load(bias_ptr + c, mask=mask, other=0.0)
    tl.store(z_ptr + offs, tdbn_output(y, mean, scale, bias).to(z_ptr.dtype.element_ty), mask=mask)


@triton.jit
def tdbn_lif_bwd_kernel(
    y_ptr,  # [T, N] conv output, in the LIF's neuron order
    mean_ptr,  # [C] fp32
    scale_ptr,  # [C] fp32
    bias_ptr,  # [C] fp32
    grad_spikes_ptr,  # [T, N] dL/ds (read only when BACKWARD)
    beta_ptr,  # [T] fp32 surrogate width per timestep (read only when BACKWARD)
    d_ptr,  # [T, N] out, u - v_th as the forward computed it (save dtype)
    grad_x_ptr,  # [T, N] out, dL/dz in grad_spikes' dtype (written only when BACKWARD)
    N,
    T,
    C,
    channel_div,  # neuron n belongs to channel (n // channel_div) % C
    last_step_offset,  # (T - 1) * N, from the host so that it is 64-bit when large
    decay,
    input_scale,
    v_th,
    v_reset,
    h,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Recomputes tdBN's output z in y's dtype (as tdbn_fwd_kernel stored it) and the LIF forward on
    it (as lif_fwd_kernel ran it): d = u - v_th bit for bit. With BACKWARD, the LIF backward follows
    in the same program, reading back the d it just wrote."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    c = (offs // channel_div) % C
    mean = tl.load(mean_ptr + c, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + c, mask=mask, other=0.0)
    bias = tl.load(bias_ptr + c, mask=mask, other=0.0)
    v = tl.zeros([BLOCK], dtype=tl.float32)
    y_ptrs = y_ptr + offs
    d_ptrs = d_ptr + offs
    for _ in range(T):
        y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
        z = tdbn_output(y, mean, scale, bias).to(y_ptr.dtype.element_ty).to(tl.float32)
        d, v = lif_step(v, z, decay, input_scale, v_th, v_reset, HARD_RESET)
        tl.store(d_ptrs, d.to(d_ptr.dtype.element_ty), mask=mask)
        y_ptrs += N
        d_ptrs += N
    if BACKWARD:
        tl.debug_barrier()  # the d written above, visible to every thread of the program
        carry = tl.zeros([BLOCK], dtype=tl.float32)
        lif_bwd_steps(grad_spikes_ptr + last_step_offset + offs, d_ptr + last_step_offset + offs,
                      grad_x_ptr + last_step_offset + offs, beta_ptr, carry, mask, N, T, decay, input_scale, v_th,
                      v_reset, h, SURROGATE, HARD_RESET, DETACH_RESET)
