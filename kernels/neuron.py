import triton
import triton.language as tl

from .surrogate import surrogate_grad


@triton.jit
def lif_step(v, x, decay, input_scale, v_th, v_reset, HARD_RESET: tl.constexpr):
    """One LIF timestep (docs/math.md) in fp32: -> (d = u - v_th, v after the reset)."""
    u = decay * v + input_scale * x
    d = u - v_th
    spike = d >= 0.0
    if HARD_RESET:
        v = tl.where(spike, v_reset, u)
    else:
        v = tl.where(spike, u - v_th, u)
    return d, v


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
