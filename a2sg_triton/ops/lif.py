"""Multistep LIF neuron with a per-timestep surrogate width (docs/math.md).

Side by side: the readable reference (``lif_multistep_ref``), the Triton launchers (``lif_fwd`` /
``lif_bwd`` around ``lif_fwd_kernel`` / ``lif_bwd_kernel``), the eager analytic backend
(``lif_fwd_torch`` / ``lif_bwd_torch``) and its inductor compilation, the torch.library ops
(``a2sg_triton::lif_fwd``, ``lif_bwd`` and the armed layer's ``lif_bwd_search``), the ``LIF``
neuron that the shared skeleton (``_neuron.py``) drives, and the public ``lif_multistep``.

Backward needs only d = u - v_th per step; the spike is recomputed as d >= 0.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor

from ._neuron import (InputGrads, Neuron, NeuronOutputs, apply_neuron, backward_outputs, backward_through_time,
                      compiled_backend, forward_outputs, launch_over_neurons, neuron_membrane)
from .backend import HAS_TRITON, math_dtype, resolve_backend
from .checks import check_beta, check_flag, check_real, check_reset, check_save_dtype, check_tensor
from .search_sites import CUDAGRAPH_UNSAFE, search_site
from .surrogate import SURROGATES, check_surrogate, surrogate_grad

if HAS_TRITON:
    from ..kernels.lif import lif_bwd_kernel, lif_fwd_kernel

Beta = Union[float, torch.Tensor]


class LIFParams(NamedTuple):
    """The LIF neuron's constants, in the ops' order (docs/math.md). ``decay`` is a 0-d tensor where
    PLIF's search reuses LIF's step formulas with its learned leak."""

    surrogate_id: int
    decay: Union[float, torch.Tensor]
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


class StepConstants(Protocol):
    """What one step's local gradient reads of a neuron's constants: ``StepParams``, ``LIFParams`` and
    ``PLIFParams`` all have these fields."""

    @property
    def surrogate_id(self) -> int: ...
    @property
    def v_th(self) -> float: ...
    @property
    def hard_reset(self) -> bool: ...
    @property
    def v_reset(self) -> float: ...
    @property
    def detach_reset(self) -> bool: ...
    @property
    def h(self) -> float: ...


def step_params(p: LIFParams) -> StepParams:
    """The local-gradient constants of a LIF neuron's."""
    return StepParams(p.surrogate_id, p.v_th, p.hard_reset, p.v_reset, p.detach_reset, p.h)


def check_lif_args(x: Tensor, beta: Beta, *, surrogate: str, decay: float, input_scale: float, v_th: float,
                   reset: str, v_reset: float, detach_reset: bool, h: float, v0: Optional[Tensor],
                   return_v: bool, save_dtype: Optional[torch.dtype]) -> tuple[Tensor, LIFParams]:
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
    widths = check_beta(beta, x.shape[0], x.device, math_dtype(x.dtype))
    return widths, LIFParams(surrogate_id, float(decay), float(input_scale), float(v_th), hard_reset, float(v_reset),
                           detach_reset, float(h))


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through a Heaviside step whose derivative is f(u; beta).
# ---------------------------------------------------------------------------------------------


