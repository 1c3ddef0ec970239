"""Multistep I-LIF neuron: integer multi-level spikes (counts 0 ... D), soft reset (docs/math.md, "I-LIF").

Side by side, as for LIF (``a2sg_triton.ops.lif``): the readable reference (``ilif_multistep_ref``),
the Triton launchers (``ilif_fwd`` / ``ilif_bwd`` around ``ilif_fwd_kernel`` / ``ilif_bwd_kernel``),
the eager backend (``ilif_fwd_torch`` / ``ilif_bwd_torch``, compiled by inductor as
``ilif_*_inductor``), the torch.library ops with their autograd (``a2sg_triton::ilif_fwd`` /
``a2sg_triton::ilif_bwd``), ``ILIFFunction``, the public ``ilif_multistep`` and, for analysis,
``ilif_membrane`` (u by the same forward).

The count is q = round(clip(u / v_th, 0, D)); its surrogate derivative F(u) sums one window per
level, at the level thresholds theta_i = (i - 1/2) v_th, each with its own width beta[t, i]. Backward
needs only u (the membrane before the reset) per step: F and the soft reset's derivative
1 - v_th F depend on u alone. beta is a [T, D] tensor, read by the kernels at run time (a new D or
beta never recompiles them).
"""

from typing import Optional

import torch

from .lif import _check_lif_args, dense_order, from_flat, launch_config, lif_local_grad, to_flat
from .surrogate import SURROGATES, surrogate_grad
from .backend import HAS_TRITON, compiled_variant, is_compiling, math_dtype, resolve_backend
from .checks import check_beta, check_real

if HAS_TRITON:
    import triton

    from ..kernels.ilif import ilif_bwd_kernel, ilif_fwd_kernel


def _check_ilif_args(x, beta, surrogate, D, decay, input_scale, v_th, detach_reset, h, v0, return_v, save_dtype):
    """Validates everything before any kernel runs; returns beta as a [T, D] tensor in the math dtype."""
    _check_lif_args(x, 1.0, surrogate, decay, input_scale, v_th, "soft", 0.0, detach_reset, h, v0, return_v,
                    save_dtype)
    check_ilif_constants(D, v_th)
    return check_beta(beta, x.shape[0], x.device, math_dtype(x.dtype), levels=D)


def check_ilif_constants(D, v_th):
    """D: an int >= 1 (the largest count); v_th: finite and > 0 (the count is u / v_th)."""
    if isinstance(D, bool) or not isinstance(D, int):
        raise TypeError(f"D (the largest count) must be an int, got {type(D).__name__}")
    if D < 1:
        raise ValueError(f"D (the largest count) must be >= 1, got {D}")
    if check_real("v_th", v_th) <= 0:
        raise ValueError(f"v_th must be > 0 (the count is u / v_th), got {v_th}")


def level_surrogate_grad(u, beta_t, surrogate, D, v_th, h):
    """F(u) = sum_i f(u - theta_i; beta_t[i]), theta_i = (i - 1/2) v_th, i = 1 ... D: the surrogate
    derivative of the count, ``beta_t`` the [D] widths of one timestep."""
    F = 0.0
    for i in range(D):
        F = F + surrogate_grad(u, beta_t[i], surrogate, v_th=(i + 0.5) * v_th, h=h)
    return F


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through the count, whose derivative is F(u).
# ---------------------------------------------------------------------------------------------


class MultiLevelSurrogate(torch.autograd.Function):
    """q = round(clip(u / v_th, 0, D)) forward, dq/du := F(u) backward."""

    @staticmethod
    def forward(ctx, u, beta_t, surrogate, D, v_th, h):
        ctx.save_for_backward(u, beta_t)
        ctx.surrogate, ctx.D, ctx.v_th, ctx.h = surrogate, D, v_th, h
        return torch.round(torch.clamp(u / v_th, 0, D))

    @staticmethod
    def backward(ctx, grad_q):
        u, beta_t = ctx.saved_tensors
        F = level_surrogate_grad(u, beta_t, ctx.surrogate, ctx.D, ctx.v_th, ctx.h)
        return grad_q * F, None, None, None, None, None


