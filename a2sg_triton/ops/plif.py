"""Multistep PLIF neuron: LIF with a learnable leak k = sigmoid(w) (docs/math.md, "PLIF").

Side by side, as for LIF (``a2sg_triton.ops.lif``): the readable reference (``plif_multistep_ref``),
the Triton launchers (``plif_fwd`` / ``plif_bwd`` around ``plif_fwd_kernel`` /
``plif_bwd_kernel``), the eager backend (``plif_fwd_torch`` / ``plif_bwd_torch``, compiled by
inductor as ``plif_*_inductor``), the torch.library ops with their autograd (``a2sg_triton::plif_fwd``
/ ``a2sg_triton::plif_bwd``), ``PLIFFunction`` and the public ``plif_multistep``.

The recurrence is LIF's with decay = 1 - k and input_scale = k (decay_input) or 1, so every step
formula is LIF's. w is read on the device (k never reaches the host). Backward saves d = u - v_th,
x (decay_input only), v0 and w; it recomputes v[t-1] from d[t-1] for dL/dk, which the Triton
kernel reduces in two fixed-order stages (per-program partial sums, then one sum).
"""

from typing import Optional

import torch

from .lif import (
    HeavisideSurrogate,
    _check_lif_args,
    after_reset,
    dense_order,
    from_flat,
    launch_config,
    lif_bwd_step,
    lif_step,
    to_flat,
)
from .surrogate import SURROGATES
from .backend import HAS_TRITON, compiled_variant, is_compiling, math_dtype, resolve_backend
from .checks import check_flag, check_tensor

if HAS_TRITON:
    import triton

    from ..kernels.plif import plif_bwd_kernel, plif_fwd_kernel


def _check_plif_args(x, w, beta, surrogate, decay_input, v_th, reset, v_reset, detach_reset, h, v0, return_v,
                     save_dtype):
    """Validates everything before any kernel runs; returns (beta [T] in the math dtype, hard_reset)."""
    beta, hard_reset = _check_lif_args(x, beta, surrogate, 0.5, 0.5, v_th, reset, v_reset, detach_reset, h, v0,
                                       return_v, save_dtype)
    check_tensor("w", w, device=x.device)
    if w.dim() != 0:
        raise ValueError(f"w must be a 0-d tensor (one leak per layer), got shape {list(w.shape)}")
    check_flag("decay_input", decay_input)
    return beta, hard_reset


def _leak(w, dtype, decay_input):
    """(decay = 1 - k, input_scale = k or 1) as 0-d tensors of ``dtype`` on w's device, k = sigmoid(w)."""
    k = torch.sigmoid(w.to(dtype))
    return 1 - k, k if decay_input else torch.ones_like(k)


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through k = sigmoid(w) and the Heaviside step.
# ---------------------------------------------------------------------------------------------