class HeavisideSurrogate(torch.autograd.Function):
    """s = (u >= v_th) forward, ds/du := f(u; beta) backward."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, beta: Tensor, surrogate: str, v_th: float,  # type: ignore[override]
                h: float) -> Tensor:
        ctx.save_for_backward(u, beta)
        ctx.surrogate, ctx.v_th, ctx.h = surrogate, v_th, h
        return (u - v_th >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx: Any, grad_spike: Tensor) -> tuple:  # type: ignore[override]
        u, beta = ctx.saved_tensors
        return grad_spike * surrogate_grad(u, beta, ctx.surrogate, v_th=ctx.v_th, h=ctx.h), None, None, None, None


def lif_multistep_ref(x: Tensor, beta: Beta, surrogate: str = "box", *, decay: float = 0.5,
                      input_scale: float = 0.5, v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0,
                      detach_reset: bool = False, h: float = 0.5, v0: Optional[Tensor] = None,
                      return_v: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Readable reference of ``lif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype, v_T included (use float64 to compare
    against the kernels).
    """
    widths, p = check_lif_args(x, beta, surrogate=surrogate, decay=decay, input_scale=input_scale, v_th=v_th,
                               reset=reset, v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0,
                               return_v=return_v, save_dtype=None)
    widths = widths.to(x.dtype)
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    steps = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        s = HeavisideSurrogate.apply(u, widths[t], surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u + s_reset * v_reset if p.hard_reset else u - v_th * s_reset
        steps.append(s)
    spikes = torch.stack(steps)
    return (spikes, v) if return_v else spikes


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def lif_fwd(x: Tensor, v0: Optional[Tensor], p: LIFParams, return_v: bool, save_dtype: torch.dtype) -> NeuronOutputs:
    """x [T, N] contiguous -> spikes [T, N] (x.dtype), d [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    spikes, d, v_last = forward_outputs(x, return_v, save_dtype)
    launch_over_neurons(
        lif_fwd_kernel, N, x.device,
        x, v0 if v0 is not None else x, spikes, d, v_last if return_v else d,
        N, T, p.decay, p.input_scale, p.v_th, p.v_reset,
        HAS_V0=v0 is not None, HARD_RESET=p.hard_reset, STORE_V_LAST=return_v,
    )
    return spikes, d, v_last


def lif_bwd(grad_spikes: Tensor, d: Tensor, beta: Tensor, grad_v_last: Optional[Tensor], p: LIFParams, *,
            need_grad_v0: bool) -> InputGrads:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] (fp32)."""
    T, N = grad_spikes.shape
    grad_x, grad_v0 = backward_outputs(grad_spikes, need_grad_v0)
    launch_over_neurons(
        lif_bwd_kernel, N, d.device,
        grad_spikes, d, beta, grad_v_last if grad_v_last is not None else d, grad_x,
        grad_v0 if need_grad_v0 else d,
        N, T, (T - 1) * N, p.decay, p.input_scale, p.v_th, p.v_reset, p.h,
        SURROGATE=p.surrogate_id, HARD_RESET=p.hard_reset, DETACH_RESET=p.detach_reset,
        HAS_GRAD_V_LAST=grad_v_last is not None, STORE_GRAD_V0=need_grad_v0,
    )
    return grad_x, grad_v0


# ---------------------------------------------------------------------------------------------
# Eager backend: the same analytic forward/backward as the kernels, in PyTorch, on any device.
# ---------------------------------------------------------------------------------------------


def lif_step(v: Tensor, x_t: Tensor, decay: Union[float, Tensor], input_scale: Union[float, Tensor], v_th: float,
             hard_reset: bool, v_reset: float) -> InputGrads:
    """One LIF timestep (docs/math.md): v = v[t-1], x_t = x[t] -> (d = u[t] - v_th, v[t] after the reset).

    The spike is d >= 0. The one torch copy of the recurrence (the kernels' is
    ``kernels.neuron.lif_step``).
    """
    u = decay * v + input_scale * x_t
    d = u - v_th
    return d, after_reset(u, d, v_th, hard_reset, v_reset)


def after_reset(u: Tensor, d: Tensor, v_th: float, hard_reset: bool, v_reset: float) -> Tensor:
    """v[t] from u[t] and d = u[t] - v_th (the spike is d >= 0): the reset of docs/math.md."""
    spike = d >= 0
    return torch.where(spike, v_reset, u) if hard_reset else torch.where(spike, u - v_th, u)


def lif_local_grad(d: Tensor, grad_s: Tensor, carry: Optional[Tensor], f: Tensor, v_th: float, hard_reset: bool,
                   v_reset: float, detach_reset: bool) -> Tensor:
    """delta = dL/du of one LIF step (docs/math.md) from d = u - v_th, grad_s = dL/ds, carry = dL/dv
    (None: no later step) and f = f(u; beta); the operands broadcast. The one torch copy of the
    formula (the kernels' is ``kernels.neuron.local_grad``)."""
    delta = grad_s * f
    if carry is None:
        return delta
    dv_du: Union[float, torch.Tensor]
    if hard_reset:
        no_spike = (d < 0).to(d.dtype)
        dv_du = no_spike if detach_reset else no_spike + ((v_reset - v_th) - d) * f
    else:
        dv_du = 1.0 if detach_reset else 1.0 - v_th * f
    return delta + carry * dv_du


def lif_bwd_step(d_t: Tensor, grad_s_t: Tensor, carry: Optional[Tensor], beta_t: Beta,
                 p: StepConstants) -> Tensor:
    """delta[t] with width beta_t (a float or a tensor that broadcasts): f, then the local gradient."""
    f = surrogate_grad(d_t, beta_t, SURROGATES[p.surrogate_id], v_th=0.0, h=p.h)
    return lif_local_grad(d_t, grad_s_t, carry, f, p.v_th, p.hard_reset, p.v_reset, p.detach_reset)


def lif_fwd_torch(x: Tensor, v0: Optional[Tensor], p: LIFParams, return_v: bool,
                  save_dtype: torch.dtype) -> NeuronOutputs:
    """The forward in plain torch ops, written so that inductor fuses it (the inductor backend)."""
    dtype = math_dtype(x.dtype)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    steps = []
    for t in range(x.shape[0]):
        d_t, v = lif_step(v, x[t].to(dtype), p.decay, p.input_scale, p.v_th, p.hard_reset, p.v_reset)
        steps.append(d_t)
    d = torch.stack(steps)
    return (d >= 0).to(x.dtype), d.to(save_dtype), (v if return_v else v.new_empty(0))


def lif_bwd_torch(grad_spikes: Tensor, d: Tensor, beta: Tensor, grad_v_last: Optional[Tensor], p: LIFParams, *,
                  need_grad_v0: bool) -> InputGrads:
    """The backward in plain torch ops, written so that inductor fuses it (the inductor backend)."""
    dtype = math_dtype(grad_spikes.dtype)

    def delta_at(t: int, carry: Tensor) -> Tensor:
        return lif_bwd_step(d[t].to(dtype), grad_spikes[t].to(dtype), carry, beta[t].to(dtype), p)

    delta, carry = backward_through_time(delta_at, grad_spikes, grad_v_last, p.decay)
    return (p.input_scale * delta).to(grad_spikes.dtype), (carry if need_grad_v0 else carry.new_empty(0))


# The inductor backend: the eager functions compiled into fused C++ loops (CPU) once per variant.
LIF_FWD = {"triton": lif_fwd, "torch": lif_fwd_torch, "inductor": compiled_backend(lif_fwd_torch)}
LIF_BWD = {"triton": lif_bwd, "torch": lif_bwd_torch, "inductor": compiled_backend(lif_bwd_torch)}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile).
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("a2sg_triton::lif_fwd", mutates_args=())
def lif_fwd_op(x: Tensor, beta: Tensor, v0: Optional[Tensor], surrogate_id: int, decay: float,
               input_scale: float, v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
               return_v: bool, save_dtype: torch.dtype, backend: str, search_key: int
               ) -> tuple[Tensor, Tensor, Tensor]:
    """-> spikes [T, N], d = u - v_th [T, N] (saved for backward), v_last [N] or [0].

    beta, surrogate_id, detach_reset and h are unused here; they are inputs so that backward gets
    them. search_key >= 0 names an armed A²SG search site: backward then searches beta first.
    """
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return LIF_FWD[backend](x, v0, p, return_v, save_dtype)


