"""Multistep I-LIF neuron: integer multi-level spikes (counts 0 ... D), soft reset (docs/math.md, "I-LIF").

Side by side, as for LIF (``a2sg_triton.ops.lif``): the readable reference (``ilif_multistep_ref``),
the Triton launchers (``ilif_fwd`` / ``ilif_bwd`` around ``ilif_fwd_kernel`` / ``ilif_bwd_kernel``),
the eager backend (``ilif_fwd_torch`` / ``ilif_bwd_torch``) and its inductor compilation, the
torch.library ops (``a2sg_triton::ilif_fwd``, ``ilif_bwd``, ``ilif_bwd_search``), the ``ILIF``
neuron that the shared skeleton drives, the public ``ilif_multistep`` and, for analysis,
``ilif_membrane`` (u by the same forward).

The count is q = round(clip(u / v_th, 0, D)), D = ``levels``; its surrogate derivative F(u) sums one
window per level, at the level thresholds theta_i = (i - 1/2) v_th, each with its own width
beta[t, i]. Backward needs only u (the membrane before the reset) per step: F and the soft reset's
derivative 1 - v_th F depend on u alone. beta is a [T, D] tensor, read by the kernels at run time
(a new D or beta never recompiles them).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ._neuron import (InputGrads, Neuron, NeuronOutputs, apply_neuron, backward_outputs, backward_through_time,
                      compiled_backend, forward_outputs, launch_over_neurons, neuron_membrane)
from .backend import HAS_TRITON, math_dtype, resolve_backend
from .checks import check_beta, check_real
from .lif import Beta, check_lif_args, lif_local_grad
from .search_sites import CUDAGRAPH_UNSAFE, search_site
from .surrogate import SURROGATES, surrogate_grad

if HAS_TRITON:
    from ..kernels.ilif import ilif_bwd_kernel, ilif_fwd_kernel


class ILIFParams(NamedTuple):
    """The I-LIF neuron's constants, in the ops' order (``levels`` = D, the largest count)."""

    surrogate_id: int
    levels: int
    decay: float
    input_scale: float
    v_th: float
    detach_reset: bool
    h: float


def check_ilif_args(x: torch.Tensor, beta: Beta, *, surrogate: str, levels: int, decay: float, input_scale: float,
                    v_th: float, detach_reset: bool, h: float, v0: Optional[torch.Tensor], return_v: bool,
                    save_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, ILIFParams]:
    """Validates everything before any kernel runs; returns (beta [T, D] in the math dtype, the constants)."""
    _, p = check_lif_args(x, 1.0, surrogate=surrogate, decay=decay, input_scale=input_scale, v_th=v_th, reset="soft",
                          v_reset=0.0, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v,
                          save_dtype=save_dtype)
    check_ilif_constants(levels, v_th)
    widths = check_beta(beta, x.shape[0], x.device, math_dtype(x.dtype), levels=levels)
    return widths, ILIFParams(p.surrogate_id, levels, float(decay), p.input_scale, p.v_th, p.detach_reset, p.h)


def check_ilif_constants(levels: int, v_th: float) -> None:
    """levels: an int >= 1 (the largest count); v_th: finite and > 0 (the count is u / v_th)."""
    if isinstance(levels, bool) or not isinstance(levels, int):
        raise TypeError(f"levels (the largest count) must be an int, got {type(levels).__name__}")
    if levels < 1:
        raise ValueError(f"levels (the largest count) must be >= 1, got {levels}")
    if check_real("v_th", v_th) <= 0:
        raise ValueError(f"v_th must be > 0 (the count is u / v_th), got {v_th}")


def level_surrogate_grad(u: Tensor, beta_t: Tensor, surrogate: str, levels: int, v_th: float, h: float) -> Tensor:
    """F(u) = sum_i f(u - theta_i; beta_t[i]), theta_i = (i - 1/2) v_th, i = 1 ... D: the surrogate
    derivative of the count, ``beta_t`` the [D] widths of one timestep."""
    F = surrogate_grad(u, beta_t[0], surrogate, v_th=0.5 * v_th, h=h)
    for i in range(1, levels):
        F = F + surrogate_grad(u, beta_t[i], surrogate, v_th=(i + 0.5) * v_th, h=h)
    return F


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through the count, whose derivative is F(u).
# ---------------------------------------------------------------------------------------------


class MultiLevelSurrogate(torch.autograd.Function):
    """q = round(clip(u / v_th, 0, D)) forward, dq/du := F(u) backward."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, beta_t: Tensor, surrogate: str, levels: int,  # type: ignore[override]
                v_th: float, h: float) -> Tensor:
        ctx.save_for_backward(u, beta_t)
        ctx.surrogate, ctx.levels, ctx.v_th, ctx.h = surrogate, levels, v_th, h
        return torch.round(torch.clamp(u / v_th, 0, levels))

    @staticmethod
    def backward(ctx: Any, grad_q: Tensor) -> tuple:  # type: ignore[override]
        u, beta_t = ctx.saved_tensors
        F = level_surrogate_grad(u, beta_t, ctx.surrogate, ctx.levels, ctx.v_th, ctx.h)
        return grad_q * F, None, None, None, None, None


