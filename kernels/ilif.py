import triton
import triton.language as tl

from .neuron import local_grad
from .surrogate import surrogate_grad


@triton.jit
def ilif_count(u, D, v_th):
    """q = round(clip(u / v_th, 0, D)) in fp32, rounding half to even as torch.round does (docs/math.md).

    u / v_th is the correctly rounded division (plain `/` may lower to an approximate one). The
    rounding avoids floor(y + 0.5), whose sum itself rounds (0.49999997 + 0.5 -> 1.0): frac = y - r
    is exact, and a tie goes up only from an odd r.
    """
    y = tl.minimum(tl.maximum(tl.div_rn(u, v_th), 0.0), D * 1.0)
    r = tl.floor(y)
    frac = y - r
    odd = (r - 2.0 * tl.floor(0.5 * r)) == 1.0
    return tl.where((frac > 0.5) | ((frac == 0.5) & odd), r + 1.0, r)


@triton.jit
def ilif_surrogate_grad(u, beta_ptr, D, v_th, h, SURROGATE: tl.constexpr):
    """F(u) = sum_i f(u - theta_i; beta_i), theta_i = (i - 1/2) v_th for i = 1 ... D (fp32); beta_ptr
    addresses one timestep's D widths."""
    F = tl.zeros_like(u)
    for i in range(D):
        F += surrogate_grad(u - (i + 0.5) * v_th, tl.load(beta_ptr + i), h, SURROGATE)
    return F


@triton.jit
def ilif_fwd_kernel(
    x_ptr,  # [T, N] input current, any float dtype
    v0_ptr,  # [N] initial membrane potential (read only when HAS_V0)
    q_ptr,  # [T, N] out, the counts 0 ... D in x's dtype
    u_ptr,  # [T, N] out, the membrane before the reset, saved for backward (fp32 or bf16)
    v_last_ptr,  # [N] out, fp32 v[T-1] (written only when STORE_V_LAST)
    N,
    T,
    D,
    decay,
    input_scale,
    v_th,
    HAS_V0: tl.constexpr,
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
    x_ptrs = x_ptr + offs
    q_ptrs = q_ptr + offs
    u_ptrs = u_ptr + offs
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        u = decay * v + input_scale * x
        q = ilif_count(u, D, v_th)
        v = u - v_th * q  # the soft reset
        tl.store(q_ptrs, q.to(q_ptrs.dtype.element_ty), mask=mask)
        tl.store(u_ptrs, u.to(u_ptrs.dtype.element_ty), mask=mask)
        # Pointer increments stay 64-bit, so T * N may exceed 2^31.
        x_ptrs += N
        q_ptrs += N
        u_ptrs += N
    if STORE_V_LAST:
        tl.store(v_last_ptr + offs, v, mask=mask)


@triton.jit
def ilif_bwd_kernel(
    grad_q_ptr,  # [T, N] dL/dq
    u_ptr,  # [T, N] the membrane before the reset, from the forward
    beta_ptr,  # [T, D] fp32 surrogate width per timestep and level
    grad_v_last_ptr,  # [N] dL/dv[T-1] (read only when HAS_GRAD_V_LAST)
    grad_x_ptr,  # [T, N] out, x's dtype
    grad_v0_ptr,  # [N] out, fp32 (written only when STORE_GRAD_V0)
    N,
    T,
    D,
    last_step_offset,  # (T - 1) * N, from the host so that it is 64-bit when large
    decay,
    input_scale,
    v_th,
    h,
    SURROGATE: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_GRAD_V_LAST: tl.constexpr,
    STORE_GRAD_V0: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """t = T-1 ... 0: delta[t] = g F + c (1 - v_th F) (detached: g F + c), LIF's soft-reset local
    gradient with f replaced by the sum over the levels F; grad_x = input_scale delta, c[t-1] = decay delta."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    # carry = dL/dv[t], flowing from t + 1 back to t
    if HAS_GRAD_V_LAST:
        carry = tl.load(grad_v_last_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK], dtype=tl.float32)
    grad_q_ptrs = grad_q_ptr + last_step_offset + offs
    u_ptrs = u_ptr + last_step_offset + offs
    grad_x_ptrs = grad_x_ptr + last_step_offset + offs
    beta_row_ptr = beta_ptr + (T - 1) * D
    for _ in range(T):
        u = tl.load(u_ptrs, mask=mask, other=0.0).to(tl.float32)
        grad_q = tl.load(grad_q_ptrs, mask=mask, other=0.0).to(tl.float32)
        F = ilif_surrogate_grad(u, beta_row_ptr, D, v_th, h, SURROGATE)
        delta = local_grad(u, grad_q, carry, F, v_th, 0.0, False, DETACH_RESET, True)
        tl.store(grad_x_ptrs, (input_scale * delta).to(grad_x_ptrs.dtype.element_ty), mask=mask)
        carry = decay * delta
        grad_q_ptrs -= N
        u_ptrs -= N
        grad_x_ptrs -= N
        beta_row_ptr -= D
    if STORE_GRAD_V0:
        tl.store(grad_v0_ptr + offs, carry, mask=mask)
