import triton
import triton.language as tl

from .neuron import after_reset, lif_fwd_steps, local_grad
from .surrogate import surrogate_grad


@triton.jit
def plif_constants(w_ptr, DECAY_INPUT: tl.constexpr):
    """k = sigmoid(w) read on the device, fp32 -> (decay = 1 - k, input_scale = k or 1)."""
    k = 1.0 / (1.0 + tl.exp(-tl.load(w_ptr).to(tl.float32)))
    if DECAY_INPUT:
        input_scale = k
    else:
        input_scale = 1.0
    return 1.0 - k, input_scale


@triton.jit
def plif_bwd_step(d, grad_spikes_ptrs, x_ptrs, grad_x_ptrs, beta, carry, v_prev, grad_k, mask, decay, input_scale, v_th,
                  v_reset, h, SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr,
                  DECAY_INPUT: tl.constexpr):
    """One step t of the PLIF backward: delta[t] from d[t], dL/ds[t] and carry = dL/dv[t]; writes
    grad_x[t] = input_scale delta[t], adds delta[t] (x[t] - v[t-1]) (or -delta[t] v[t-1]) to the
    lanes' dL/dk and returns (dL/dv[t-1], dL/dk)."""
    grad_s = tl.load(grad_spikes_ptrs, mask=mask, other=0.0).to(tl.float32)
    f = surrogate_grad(d, beta, h, SURROGATE)
    delta = local_grad(d, grad_s, carry, f, v_th, v_reset, HARD_RESET, DETACH_RESET, True)
    tl.store(grad_x_ptrs, (input_scale * delta).to(grad_x_ptrs.dtype.element_ty), mask=mask)
    if DECAY_INPUT:
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        grad_k += delta * (x - v_prev)
    else:
        grad_k -= delta * v_prev
    return decay * delta, grad_k


@triton.jit
def plif_fwd_kernel(
    x_ptr,  # [T, N] input current, any float dtype
    w_ptr,  # [] the learnable w, k = sigmoid(w)
    v0_ptr,  # [N] initial membrane potential (read only when HAS_V0)
    spikes_ptr,  # [T, N] out, x's dtype
    d_ptr,  # [T, N] out, u - v_th saved for backward (fp32 or bf16)
    v_last_ptr,  # [N] out, fp32 v[T-1] (written only when STORE_V_LAST)
    N,
    T,
    v_th,
    v_reset,
    DECAY_INPUT: tl.constexpr,
    HAS_V0: tl.constexpr,
    HARD_RESET: tl.constexpr,
    STORE_V_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    decay, input_scale = plif_constants(w_ptr, DECAY_INPUT)
    if HAS_V0:
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BLOCK], dtype=tl.float32)
    v = lif_fwd_steps(x_ptr + offs, spikes_ptr + offs, d_ptr + offs, v, mask, N, T, decay, input_scale, v_th, v_reset,
                      HARD_RESET)
    if STORE_V_LAST:
        tl.store(v_last_ptr + offs, v, mask=mask)


@triton.jit
def plif_bwd_kernel(
    grad_spikes_ptr,  # [T, N] dL/ds
    d_ptr,  # [T, N] u - v_th from the forward
    x_ptr,  # [T, N] the forward's input (read only when DECAY_INPUT)
    w_ptr,  # [] the learnable w, k = sigmoid(w)
    v0_ptr,  # [N] the forward's v0 (read only when HAS_V0)
    beta_ptr,  # [T] fp32 surrogate width per timestep
    grad_v_last_ptr,  # [N] dL/dv[T-1] (read only when HAS_GRAD_V_LAST)
    grad_x_ptr,  # [T, N] out, x's dtype
    grad_v0_ptr,  # [N] out, fp32 (written only when STORE_GRAD_V0)
    grad_k_partial_ptr,  # [programs] out, fp32: this program's part of dL/dk
    N,
    T,
    last_step_offset,  # (T - 1) * N, from the host so that it is 64-bit when large
    v_th,
    v_reset,
    h,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    HAS_V0: tl.constexpr,
    HAS_GRAD_V_LAST: tl.constexpr,
    STORE_GRAD_V0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The LIF backward with decay = 1 - k, input_scale = k (or 1), plus this block's share of
    dL/dk = sum_t delta[t] (x[t] - v[t-1]) (or -sum_t delta[t] v[t-1]), v[t-1] recomputed from
    d[t-1] (v[-1] = v0)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    decay, input_scale = plif_constants(w_ptr, DECAY_INPUT)
    # carry = dL/dv[t], flowing from t + 1 back to t
    if HAS_GRAD_V_LAST:
        carry = tl.load(grad_v_last_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_V0:
        v0 = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        v0 = tl.zeros([BLOCK], dtype=tl.float32)
    grad_k = tl.zeros([BLOCK], dtype=tl.float32)
    grad_spikes_ptrs = grad_spikes_ptr + last_step_offset + offs
    d_ptrs = d_ptr + last_step_offset + offs
    x_ptrs = x_ptr + last_step_offset + offs
    grad_x_ptrs = grad_x_ptr + last_step_offset + offs
    d = tl.load(d_ptrs, mask=mask, other=0.0).to(tl.float32)
    for i in range(T - 1):  # t = T-1 ... 1; v[t-1] is the reset of step t-1, recomputed from its d
        d_prev = tl.load(d_ptrs - N, mask=mask, other=0.0).to(tl.float32)
        v_prev = after_reset(d_prev + v_th, d_prev, v_th, v_reset, HARD_RESET)
        carry, grad_k = plif_bwd_step(d, grad_spikes_ptrs, x_ptrs, grad_x_ptrs, tl.load(beta_ptr + (T - 1 - i)), carry,
                                      v_prev, grad_k, mask, decay, input_scale, v_th, v_reset, h, SURROGATE,
                                      HARD_RESET, DETACH_RESET, DECAY_INPUT)
        d = d_prev  # read once: step t-1's d is the next iteration's
        grad_spikes_ptrs -= N
        d_ptrs -= N
        x_ptrs -= N
        grad_x_ptrs -= N
    carry, grad_k = plif_bwd_step(d, grad_spikes_ptrs, x_ptrs, grad_x_ptrs, tl.load(beta_ptr), carry, v0, grad_k, mask,
                                  decay, input_scale, v_th, v_reset, h, SURROGATE, HARD_RESET, DETACH_RESET,
                                  DECAY_INPUT)  # t = 0, v[-1] = v0
    tl.store(grad_k_partial_ptr + pid, tl.sum(grad_k, axis=0))
    if STORE_GRAD_V0:
        tl.store(grad_v0_ptr + offs, carry, mask=mask)