@lif_fwd_op.register_fake
def _(x: Tensor, beta: Tensor, v0: Optional[Tensor], *constants_and_flags: Any) -> NeuronOutputs:
    return_v, save_dtype = constants_and_flags[-4:-2]
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::lif_bwd", mutates_args=())
def lif_bwd_op(grad_spikes: Tensor, d: Tensor, beta: Tensor, grad_v_last: Optional[Tensor],
               surrogate_id: int, decay: float, input_scale: float, v_th: float, hard_reset: bool, v_reset: float,
               detach_reset: bool, h: float, need_grad_v0: bool, backend: str
               ) -> tuple[Tensor, Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] in the math dtype."""
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return LIF_BWD[backend](grad_spikes, d, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@lif_bwd_op.register_fake
def lif_bwd_fake(grad_spikes: Tensor, d: Tensor, beta: Tensor, grad_v_last: Optional[Tensor],
                 *constants_and_flags: Any) -> InputGrads:
    need_grad_v0 = constants_and_flags[len(LIFParams._fields)]
    T, N = grad_spikes.shape
    grad_v0 = grad_spikes.new_empty((N if need_grad_v0 else 0,), dtype=math_dtype(grad_spikes.dtype))
    return torch.empty_like(grad_spikes), grad_v0


@torch.library.custom_op("a2sg_triton::lif_bwd_search", mutates_args=(), **CUDAGRAPH_UNSAFE)
def lif_bwd_search_op(grad_spikes: Tensor, d: Tensor, beta: Tensor,
                      grad_v_last: Optional[Tensor], surrogate_id: int, decay: float, input_scale: float,
                      v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                      need_grad_v0: bool, backend: str, search_key: int) -> tuple[Tensor, Tensor]:
    """The LIF backward of an armed layer: its controller searches the widths (writing them into the
    layer) and the gradients come with the widths it chose."""
    site = search_site(search_key)
    p = LIFParams(surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    return site.controller.search_backward(site.name, grad_spikes, d, beta, grad_v_last, p,
                                           need_grad_v0=need_grad_v0, backend=backend)


@lif_bwd_search_op.register_fake
def _(*args: Any) -> InputGrads:
    return lif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none


def _keep(tensors: Sequence[Optional[Tensor]], p: LIFParams, d: Tensor) -> tuple:
    """Backward needs d and beta."""
    return d, tensors[1]


LIF = Neuron(name="lif", params=LIFParams, n_weights=0, forward=LIF_FWD, backward=LIF_BWD, fwd_op=lif_fwd_op,
             bwd_op=lif_bwd_op, search_op=lif_bwd_search_op, keep=_keep)


# ---------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------


def lif_multistep(x: Tensor, beta: Beta, surrogate: str = "box", *, decay: float = 0.5,
                  input_scale: float = 0.5, v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0,
                  detach_reset: bool = False, h: float = 0.5, v0: Optional[Tensor] = None,
                  return_v: bool = False, backend: str = "auto",
                  save_dtype: Optional[torch.dtype] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
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
    widths, p = check_lif_args(x, beta, surrogate=surrogate, decay=decay, input_scale=input_scale, v_th=v_th,
                               reset=reset, v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0,
                               return_v=return_v, save_dtype=save_dtype)
    return apply_neuron(LIF, x, (), widths, v0, p, return_v=return_v, save_dtype=save_dtype,
                        backend=resolve_backend(backend, x))


def lif_membrane(x: Tensor, *, decay: float = 0.5, input_scale: float = 0.5, v_th: float = 1.0,
                 reset: str = "soft", v_reset: float = 0.0, v0: Optional[Tensor] = None,
                 backend: str = "auto") -> Tensor:
    """d = u - v_th [T, *] for input currents x [T, *], computed by ``lif_multistep``'s own forward
    (same backend and kernel, no autograd): its spikes are exactly ``d >= 0``. fp32 (float64 for
    float64 x). For analysis: the membrane a layer really had, not a re-derivation of it.
    """
    _, p = check_lif_args(x, 1.0, surrogate="box", decay=decay, input_scale=input_scale, v_th=v_th, reset=reset,
                          v_reset=v_reset, detach_reset=False, h=0.5, v0=v0, return_v=False, save_dtype=None)
    return neuron_membrane(LIF, x, (), v0, p, resolve_backend(backend, x))