def plif_multistep_ref(x, w, beta, surrogate="box", *, decay_input=True, v_th=1.0, reset="soft", v_reset=0.0,
                       detach_reset=False, h=0.5, v0=None, return_v=False):
    """Readable reference of ``plif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype (use float64 to compare against the kernels);
    gradients reach w through autograd."""
    beta, hard_reset = _check_plif_args(x, w, beta, surrogate, decay_input, v_th, reset, v_reset, detach_reset, h,
                                        v0, return_v, None)
    beta = beta.to(x.dtype)
    k = torch.sigmoid(w.to(x.dtype))
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        u = (1 - k) * v + (k * x[t] if decay_input else x[t])
        s = HeavisideSurrogate.apply(u, beta[t], surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u + s_reset * v_reset if hard_reset else u - v_th * s_reset
        spikes.append(s)
    spikes = torch.stack(spikes)
    return (spikes, v) if return_v else spikes


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def plif_fwd(x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype):
    """x [T, N] contiguous, w [] -> spikes [T, N] (x.dtype), d [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    spikes = torch.empty_like(x)
    d = torch.empty((T, N), dtype=save_dtype, device=x.device)
    v_last = torch.empty((N if return_v else 0,), dtype=torch.float32, device=x.device)
    if N > 0:
        block, warps = launch_config(N, x.device)
        plif_fwd_kernel[(triton.cdiv(N, block),)](
            x, w, v0 if v0 is not None else x, spikes, d, v_last if return_v else d,
            N, T, v_th, v_reset,
            DECAY_INPUT=decay_input, HAS_V0=v0 is not None, HARD_RESET=hard_reset, STORE_V_LAST=return_v,
            BLOCK=block, num_warps=warps,
        )
    return spikes, d, v_last


def plif_bwd(grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset, v_reset,
             detach_reset, h, need_grad_v0):
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] (fp32), grad_k = dL/dk [] (fp32).

    dL/dk in two fixed-order stages: each program's sum over its neurons and steps, then one sum of
    the [programs] partials, so the result does not depend on scheduling."""
    T, N = grad_spikes.shape
    grad_x = torch.empty_like(grad_spikes)
    grad_v0 = torch.empty((N if need_grad_v0 else 0,), dtype=torch.float32, device=d.device)
    if N == 0:
        return grad_x, grad_v0, torch.zeros((), dtype=torch.float32, device=d.device)
    block, warps = launch_config(N, d.device)
    programs = triton.cdiv(N, block)
    grad_k_partial = torch.empty((programs,), dtype=torch.float32, device=d.device)
    plif_bwd_kernel[(programs,)](
        grad_spikes, d, x if decay_input else d, w, v0 if v0 is not None else d, beta,
        grad_v_last if grad_v_last is not None else d, grad_x, grad_v0 if need_grad_v0 else d, grad_k_partial,
        N, T, (T - 1) * N, v_th, v_reset, h,
        SURROGATE=surrogate_id, HARD_RESET=hard_reset, DETACH_RESET=detach_reset, DECAY_INPUT=decay_input,
        HAS_V0=v0 is not None, HAS_GRAD_V_LAST=grad_v_last is not None, STORE_GRAD_V0=need_grad_v0,
        BLOCK=block, num_warps=warps,
    )
    return grad_x, grad_v0, grad_k_partial.sum()


# ---------------------------------------------------------------------------------------------
# Eager backend: LIF's step formulas with decay = 1 - k, input_scale = k (or 1), in PyTorch.
# ---------------------------------------------------------------------------------------------


def plif_fwd_torch(x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype):
    """The forward in plain torch ops, written so that inductor fuses it (``plif_fwd_inductor``)."""
    dtype = math_dtype(x.dtype)
    decay, input_scale = _leak(w, dtype, decay_input)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    d = []
    for t in range(x.shape[0]):
        d_t, v = lif_step(v, x[t].to(dtype), decay, input_scale, v_th, hard_reset, v_reset)
        d.append(d_t)
    d = torch.stack(d)
    return (d >= 0).to(x.dtype), d.to(save_dtype), (v if return_v else v.new_empty(0))


def plif_bwd_torch(grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset, v_reset,
                   detach_reset, h, need_grad_v0):
    """The backward in plain torch ops, written so that inductor fuses it (``plif_bwd_inductor``)."""
    dtype = math_dtype(grad_spikes.dtype)
    decay, input_scale = _leak(w, dtype, decay_input)
    carry = torch.zeros_like(grad_spikes[0], dtype=dtype) if grad_v_last is None else grad_v_last.to(dtype)
    deltas = []
    for t in reversed(range(grad_spikes.shape[0])):
        delta = lif_bwd_step(d[t].to(dtype), grad_spikes[t].to(dtype), carry, beta[t].to(dtype),
                             SURROGATES[surrogate_id], v_th, hard_reset, v_reset, detach_reset, h)
        deltas.append(delta)
        carry = decay * delta
    delta = torch.stack(deltas[::-1])
    # v[t-1] for every t: v0, then the reset of each step t-1 recomputed from its d
    d_prev = d[:-1].to(dtype)
    v_first = torch.zeros_like(carry) if v0 is None else v0.to(dtype)
    v_prev = torch.cat([v_first[None], after_reset(d_prev + v_th, d_prev, v_th, hard_reset, v_reset)])
    grad_k = (delta * (x.to(dtype) - v_prev)).sum() if decay_input else -(delta * v_prev).sum()
    grad_x = (input_scale * delta).to(grad_spikes.dtype)
    return grad_x, (carry if need_grad_v0 else carry.new_empty(0)), grad_k


# ---------------------------------------------------------------------------------------------
# Inductor backend: the eager functions above compiled into fused C++ loops (CPU) once per variant.
# ---------------------------------------------------------------------------------------------


def plif_fwd_inductor(x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype):
    fwd = compiled_variant(plif_fwd_torch, x.shape[0], x.dtype, w.dtype, v0 is None, decay_input, v_th, hard_reset,
                           v_reset, return_v, save_dtype, numel=x.numel())
    return fwd(x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype)


def plif_bwd_inductor(grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset,
                      v_reset, detach_reset, h, need_grad_v0):
    bwd = compiled_variant(plif_bwd_torch, grad_spikes.shape[0], grad_spikes.dtype, d.dtype, w.dtype, v0 is None,
                           grad_v_last is None, surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h,
                           need_grad_v0, numel=grad_spikes.numel())
    return bwd(grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset, v_reset,
               detach_reset, h, need_grad_v0)


PLIF_FWD = {"triton": plif_fwd, "torch": plif_fwd_torch, "inductor": plif_fwd_inductor}
PLIF_BWD = {"triton": plif_bwd, "torch": plif_bwd_torch, "inductor": plif_bwd_inductor}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile) and their autograd.
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("a2sg_triton::plif_fwd", mutates_args=())
def plif_fwd_op(x: torch.Tensor, w: torch.Tensor, beta: torch.Tensor, v0: Optional[torch.Tensor], surrogate_id: int,
                decay_input: bool, v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                return_v: bool, save_dtype: torch.dtype, backend: str, search_key: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> spikes [T, N], d = u - v_th [T, N] (saved for backward), v_last [N] or [0].

    beta, surrogate_id, detach_reset and h are unused here; they are inputs so that backward gets
    them. search_key >= 0 names an armed A²SG search site: backward then searches beta first.
    """
    return PLIF_FWD[backend](x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype)


@plif_fwd_op.register_fake
def _(x, w, beta, v0, surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h, return_v, save_dtype,
      backend, search_key):
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::plif_bwd", mutates_args=())
def plif_bwd_op(grad_spikes: torch.Tensor, d: torch.Tensor, x: Optional[torch.Tensor], w: torch.Tensor,
                v0: Optional[torch.Tensor], beta: torch.Tensor, grad_v_last: Optional[torch.Tensor], surrogate_id: int,
                decay_input: bool, v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                need_grad_v0: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] and grad_k = dL/dk [] in the math dtype."""
    return PLIF_BWD[backend](grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset,
                             v_reset, detach_reset, h, need_grad_v0)


@plif_bwd_op.register_fake
def plif_bwd_fake(grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset, v_reset,
                  detach_reset, h, need_grad_v0, backend):
    T, N = grad_spikes.shape
    dtype = math_dtype(grad_spikes.dtype)
    grad_v0 = grad_spikes.new_empty((N if need_grad_v0 else 0,), dtype=dtype)
    return torch.empty_like(grad_spikes), grad_v0, grad_spikes.new_empty((), dtype=dtype)


def _plif_setup_context(ctx, inputs, output):
    (x, w, beta, v0, surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h, return_v, save_dtype,
     backend, search_key) = inputs
    # x only where dL/dk needs it (decay_input); v0 for v[-1]
    ctx.save_for_backward(output[1], x if decay_input else None, w, v0, beta)
    ctx.mark_non_differentiable(output[1])
    ctx.params = (surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h)
    ctx.return_v, ctx.backend, ctx.search_key = return_v, backend, search_key
    ctx.eager = False  # PLIFFunction sets it
    ctx.x_dtype = x.dtype


def _plif_backward(ctx, grad_spikes, grad_d, grad_v_last):
    """Shared by the op's autograd (what torch.compile traces) and ``PLIFFunction`` (eager)."""
    d, x, w, v0, beta = ctx.saved_tensors
    if grad_spikes is None:
        grad_spikes = torch.zeros(d.shape, dtype=ctx.x_dtype, device=d.device)
    need_grad_v0 = v0 is not None and ctx.needs_input_grad[3]
    args = (grad_spikes.contiguous(), d, x, w, v0, beta,
            grad_v_last.contiguous() if ctx.return_v and grad_v_last is not None else None,
            *ctx.params, need_grad_v0, ctx.backend)
    grad_x, grad_v0, grad_k = plif_bwd_dispatch(args, ctx.search_key, ctx.eager)
    grad_w = None
    if ctx.needs_input_grad[1]:  # dL/dw = dL/dk k (1 - k), on the device
        k = torch.sigmoid(w.to(grad_k.dtype))
        grad_w = (grad_k * k * (1 - k)).to(w.dtype)
    grad_v0 = grad_v0.to(v0.dtype) if need_grad_v0 else None
    return grad_x, grad_w, None, grad_v0, *([None] * 11)


def plif_bwd_dispatch(args, search_key, eager):
    """The PLIF backward on ``plif_bwd_op``'s arguments: the armed A²SG search (``search_key`` >= 0),
    else the backend called directly (``eager``) or through the op (what torch.compile traces)."""
    if search_key >= 0:  # registered by a2sg_triton.search.controller, looked up late to avoid an import cycle
        return torch.ops.a2sg_triton.plif_bwd_search(*args, search_key)
    if eager:
        return PLIF_BWD[args[-1]](*args[:-1])
    return plif_bwd_op(*args)


plif_fwd_op.register_autograd(_plif_backward, setup_context=_plif_setup_context)


class PLIFFunction(torch.autograd.Function):
    """The eager path of ``plif_multistep`` (as ``LIFFunction`` is ``lif_multistep``'s)."""

    @staticmethod
    def forward(ctx, *inputs):
        (x, w, beta, v0, surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h, return_v, save_dtype,
         backend, search_key) = inputs
        output = PLIF_FWD[backend](x, w, v0, decay_input, v_th, hard_reset, v_reset, return_v, save_dtype)
        _plif_setup_context(ctx, inputs, output)
        ctx.eager = True
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _plif_backward(ctx, *grads)


def plif_multistep(x, w, beta, surrogate="box", *, decay_input=True, v_th=1.0, reset="soft", v_reset=0.0,
                   detach_reset=False, h=0.5, v0=None, return_v=False, backend="auto", save_dtype=None,
                   _search_key=-1):
    """Multistep PLIF over x [T, *] with the leak k = sigmoid(w), w a 0-d tensor (it may require grad):
    u[t] = (1 - k) v[t-1] + k x[t] (``decay_input``) or (1 - k) v[t-1] + x[t]; spikes, resets and
    surrogates as ``lif_multistep``. Returns spikes (x.dtype), or (spikes, v_T) with ``return_v``;
    gradients reach x, w and v0. w is read on the device only (no host sync). beta, save_dtype and
    backend as ``lif_multistep``; ``_search_key`` is the A²SG controller's.
    """
    beta, hard_reset = _check_plif_args(x, w, beta, surrogate, decay_input, v_th, reset, v_reset, detach_reset, h,
                                        v0, return_v, save_dtype)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    x_flat, v0_flat = to_flat(x, order), None if v0 is None else to_flat(v0[None], order)[0]
    run = plif_fwd_op if is_compiling() else PLIFFunction.apply
    spikes, _, v_last = run(
        x_flat, w, beta, v0_flat, SURROGATES.index(surrogate), decay_input, float(v_th), hard_reset, float(v_reset),
        detach_reset, float(h), return_v, save_dtype or math_dtype(x.dtype), backend, _search_key,
    )
    spikes = from_flat(spikes, x.shape, order)
    if return_v:
        return spikes, from_flat(v_last[None], (1, *x.shape[1:]), order)[0]
    return spikes


def plif_membrane(x, w, *, decay_input=True, v_th=1.0, reset="soft", v_reset=0.0, v0=None, backend="auto"):
    """d = u - v_th [T, *] for input currents x [T, *] and the leak parameter w, computed by
    ``plif_multistep``'s own forward (same backend and kernel, no autograd): its spikes are exactly
    ``d >= 0``. fp32 (float64 for float64 x). For analysis, as ``lif_membrane``."""
    _, hard_reset = _check_plif_args(x, w, 1.0, "box", decay_input, v_th, reset, v_reset, False, 0.5, v0, False,
                                     None)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    with torch.no_grad():
        _, d, _ = PLIF_FWD[backend](to_flat(x, order), w, None if v0 is None else to_flat(v0[None], order)[0],
                                    decay_input, float(v_th), hard_reset, float(v_reset), False, math_dtype(x.dtype))
    return from_flat(d, x.shape, order)