def ilif_multistep_ref(x, beta, surrogate="box", *, D=4, decay=0.25, input_scale=1.0, v_th=1.0, detach_reset=False,
                       h=0.5, v0=None, return_v=False):
    """Readable reference of ``ilif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype, v_T included (use float64 to compare
    against the kernels)."""
    beta = _check_ilif_args(x, beta, surrogate, D, decay, input_scale, v_th, detach_reset, h, v0, return_v,
                            None).to(x.dtype)
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    counts = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        q = MultiLevelSurrogate.apply(u, beta[t], surrogate, D, v_th, h)
        v = u - v_th * (q.detach() if detach_reset else q)
        counts.append(q)
    counts = torch.stack(counts)
    return (counts, v) if return_v else counts


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def ilif_fwd(x, v0, D, decay, input_scale, v_th, return_v, save_dtype):
    """x [T, N] contiguous -> q [T, N] (x.dtype), u [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    q = torch.empty_like(x)
    u = torch.empty((T, N), dtype=save_dtype, device=x.device)
    v_last = torch.empty((N if return_v else 0,), dtype=torch.float32, device=x.device)
    if N > 0:
        block, warps = launch_config(N, x.device)
        ilif_fwd_kernel[(triton.cdiv(N, block),)](
            x, v0 if v0 is not None else x, q, u, v_last if return_v else u,
            N, T, D, decay, input_scale, v_th,
            HAS_V0=v0 is not None, STORE_V_LAST=return_v, BLOCK=block, num_warps=warps,
        )
    return q, u, v_last


def ilif_bwd(grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h,
             need_grad_v0):
    """beta [T, D] fp32 -> grad_x [T, N] (grad_q.dtype), grad_v0 [N] or [0] (fp32)."""
    T, N = grad_q.shape
    grad_x = torch.empty_like(grad_q)
    grad_v0 = torch.empty((N if need_grad_v0 else 0,), dtype=torch.float32, device=u.device)
    if N > 0:
        block, warps = launch_config(N, u.device)
        ilif_bwd_kernel[(triton.cdiv(N, block),)](
            grad_q, u, beta, grad_v_last if grad_v_last is not None else u, grad_x,
            grad_v0 if need_grad_v0 else u,
            N, T, D, (T - 1) * N, decay, input_scale, v_th, h,
            SURROGATE=surrogate_id, DETACH_RESET=detach_reset, HAS_GRAD_V_LAST=grad_v_last is not None,
            STORE_GRAD_V0=need_grad_v0, BLOCK=block, num_warps=warps,
        )
    return grad_x, grad_v0


# ---------------------------------------------------------------------------------------------
# Eager backend: the same analytic forward/backward as the kernels, in PyTorch, on any device.
# ---------------------------------------------------------------------------------------------


def ilif_fwd_torch(x, v0, D, decay, input_scale, v_th, return_v, save_dtype):
    """The forward in plain torch ops, written so that inductor fuses it (``ilif_fwd_inductor``)."""
    dtype = math_dtype(x.dtype)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    us, counts = [], []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t].to(dtype)
        q = torch.round(torch.clamp(u / v_th, 0, D))
        v = u - v_th * q
        us.append(u)
        counts.append(q)
    return torch.stack(counts).to(x.dtype), torch.stack(us).to(save_dtype), (v if return_v else v.new_empty(0))


def ilif_bwd_torch(grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h,
                   need_grad_v0):
    """The backward in plain torch ops, written so that inductor fuses it (``ilif_bwd_inductor``):
    LIF's soft-reset local gradient with f replaced by F."""
    dtype = math_dtype(grad_q.dtype)
    carry = torch.zeros_like(grad_q[0], dtype=dtype) if grad_v_last is None else grad_v_last.to(dtype)
    deltas = []
    for t in reversed(range(grad_q.shape[0])):
        u_t = u[t].to(dtype)
        F = level_surrogate_grad(u_t, beta[t].to(dtype), SURROGATES[surrogate_id], D, v_th, h)
        delta = lif_local_grad(u_t, grad_q[t].to(dtype), carry, F, v_th, False, 0.0, detach_reset)
        deltas.append(delta)
        carry = decay * delta
    grad_x = (input_scale * torch.stack(deltas[::-1])).to(grad_q.dtype)
    return grad_x, (carry if need_grad_v0 else carry.new_empty(0))


# ---------------------------------------------------------------------------------------------
# Inductor backend: the eager functions above compiled into fused C++ loops (CPU) once per variant.
# ---------------------------------------------------------------------------------------------


