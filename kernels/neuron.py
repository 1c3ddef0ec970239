import triton
import triton.language as tl

from .surrogate import surrogate_grad


@triton.jit
def lif_step(v, x, decay, input_scale, v_th, v_reset, HARD_RESET: tl.constexpr):
    """One LIF timestep (docs/math.md) in fp32: -> (d = u - v_th, v after the reset)."""
    u = decay * v + input_scale * x
    d = u - v_th
    return d, after_reset(u, d, v_th, v_reset, HARD_RESET)


@triton.jit
def after_reset(u, d, v_th, v_reset, HARD_RESET: tl.constexpr):
    """v[t] from u[t] and d = u[t] - v_th (the spike is d >= 0): the reset of docs/math.md."""
    if HARD_RESET:
        return tl.where(d >= 0.0, v_reset, u)
    return tl.where(d >= 0.0, u - v_th, u)


@triton.jit
def lif_fwd_steps(x_ptrs, spikes_ptrs, d_ptrs, v, mask, N, T, decay, input_scale, v_th, v_reset,
                  HARD_RESET: tl.constexpr):
    """The LIF forward of one block of neurons (docs/math.md), t = 0 ... T-1.

    The pointers address step 0 of [T, N] tensors; v is v[-1]. Writes the spikes and d = u - v_th
    (in d's dtype) and returns v[T-1].
    """
    for _ in range(T):
        x = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        d, v = lif_step(v, x, decay, input_scale, v_th, v_reset, HARD_RESET)
        tl.store(spikes_ptrs, (d >= 0.0).to(spikes_ptrs.dtype.element_ty), mask=mask)
        # Saving u - v_th (not u) keeps the sign exact in bf16, so backward recomputes every spike.
        tl.store(d_ptrs, d.to(d_ptrs.dtype.element_ty), mask=mask)
        # Pointer increments stay 64-bit, so T * N may exceed 2^31.
        x_ptrs += N
        spikes_ptrs += N
        d_ptrs += N
    return v


@triton.jit
def local_grad(d, grad_s, carry, f, v_th, v_reset, HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr,
               HAS_CARRY: tl.constexpr):
    """delta = dL/du of one LIF step (docs/math.md) from d = u - v_th, dL/ds, dL/dv and f = f(u; beta).

    Written as delta = f * q + a with q and a free of f: the operands broadcast, and the candidate
    statistics pass d, grad_s, carry as [1, N] rows against f of shape [K, N], so q and a are
    computed once per element and each (element, candidate) pair costs one FMA. Without a carry
    (HAS_CARRY false) only the spike path contributes.
    """
    if not HAS_CARRY:
        return grad_s * f
    if HARD_RESET:
        a = carry * tl.where(d >= 0.0, 0.0, 1.0)  # through 1 - s
        if DETACH_RESET:
            q = grad_s
        else:
            q = grad_s + carry * ((v_reset - v_th) - d)  # through the reset's (v_reset - u) f
    else:
        a = carry
        if DETACH_RESET:
            q = grad_s
        else:
            q = grad_s - v_th * carry  # through the soft reset's -v_th f
    return f * q + a


@triton.jit
def lif_bwd_steps(grad_spikes_ptrs, d_ptrs, grad_x_ptrs, beta_ptr, carry, mask, N, T, decay, input_scale, v_th,
                  v_reset, h, SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr):
    """The LIF backward of one block of neurons (docs/math.md), t = T-1 ... 0.

    The pointers address step T-1 of [T, N] tensors (d = u - v_th from the forward); carry is
    dL/dv[T-1]. Writes grad_x = input_scale * delta and returns the carry dL/dv[-1].
    """
    for i in range(T):
        beta = tl.load(beta_ptr + (T - 1 - i))
        d = tl.load(d_ptrs, mask=mask, other=0.0).to(tl.float32)
        grad_s = tl.load(grad_spikes_ptrs, mask=mask, other=0.0).to(tl.float32)
        f = surrogate_grad(d, beta, h, SURROGATE)
        delta = local_grad(d, grad_s, carry, f, v_th, v_reset, HARD_RESET, DETACH_RESET, True)
        tl.store(grad_x_ptrs, (input_scale * delta).to(grad_x_ptrs.dtype.element_ty), mask=mask)
        carry = decay * delta
        grad_spikes_ptrs -= N
        d_ptrs -= N
        grad_x_ptrs -= N
    return carry
