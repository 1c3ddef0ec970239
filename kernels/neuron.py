import triton
import triton.language as tl


@triton.jit
def lif_step(v, x, decay, input_scale, v_th, v_reset, HARD_RESET: tl.constexpr):
    """One LIF timestep (DESIGN.md 3.1) in fp32: -> (d = u - v_th, v after the reset)."""
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
    """delta = dL/du of one LIF step (DESIGN.md 3.3) from d = u - v_th, dL/ds, dL/dv and f = f(u; beta).

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
