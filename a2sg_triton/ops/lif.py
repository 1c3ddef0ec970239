"""Multistep LIF neuron with a per-timestep surrogate width (docs/math.md).

Side by side: the readable reference (``lif_multistep_ref``), the Triton launchers (``lif_fwd`` /
``lif_bwd`` around ``lif_fwd_kernel`` / ``lif_bwd_kernel``), the eager analytic backend
(``lif_fwd_torch`` / ``lif_bwd_torch``) and its inductor compilation, the torch.library ops
(``a2sg_triton::lif_fwd``, ``lif_bwd`` and the armed layer's ``lif_bwd_search``), the ``LIF``
neuron that the shared skeleton (``_neuron.py``) drives, and the public ``lif_multistep``.

Backward needs only d = u - v_th per step; the spike is recomputed as d >= 0.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch

from ._neuron import Neuron, apply_neuron, launch_config, neuron_membrane
from .backend import HAS_TRITON, compiled_variant, math_dtype, resolve_backend
from .checks import check_beta, check_flag, check_real, check_reset, check_save_dtype, check_tensor
from .search_sites import CUDAGRAPH_UNSAFE, search_site
from .surrogate import SURROGATES, check_surrogate, surrogate_grad

if HAS_TRITON:
    import triton

    from ..kernels.lif import lif_bwd_kernel, lif_fwd_kernel

Beta = Union[float, torch.Tensor]


class LIFParams(NamedTuple):
    """The LIF neuron's constants, in the ops' order (docs/math.md). ``decay`` is a 0-d tensor where
    PLIF's search reuses LIF's step formulas with its learned leak."""

    surrogate_id: int
    decay: float
    input_scale: float
    v_th: float
    hard_reset: bool
    v_reset: float
    detach_reset: bool
    h: float


class StepParams(NamedTuple):
    """The constants of one LIF step's local gradient delta (the candidate statistics take these;
    ``LIFParams`` has the same fields and serves ``lif_bwd_step`` too)."""

    surrogate_id: int
    v_th: float
    hard_reset: bool
    v_reset: float
    detach_reset: bool
    h: float


def step_params(p: LIFParams) -> StepParams:
    """The local-gradient constants of a LIF neuron's."""
    return StepParams(p.surrogate_id, p.v_th, p.hard_reset, p.v_reset, p.detach_reset, p.h)


def check_lif_args(x: torch.Tensor, beta: Beta, *, surrogate: str, decay: float, input_scale: float, v_th: float,
                   reset: str, v_reset: float, detach_reset: bool, h: float, v0: Optional[torch.Tensor],
                   return_v: bool, save_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, LIFParams]:
    """Validates everything before any kernel runs; returns (beta [T] in the math dtype, the constants)."""
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [T, ...] with T >= 1, got shape {list(x.shape)}")
    surrogate_id = check_surrogate(surrogate, h)
    for name, value in (("decay", decay), ("input_scale", input_scale), ("v_th", v_th), ("v_reset", v_reset)):
        check_real(name, value)
    hard_reset = check_reset(reset)
    check_flag("detach_reset", detach_reset)
    check_flag("return_v", return_v)
    check_save_dtype(save_dtype)
    if v0 is not None:
        check_tensor("v0", v0, device=x.device)
        if v0.shape != x.shape[1:]:
            raise ValueError(f"v0 must have shape {list(x.shape[1:])} (x.shape[1:]), got {list(v0.shape)}")
    beta = check_beta(beta, x.shape[0], x.device, math_dtype(x.dtype))
    return beta, LIFParams(surrogate_id, float(decay), float(input_scale), float(v_th), hard_reset, float(v_reset),
                           detach_reset, float(h))


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through a Heaviside step whose derivative is f(u; beta).
# ---------------------------------------------------------------------------------------------


class HeavisideSurrogate(torch.autograd.Function):
    """s = (u >= v_th) forward, ds/du := f(u; beta) backward."""

    @staticmethod
    def forward(ctx, u, beta, surrogate, v_th, h):
        ctx.save_for_backward(u, beta)
        ctx.surrogate, ctx.v_th, ctx.h = surrogate, v_th, h
        return (u - v_th >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_spike):
        u, beta = ctx.saved_tensors
        return grad_spike * surrogate_grad(u, beta, ctx.surrogate, ctx.v_th, ctx.h), None, None, None, None


