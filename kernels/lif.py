import triton
import triton.language as tl

from .neuron import lif_bwd_steps, lif_fwd_steps


@triton.jit
def lif_fwd_kernel(
    x_ptr,  # [T, N] input current, any float dtype
    v0_ptr,  # [N] initial membrane potential (read only when HAS_V0)
    spikes_ptr,  # [T, N] out, x's dtype
    d_ptr,  # [T, N] out, u - v_th saved for backward (fp32 or bf16)
    v_last_ptr,  # [N] out, fp32 v[T-1] (written only when STORE_V_LAST)
    N,
    T,
    decay,
    input_scale,
    v_th,
    v_reset,
    HAS_V0: tl.constexpr,
    HARD_RESET: tl.constexpr,
    STORE_V_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32)
    v = lif_fwd_steps(x_ptr + offs, spikes_ptr + offs, d_ptr + offs, v, mask, N, T, decay, input_scale, v_th, v_reset,
                      HARD_RESET)
    if STORE_V_LAST:
        tl.store(v_last_ptr + offs, v, mask=mask)


@triton.jit
def lif_bwd_kernel(
    grad_spikes_ptr,  # [T, N] dL/ds
    d_ptr,  # [T, N] u - v_th from the forward
    beta_ptr,  # [T] fp32 surrogate width per timestep
    grad_v_last_ptr,  # [N] dL/dv[T-1] (read only when HAS_GRAD_V_LAST)
    grad_x_ptr,  # [T, N] out, x's dtype
    grad_v0_ptr,  # [N] out, fp32 (written only when STORE_GRAD_V0)
    N,
    T,
    last_step_offset,  # (T - 1) * N, from the host so that it is 64-bit when large
    decay,
    input_scale,
    v_th,
    v_reset,
    h,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_GRAD_V_LAST: tl.constexpr,
    STORE_GRAD_V0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    # carry = dL/dv[t], flowing from t + 1 back to t
    if HAS_GRAD_V_LAST:
        carry = tl.load(grad_v_last_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    carry = lif_bwd_steps(grad_spikes_ptr + last_step_offset + offs, d_ptr + last_step_offset + offs,
                          grad_x_ptr + last_step_offset + offs, beta_ptr, carry, mask, N, T, decay, input_scale, v_th,
                          v_reset, h, SURROGATE, HARD_RESET, DETACH_RESET)
    if STORE_GRAD_V0:
        tl.store(grad_v0_ptr + offs, carry, mask=mask)