def ilif_multistep_ref(x: torch.Tensor, beta: Beta, surrogate: str = "box", *, levels: int = 4, decay: float = 0.25,
                       input_scale: float = 1.0, v_th: float = 1.0, detach_reset: bool = False, h: float = 0.5,
                       v0: Optional[torch.Tensor] = None,
                       return_v: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Readable reference of ``ilif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype, v_T included (use float64 to compare
    against the kernels)."""
    widths, _ = check_ilif_args(x, beta, surrogate=surrogate, levels=levels, decay=decay, input_scale=input_scale,
                                v_th=v_th, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v, save_dtype=None)
    widths = widths.to(x.dtype)
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    steps = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        q = MultiLevelSurrogate.apply(u, widths[t], surrogate, levels, v_th, h)
        v = u - v_th * (q.detach() if detach_reset else q)
        steps.append(q)
    counts = torch.stack(steps)
    return (counts, v) if return_v else counts


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def ilif_fwd(x: Tensor, v0: Optional[Tensor], p: ILIFParams, return_v: bool, save_dtype: torch.dtype) -> NeuronOutputs:
    """x [T, N] contiguous -> q [T, N] (x.dtype), u [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    q, u, v_last = forward_outputs(x, return_v, save_dtype)
    launch_over_neurons(
        ilif_fwd_kernel, N, x.device,
        x, v0 if v0 is not None else x, q, u, v_last if return_v else u,
        N, T, p.levels, p.decay, p.input_scale, p.v_th,
        HAS_V0=v0 is not None, STORE_V_LAST=return_v,
    )
    return q, u, v_last


def ilif_bwd(grad_q: Tensor, u: Tensor, beta: Tensor, grad_v_last: Optional[Tensor], p: ILIFParams, *,
             need_grad_v0: bool) -> InputGrads:
    """beta [T, D] fp32 -> grad_x [T, N] (grad_q.dtype), grad_v0 [N] or [0] (fp32)."""
    T, N = grad_q.shape
    grad_x, grad_v0 = backward_outputs(grad_q, need_grad_v0)
    launch_over_neurons(
        ilif_bwd_kernel, N, u.device,
        grad_q, u, beta, grad_v_last if grad_v_last is not None else u, grad_x,
        grad_v0 if need_grad_v0 else u,
        N, T, p.levels, (T - 1) * N, p.decay, p.input_scale, p.v_th, p.h,
        SURROGATE=p.surrogate_id, DETACH_RESET=p.detach_reset, HAS_GRAD_V_LAST=grad_v_last is not None,
        STORE_GRAD_V0=need_grad_v0,
    )
    return grad_x, grad_v0


# ---------------------------------------------------------------------------------------------
# Eager backend: the same analytic forward/backward as the kernels, in PyTorch, on any device.
# ---------------------------------------------------------------------------------------------


def ilif_fwd_torch(x: Tensor, v0: Optional[Tensor], p: ILIFParams, return_v: bool,
                   save_dtype: torch.dtype) -> NeuronOutputs:
    """The forward in plain torch ops, written so that inductor fuses it (the inductor backend)."""
    dtype = math_dtype(x.dtype)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    us, counts = [], []
    for t in range(x.shape[0]):
        u = p.decay * v + p.input_scale * x[t].to(dtype)
        q = torch.round(torch.clamp(u / p.v_th, 0, p.levels))
        v = u - p.v_th * q
        us.append(u)
        counts.append(q)
    return torch.stack(counts).to(x.dtype), torch.stack(us).to(save_dtype), (v if return_v else v.new_empty(0))


def ilif_bwd_torch(grad_q: Tensor, u: Tensor, beta: Tensor, grad_v_last: Optional[Tensor], p: ILIFParams, *,
                   need_grad_v0: bool) -> InputGrads:
    """The backward in plain torch ops, written so that inductor fuses it (the inductor backend):
    LIF's soft-reset local gradient with f replaced by F."""
    dtype = math_dtype(grad_q.dtype)

    def delta_at(t: int, carry: Tensor) -> Tensor:
        u_t = u[t].to(dtype)
        F = level_surrogate_grad(u_t, beta[t].to(dtype), SURROGATES[p.surrogate_id], p.levels, p.v_th, p.h)
        return lif_local_grad(u_t, grad_q[t].to(dtype), carry, F, p.v_th, False, 0.0, p.detach_reset)

    delta, carry = backward_through_time(delta_at, grad_q, grad_v_last, p.decay)
    return (p.input_scale * delta).to(grad_q.dtype), (carry if need_grad_v0 else carry.new_empty(0))


# The inductor backend: the eager functions compiled into fused C++ loops (CPU) once per variant.
ILIF_FWD = {"triton": ilif_fwd, "torch": ilif_fwd_torch, "inductor": compiled_backend(ilif_fwd_torch)}
ILIF_BWD = {"triton": ilif_bwd, "torch": ilif_bwd_torch, "inductor": compiled_backend(ilif_bwd_torch)}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile).
# ---------------------------------------------------------------------------------------------


@torch.library.custom_op("a2sg_triton::ilif_fwd", mutates_args=())
def ilif_fwd_op(x: torch.Tensor, beta: torch.Tensor, v0: Optional[torch.Tensor], surrogate_id: int, levels: int,
                decay: float, input_scale: float, v_th: float, detach_reset: bool, h: float, return_v: bool,
                save_dtype: torch.dtype, backend: str, search_key: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> q [T, N], u [T, N] (the membrane before the reset, saved for backward), v_last [N] or [0].

    beta [T, D], surrogate_id, detach_reset and h are unused here; they are inputs so that backward
    gets them. search_key >= 0 names an armed A²SG search site: backward then searches beta first.
    """
    p = ILIFParams(surrogate_id, levels, decay, input_scale, v_th, detach_reset, h)
    return ILIF_FWD[backend](x, v0, p, return_v, save_dtype)


@ilif_fwd_op.register_fake
def _(x: Tensor, beta: Tensor, v0: Optional[Tensor], *constants_and_flags: Any) -> NeuronOutputs:
    return_v, save_dtype = constants_and_flags[-4:-2]
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::ilif_bwd", mutates_args=())
def ilif_bwd_op(grad_q: torch.Tensor, u: torch.Tensor, beta: torch.Tensor, grad_v_last: Optional[torch.Tensor],
                surrogate_id: int, levels: int, decay: float, input_scale: float, v_th: float, detach_reset: bool,
                h: float, need_grad_v0: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_q.dtype), grad_v0 [N] or [0] in the math dtype."""
    p = ILIFParams(surrogate_id, levels, decay, input_scale, v_th, detach_reset, h)
    return ILIF_BWD[backend](grad_q, u, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@ilif_bwd_op.register_fake
def ilif_bwd_fake(grad_q: Tensor, u: Tensor, beta: Tensor, grad_v_last: Optional[Tensor],
                  *constants_and_flags: Any) -> InputGrads:
    need_grad_v0 = constants_and_flags[len(ILIFParams._fields)]
    T, N = grad_q.shape
    grad_v0 = grad_q.new_empty((N if need_grad_v0 else 0,), dtype=math_dtype(grad_q.dtype))
    return torch.empty_like(grad_q), grad_v0


@torch.library.custom_op("a2sg_triton::ilif_bwd_search", mutates_args=(), **CUDAGRAPH_UNSAFE)
def ilif_bwd_search_op(grad_q: torch.Tensor, u: torch.Tensor, beta: torch.Tensor,
                       grad_v_last: Optional[torch.Tensor], surrogate_id: int, levels: int, decay: float,
                       input_scale: float, v_th: float, detach_reset: bool, h: float, need_grad_v0: bool, backend: str,
                       search_key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The I-LIF backward of an armed layer: its controller searches the [T, D] widths site by site
    (``A2SG.search_levels_backward``) and writes them into the layer; the plain I-LIF backward then
    runs with them (one extra fused pass per armed iteration, as for PLIF)."""
    site = search_site(search_key)
    p = ILIFParams(surrogate_id, levels, decay, input_scale, v_th, detach_reset, h)
    site.controller.search_levels_backward(site.name, grad_q, u, beta, grad_v_last, p, backend=backend)
    beta = site.layer.beta.to(device=beta.device, dtype=beta.dtype)
    return ILIF_BWD[backend](grad_q, u, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@ilif_bwd_search_op.register_fake
def _(*args: Any) -> InputGrads:
    return ilif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none


def _keep(tensors: Sequence[Optional[Tensor]], p: ILIFParams, u: Tensor) -> tuple:
    """Backward needs u and beta."""
    return u, tensors[1]


ILIF = Neuron(name="ilif", params=ILIFParams, n_weights=0, forward=ILIF_FWD, backward=ILIF_BWD, fwd_op=ilif_fwd_op,
              bwd_op=ilif_bwd_op, search_op=ilif_bwd_search_op, keep=_keep)


# ---------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------


def ilif_multistep(x: torch.Tensor, beta: Beta, surrogate: str = "box", *, levels: int = 4, decay: float = 0.25,
                   input_scale: float = 1.0, v_th: float = 1.0, detach_reset: bool = False, h: float = 0.5,
                   v0: Optional[torch.Tensor] = None, return_v: bool = False, backend: str = "auto",
                   save_dtype: Optional[torch.dtype] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Multistep I-LIF: u[t] = decay v[t-1] + input_scale x[t], the count q[t] = round(clip(u[t] / v_th,
    0, levels)) (half to even), the soft reset v[t] = u[t] - v_th q[t].

    The defaults are SpikingJelly's ``ILIFNode()`` (tau = 4/3: decay = 1 - 1/tau = 0.25, input_scale
    = 1, levels = 4).

    Args:
        x: input currents [T, *].
        beta: the surrogate width of every level's window: a float, a tensor [D] (per level) or [T, D]
            (per timestep and level); box with beta = v_th / 2 is SpikingJelly's rectangular
            straight-through estimator. Never read on the host, never learnable.
        surrogate, detach_reset, h, v0, return_v, backend: as ``lif_multistep``.
        levels: D, the largest count.
        decay, input_scale, v_th: the neuron's constants.
        save_dtype: dtype of the one tensor saved for backward, u (None = fp32; torch.bfloat16 halves it).

    Returns:
        counts [T, *] in x.dtype, or (counts, v_T [*]) with ``return_v`` (v_T in fp32, float64 for
        float64 x); gradients reach x and v0.
    """
    widths, p = check_ilif_args(x, beta, surrogate=surrogate, levels=levels, decay=decay, input_scale=input_scale,
                                v_th=v_th, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v,
                                save_dtype=save_dtype)
    return apply_neuron(ILIF, x, (), widths, v0, p, return_v=return_v, save_dtype=save_dtype,
                        backend=resolve_backend(backend, x))


def ilif_membrane(x: torch.Tensor, *, levels: int = 4, decay: float = 0.25, input_scale: float = 1.0,
                  v_th: float = 1.0, v0: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
    """u [T, *], the membrane before the reset, for input currents x [T, *], computed by
    ``ilif_multistep``'s own forward (same backend and kernel, no autograd): its counts are exactly
    ``round(clip(u / v_th, 0, levels))``. fp32 (float64 for float64 x). For analysis, as
    ``lif_membrane`` (which returns u - v_th: I-LIF has D thresholds, so u itself)."""
    _, p = check_ilif_args(x, 0.5, surrogate="box", levels=levels, decay=decay, input_scale=input_scale, v_th=v_th,
                           detach_reset=False, h=0.5, v0=v0, return_v=False, save_dtype=None)
    return neuron_membrane(ILIF, x, (), v0, p, resolve_backend(backend, x))