def lif_multistep_ref(x: torch.Tensor, beta: Beta, surrogate: str = "box", *, decay: float = 0.5,
                      input_scale: float = 0.5, v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0,
                      detach_reset: bool = False, h: float = 0.5, v0: Optional[torch.Tensor] = None,
                      return_v: bool = False):
    """Readable reference of ``lif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype, v_T included (use float64 to compare
    against the kernels).
    """
    beta, p = check_lif_args(x, beta, surrogate=surrogate, decay=decay, input_scale=input_scale, v_th=v_th,
                             reset=reset, v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0,
                             return_v=return_v, save_dtype=None)
    beta = beta.to(x.dtype)
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        s = HeavisideSurrogate.apply(u, beta[t], surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u + s_reset * v_reset if p.hard_reset else u - v_th * s_reset
        spikes.append(s)
    spikes = torch.stack(spikes)
    return (spikes, v) if return_v else spikes


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def lif_fwd(x, v0, p: LIFParams, return_v: bool, save_dtype: torch.dtype):
    """x [T, N] contiguous -> spikes [T, N] (x.dtype), d [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    spikes = torch.empty_like(x)
    d = torch.empty((T, N), dtype=save_dtype, device=x.device)
    v_last = torch.empty((N if return_v else 0,), dtype=torch.float32, device=x.device)
    if N > 0:
        block, warps = launch_config(N, x.device)
        lif_fwd_kernel[(triton.cdiv(N, block),)](
            x, v0 if v0 is not None else x, spikes, d, v_last if return_v else d,
            N, T, p.decay, p.input_scale, p.v_th, p.v_reset,
            HAS_V0=v0 is not None, HARD_RESET=p.hard_reset, STORE_V_LAST=return_v,
            BLOCK=block, num_warps=warps,
        )
    return spikes, d, v_last


def lif_bwd(grad_spikes, d, beta, grad_v_last, p: LIFParams, *, need_grad_v0: bool):
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] (fp32)."""
    T, N = grad_spikes.shape
    grad_x = torch.empty_like(grad_spikes)
    grad_v0 = torch.empty((N if need_grad_v0 else 0,), dtype=torch.float32, device=d.device)
    if N > 0:
        block, warps = launch_config(N, d.device)
        lif_bwd_kernel[(triton.cdiv(N, block),)](
            grad_spikes, d, beta, grad_v_last if grad_v_last is not None else d, grad_x,
            grad_v0 if need_grad_v0 else d,
            N, T, (T - 1) * N, p.decay, p.input_scale, p.v_th, p.v_reset, p.h,
            SURROGATE=p.surrogate_id, HARD_RESET=p.hard_reset, DETACH_RESET=p.detach_reset,
            HAS_GRAD_V_LAST=grad_v_last is not None, STORE_GRAD_V0=need_grad_v0,
            BLOCK=block, num_warps=warps,
        )
    return grad_x, grad_v0


# ---------------------------------------------------------------------------------------------
# Eager backend: the same analytic forward/backward as the kernels, in PyTorch, on any device.
# ---------------------------------------------------------------------------------------------


def lif_step(v, x_t, decay, input_scale, v_th, hard_reset, v_reset):
    """One LIF timestep (docs/math.md): v = v[t-1], x_t = x[t] -> (d = u[t] - v_th, v[t] after the reset).

    The spike is d >= 0. The one torch copy of the recurrence (the kernels' is
    ``kernels.neuron.lif_step``).
    """
    u = decay * v + input_scale * x_t
    d = u - v_th
    return d, after_reset(u, d, v_th, hard_reset, v_reset)


def after_reset(u, d, v_th, hard_reset, v_reset):
    """v[t] from u[t] and d = u[t] - v_th (the spike is d >= 0): the reset of docs/math.md."""
    spike = d >= 0
    return torch.where(spike, v_reset, u) if hard_reset else torch.where(spike, u - v_th, u)


def lif_local_grad(d, grad_s, carry, f, v_th, hard_reset, v_reset, detach_reset):
    """delta = dL/du of one LIF step (docs/math.md) from d = u - v_th, grad_s = dL/ds, carry = dL/dv
    (None: no later step) and f = f(u; beta); the operands broadcast. The one torch copy of the
    formula (the kernels' is ``kernels.neuron.local_grad``)."""
    delta = grad_s * f
    if carry is None:
        return delta
    if hard_reset:
        no_spike = (d < 0).to(d.dtype)
        dv_du = no_spike if detach_reset else no_spike + ((v_reset - v_th) - d) * f
    else:
        dv_du = 1.0 if detach_reset else 1.0 - v_th * f
    return delta + carry * dv_du


def lif_bwd_step(d_t, grad_s_t, carry, beta_t, p: Union[StepParams, LIFParams]):
    """delta[t] with width beta_t (a float or a tensor that broadcasts): f, then the local gradient."""
    f = surrogate_grad(d_t, beta_t, SURROGATES[p.surrogate_id], v_th=0.0, h=p.h)
    return lif_local_grad(d_t, grad_s_t, carry, f, p.v_th, p.hard_reset, p.v_reset, p.detach_reset)


def lif_fwd_torch(x, v0, p: LIFParams, return_v: bool, save_dtype: torch.dtype):
    """The forward in plain torch ops, written so that inductor fuses it (``lif_fwd_inductor``)."""
    dtype = math_dtype(x.dtype)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    d = []
    for t in range(x.shape[0]):
        d_t, v = lif_step(v, x[t].to(dtype), p.decay, p.input_scale, p.v_th, p.hard_reset, p.v_reset)
        d.append(d_t)
    d = torch.stack(d)
    return (d >= 0).to(x.dtype), d.to(save_dtype), (v if return_v else v.new_empty(0))


def lif_bwd_torch(grad_spikes, d, beta, grad_v_last, p: LIFParams, *, need_grad_v0: bool):
    """The backward in plain torch ops, written so that inductor fuses it (``lif_bwd_inductor``)."""
    dtype = math_dtype(grad_spikes.dtype)
    carry = torch.zeros_like(grad_spikes[0], dtype=dtype) if grad_v_last is None else grad_v_last.to(dtype)
    deltas = []
    for t in reversed(range(grad_spikes.shape[0])):
        delta = lif_bwd_step(d[t].to(dtype), grad_spikes[t].to(dtype), carry, beta[t].to(dtype), p)
        deltas.append(delta)
        carry = p.decay * delta
    grad_x = (p.input_scale * torch.stack(deltas[::-1])).to(grad_spikes.dtype)
    return grad_x, (carry if need_grad_v0 else carry.new_empty(0))


# ---------------------------------------------------------------------------------------------
# Inductor backend: the eager functions above compiled into fused C++ loops (CPU) once per variant.
# ---------------------------------------------------------------------------------------------


def lif_fwd_inductor(x, v0, p: LIFParams, return_v: bool, save_dtype: torch.dtype):
    fwd = compiled_variant(lif_fwd_torch, x.shape[0], x.dtype, v0 is None, p, return_v, save_dtype, numel=x.numel())
    return fwd(x, v0, p, return_v, save_dtype)


def lif_bwd_inductor(grad_spikes, d, beta, grad_v_last, p: LIFParams, *, need_grad_v0: bool):
    bwd = compiled_variant(lif_bwd_torch, grad_spikes.shape[0], grad_spikes.dtype, d.dtype, grad_v_last is None, p,
                           need_grad_v0, numel=grad_spikes.numel())
    return bwd(grad_spikes, d, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


LIF_FWD = {"triton": lif_fwd, "torch": lif_fwd_torch, "inductor": lif_fwd_inductor}
LIF_BWD = {"triton": lif_bwd, "torch": lif_bwd_torch, "inductor": lif_bwd_inductor}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile).
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("a2sg_triton::lif_fwd", mutates_args=())
def lif_fwd_op(x: torch.Tensor, beta: torch.Tensor, v0: Optional[torch.Tensor], surrogate_id: int, decay: float,
               input_scale: float, v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
               return_v: bool, save_dtype: torch.dtype, backend: str, search_key: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> spikes [T, N], d = u - v_th [T, N] (saved for backward), v_last [N] or [0].

    beta, surrogate_id, detach_reset and h are unused here; they are inputs so that backward gets
    them. search_key >= 0 names an armed A²SG search site: backward then searches beta first.
    """
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return LIF_FWD[backend](x, v0, p, return_v, save_dtype)


@lif_fwd_op.register_fake
def _(x, beta, v0, *constants_and_flags):
    return_v, save_dtype = constants_and_flags[-4:-2]
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::lif_bwd", mutates_args=())
def lif_bwd_op(grad_spikes: torch.Tensor, d: torch.Tensor, beta: torch.Tensor, grad_v_last: Optional[torch.Tensor],
               surrogate_id: int, decay: float, input_scale: float, v_th: float, hard_reset: bool, v_reset: float,
               detach_reset: bool, h: float, need_grad_v0: bool, backend: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] in the math dtype."""
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return LIF_BWD[backend](grad_spikes, d, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@lif_bwd_op.register_fake
def lif_bwd_fake(grad_spikes, d, beta, grad_v_last, *constants_and_flags):
    need_grad_v0 = constants_and_flags[len(LIFParams._fields)]
    T, N = grad_spikes.shape
    grad_v0 = grad_spikes.new_empty((N if need_grad_v0 else 0,), dtype=math_dtype(grad_spikes.dtype))
    return torch.empty_like(grad_spikes), grad_v0


@torch.library.custom_op("a2sg_triton::lif_bwd_search", mutates_args=(), **CUDAGRAPH_UNSAFE)
def lif_bwd_search_op(grad_spikes: torch.Tensor, d: torch.Tensor, beta: torch.Tensor,
                      grad_v_last: Optional[torch.Tensor], surrogate_id: int, decay: float, input_scale: float,
                      v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                      need_grad_v0: bool, backend: str, search_key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LIF backward of an armed layer: its controller searches the widths (writing them into the
    layer) and the gradients come with the widths it chose."""
    site = search_site(search_key)
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return site.controller.search_backward(site.name, grad_spikes, d, beta, grad_v_last, p,
                                           need_grad_v0=need_grad_v0, backend=backend)


@lif_bwd_search_op.register_fake
def _(*args):
    return lif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none


def _keep(tensors, p, d):
    """Backward needs d and beta."""
    return d, tensors[1]


LIF = Neuron(name="lif", params=LIFParams, n_weights=0, forward=LIF_FWD, backward=LIF_BWD, fwd_op=lif_fwd_op,
             bwd_op=lif_bwd_op, search_op=lif_bwd_search_op, keep=_keep)


# ---------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------


def lif_multistep(x: torch.Tensor, beta: Beta, surrogate: str = "box", *, decay: float = 0.5,
                  input_scale: float = 0.5, v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0,
                  detach_reset: bool = False, h: float = 0.5, v0: Optional[torch.Tensor] = None,
                  return_v: bool = False, backend: str = "auto", save_dtype: Optional[torch.dtype] = None):
    """Multistep LIF: u[t] = decay v[t-1] + input_scale x[t], s[t] = (u[t] >= v_th), soft or hard reset.

    Args:
        x: input currents [T, *] (fp32, fp16, bf16 or float64; any layout, channels_last read in place).
        beta: the surrogate width, a float or a tensor [T] (one per timestep). Used by backward only and
            never read on the host, so new values neither sync nor recompile. Not learnable: a beta that
            requires grad is refused.
        surrogate: one of ``SURROGATES`` ("box", "tri", "asy", "asy_unit", "atan", "sigmoid").
        decay, input_scale, v_th: the neuron's constants (the paper's LIF: decay = input_scale = 1/tau).
        reset: "soft" (v = u - v_th s) or "hard" (v = v_reset where s).
        v_reset: the hard reset's value.
        detach_reset: leave the reset out of backward.
        h: the asy surrogate's height at the threshold (>= 0.5).
        v0: the initial membrane [*] (default 0); gradients reach it.
        return_v: also return v_T.
        backend: "auto", "triton", "torch" or "inductor" (docs/math.md).
        save_dtype: dtype of the one tensor saved for backward, u - v_th: None (fp32) or torch.bfloat16.

    Returns:
        spikes [T, *] in x.dtype, or (spikes, v_T [*]) with ``return_v``. v_T is the fp32 state the
        kernels carry (float64 for float64 x), so a stream of chunks (each call's v_T the next call's
        ``v0``) is not rounded to fp16/bf16 between chunks.
    """
    beta, p = check_lif_args(x, beta, surrogate=surrogate, decay=decay, input_scale=input_scale, v_th=v_th,
                             reset=reset, v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0,
                             return_v=return_v, save_dtype=save_dtype)
    return apply_neuron(LIF, x, (), beta, v0, p, return_v=return_v, save_dtype=save_dtype,
                        backend=resolve_backend(backend, x))


def lif_membrane(x: torch.Tensor, *, decay: float = 0.5, input_scale: float = 0.5, v_th: float = 1.0,
                 reset: str = "soft", v_reset: float = 0.0, v0: Optional[torch.Tensor] = None,
                 backend: str = "auto") -> torch.Tensor:
    """d = u - v_th [T, *] for input currents x [T, *], computed by ``lif_multistep``'s own forward
    (same backend and kernel, no autograd): its spikes are exactly ``d >= 0``. fp32 (float64 for
    float64 x). For analysis: the membrane a layer really had, not a re-derivation of it.
    """
    _, p = check_lif_args(x, 1.0, surrogate="box", decay=decay, input_scale=input_scale, v_th=v_th, reset=reset,
                          v_reset=v_reset, detach_reset=False, h=0.5, v0=v0, return_v=False, save_dtype=None)
    return neuron_membrane(LIF, x, (), v0, p, resolve_backend(backend, x))