def ilif_fwd_inductor(x, v0, D, decay, input_scale, v_th, return_v, save_dtype):
    fwd = compiled_variant(ilif_fwd_torch, x.shape[0], x.dtype, v0 is None, D, decay, input_scale, v_th, return_v,
                           save_dtype, numel=x.numel())
    return fwd(x, v0, D, decay, input_scale, v_th, return_v, save_dtype)


def ilif_bwd_inductor(grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h,
                      need_grad_v0):
    bwd = compiled_variant(ilif_bwd_torch, grad_q.shape[0], grad_q.dtype, u.dtype, grad_v_last is None, surrogate_id,
                           D, decay, input_scale, v_th, detach_reset, h, need_grad_v0, numel=grad_q.numel())
    return bwd(grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h, need_grad_v0)


ILIF_FWD = {"triton": ilif_fwd, "torch": ilif_fwd_torch, "inductor": ilif_fwd_inductor}
ILIF_BWD = {"triton": ilif_bwd, "torch": ilif_bwd_torch, "inductor": ilif_bwd_inductor}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile) and their autograd.
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("a2sg_triton::ilif_fwd", mutates_args=())
def ilif_fwd_op(x: torch.Tensor, beta: torch.Tensor, v0: Optional[torch.Tensor], surrogate_id: int, D: int,
                decay: float, input_scale: float, v_th: float, detach_reset: bool, h: float, return_v: bool,
                save_dtype: torch.dtype, backend: str, search_key: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> q [T, N], u [T, N] (the membrane before the reset, saved for backward), v_last [N] or [0].

    beta [T, D], surrogate_id, detach_reset and h are unused here; they are inputs so that backward
    gets them. search_key >= 0 names an armed A²SG search site: backward then searches beta first.
    """
    return ILIF_FWD[backend](x, v0, D, decay, input_scale, v_th, return_v, save_dtype)


@ilif_fwd_op.register_fake
def _(x, beta, v0, surrogate_id, D, decay, input_scale, v_th, detach_reset, h, return_v, save_dtype, backend,
      search_key):
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::ilif_bwd", mutates_args=())
def ilif_bwd_op(grad_q: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, grad_v_last: Optional[torch.Tensor],
                surrogate_id: int, D: int, decay: float, input_scale: float, v_th: float, detach_reset: bool, h: float,
                need_grad_v0: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_q.dtype), grad_v0 [N] or [0] in the math dtype."""
    return ILIF_BWD[backend](grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h,
                             need_grad_v0)


@ilif_bwd_op.register_fake
def ilif_bwd_fake(grad_q, u, beta, grad_v_last, surrogate_id, D, decay, input_scale, v_th, detach_reset, h,
                  need_grad_v0, backend):
    T, N = grad_q.shape
    grad_v0 = grad_q.new_empty((N if need_grad_v0 else 0,), dtype=math_dtype(grad_q.dtype))
    return torch.empty_like(grad_q), grad_v0


def _ilif_setup_context(ctx, inputs, output):
    (x, beta, v0, surrogate_id, D, decay, input_scale, v_th, detach_reset, h, return_v, save_dtype, backend,
     search_key) = inputs
    ctx.save_for_backward(output[1], beta)
    ctx.mark_non_differentiable(output[1])
    ctx.params = (surrogate_id, D, decay, input_scale, v_th, detach_reset, h)
    ctx.return_v, ctx.backend, ctx.search_key = return_v, backend, search_key
    ctx.eager = False  # ILIFFunction sets it
    ctx.v0_dtype = None if v0 is None else v0.dtype
    ctx.x_dtype = x.dtype


def _ilif_backward(ctx, grad_q, grad_u, grad_v_last):
    """Shared by the op's autograd (what torch.compile traces) and ``ILIFFunction`` (eager)."""
    u, beta = ctx.saved_tensors
    if grad_q is None:
        grad_q = torch.zeros(u.shape, dtype=ctx.x_dtype, device=u.device)
    need_grad_v0 = ctx.v0_dtype is not None and ctx.needs_input_grad[2]
    args = (grad_q.contiguous(), u, beta,
            grad_v_last.contiguous() if ctx.return_v and grad_v_last is not None else None,
            *ctx.params, need_grad_v0, ctx.backend)
    grad_x, grad_v0 = ilif_bwd_dispatch(args, ctx.search_key, ctx.eager)
    grad_v0 = grad_v0.to(ctx.v0_dtype) if need_grad_v0 else None
    return grad_x, None, grad_v0, *([None] * 11)


def ilif_bwd_dispatch(args, search_key, eager):
    """The I-LIF backward on ``ilif_bwd_op``'s arguments: the armed A²SG search (``search_key`` >= 0),
    else the backend called directly (``eager``) or through the op (what torch.compile traces)."""
    if search_key >= 0:  # registered by a2sg_triton.search.controller, looked up late to avoid an import cycle
        return torch.ops.a2sg_triton.ilif_bwd_search(*args, search_key)
    if eager:
        return ILIF_BWD[args[-1]](*args[:-1])
    return ilif_bwd_op(*args)


ilif_fwd_op.register_autograd(_ilif_backward, setup_context=_ilif_setup_context)


class ILIFFunction(torch.autograd.Function):
    """The eager path of ``ilif_multistep`` (as ``LIFFunction`` is ``lif_multistep``'s)."""

    @staticmethod
    def forward(ctx, *inputs):
        (x, beta, v0, surrogate_id, D, decay, input_scale, v_th, detach_reset, h, return_v, save_dtype, backend,
         search_key) = inputs
        output = ILIF_FWD[backend](x, v0, D, decay, input_scale, v_th, return_v, save_dtype)
        _ilif_setup_context(ctx, inputs, output)
        ctx.eager = True
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _ilif_backward(ctx, *grads)


def ilif_multistep(x, beta, surrogate="box", *, D=4, decay=0.25, input_scale=1.0, v_th=1.0, detach_reset=False,
                   h=0.5, v0=None, return_v=False, backend="auto", save_dtype=None, _search_key=-1):
    """Multistep I-LIF over x [T, *]: u[t] = decay v[t-1] + input_scale x[t], the count
    q[t] = round(clip(u[t] / v_th, 0, D)) (half to even), the soft reset v[t] = u[t] - v_th q[t].
    Returns the counts (x.dtype), or (counts, v_T) with ``return_v`` (v_T in fp32, float64 for
    float64 x, as ``lif_multistep``'s); gradients reach x and v0.

    The defaults are SpikingJelly's ``ILIFNode()`` (tau = 4/3: decay = 1 - 1/tau = 0.25, input_scale
    = 1, D = 4). beta: the surrogate width of every level's window, a float, a tensor [D] (per level)
    or [T, D] (per timestep and level); box with beta = v_th / 2 is SpikingJelly's rectangular
    straight-through estimator. It is never read on the host and never learnable, as for
    ``lif_multistep``. save_dtype: dtype of the one tensor saved for backward, u (None = fp32;
    torch.bfloat16 halves it). ``_search_key`` is the A²SG controller's.
    """
    beta = _check_ilif_args(x, beta, surrogate, D, decay, input_scale, v_th, detach_reset, h, v0, return_v,
                            save_dtype)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    x_flat, v0_flat = to_flat(x, order), None if v0 is None else to_flat(v0[None], order)[0]
    run = ilif_fwd_op if is_compiling() else ILIFFunction.apply
    counts, _, v_last = run(
        x_flat, beta, v0_flat, SURROGATES.index(surrogate), D, float(decay), float(input_scale), float(v_th),
        detach_reset, float(h), return_v, save_dtype or math_dtype(x.dtype), backend, _search_key,
    )
    counts = from_flat(counts, x.shape, order)
    if return_v:
        return counts, from_flat(v_last[None], (1, *x.shape[1:]), order)[0]
    return counts


def ilif_membrane(x, *, D=4, decay=0.25, input_scale=1.0, v_th=1.0, v0=None, backend="auto"):
    """u [T, *], the membrane before the reset, for input currents x [T, *], computed by
    ``ilif_multistep``'s own forward (same backend and kernel, no autograd): its counts are exactly
    ``round(clip(u / v_th, 0, D))``. fp32 (float64 for float64 x). For analysis, as ``lif_membrane``
    (which returns u - v_th: I-LIF has D thresholds, so u itself)."""
    _check_ilif_args(x, 0.5, "box", D, decay, input_scale, v_th, False, 0.5, v0, False, None)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    with torch.no_grad():
        _, u, _ = ILIF_FWD[backend](to_flat(x, order), None if v0 is None else to_flat(v0[None], order)[0], D,
                                    float(decay), float(input_scale), float(v_th), False, math_dtype(x.dtype))
    return from_flat(u, x.shape, order)
