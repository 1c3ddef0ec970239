"""Multistep PLIF neuron: LIF with a learnable leak k = sigmoid(w) (docs/math.md, "PLIF").

Side by side, as for LIF (``a2sg_triton.ops.lif``): the readable reference (``plif_multistep_ref``),
the Triton launchers (``plif_fwd`` / ``plif_bwd`` around ``plif_fwd_kernel`` /
``plif_bwd_kernel``), the eager backend (``plif_fwd_torch`` / ``plif_bwd_torch``) and its inductor
compilation, the torch.library ops (``a2sg_triton::plif_fwd``, ``plif_bwd``, ``plif_bwd_search``),
the ``PLIF`` neuron that the shared skeleton drives, and the public ``plif_multistep``.

The recurrence is LIF's with decay = 1 - k and input_scale = k (decay_input) or 1, so every step
formula is LIF's. w is read on the device (k never reaches the host). Backward saves d = u - v_th,
x (decay_input only), v0 and w; it recomputes v[t-1] from d[t-1] for dL/dk, which the Triton
kernel reduces in two fixed-order stages (per-program partial sums, then one sum).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Union, cast

import torch
from torch import Tensor

from ._neuron import (Neuron, NeuronOutputs, apply_neuron, backward_outputs, backward_through_time,
                      compiled_backend, forward_outputs, launch_config, launch_over_neurons, neuron_membrane)
from .backend import HAS_TRITON, math_dtype, resolve_backend
from .checks import check_flag, check_tensor
from .lif import (Beta, HeavisideSurrogate, LIFParams, after_reset, check_lif_args, lif_bwd_step, lif_step)
from .search_sites import CUDAGRAPH_UNSAFE, search_site

if HAS_TRITON:
    import triton

    from ..kernels.plif import plif_bwd_kernel, plif_fwd_kernel


class PLIFParams(NamedTuple):
    """The PLIF neuron's constants, in the ops' order (the leak is the tensor w)."""

    surrogate_id: int
    decay_input: bool
    v_th: float
    hard_reset: bool
    v_reset: float
    detach_reset: bool
    h: float


def check_plif_args(x: torch.Tensor, w: torch.Tensor, beta: Beta, *, surrogate: str, decay_input: bool, v_th: float,
                    reset: str, v_reset: float, detach_reset: bool, h: float, v0: Optional[torch.Tensor],
                    return_v: bool, save_dtype: Optional[torch.dtype]) -> tuple[torch.Tensor, PLIFParams]:
    """Validates everything before any kernel runs; returns (beta [T] in the math dtype, the constants)."""
    beta, p = check_lif_args(x, beta, surrogate=surrogate, decay=0.5, input_scale=0.5, v_th=v_th, reset=reset,
                             v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v,
                             save_dtype=save_dtype)
    check_tensor("w", w, device=x.device)
    if w.dim() != 0:
        raise ValueError(f"w must be a 0-d tensor (one leak per layer), got shape {list(w.shape)}")
    check_flag("decay_input", decay_input)
    return beta, PLIFParams(p.surrogate_id, decay_input, p.v_th, p.hard_reset, p.v_reset, p.detach_reset, p.h)


def plif_leak(w: torch.Tensor, dtype: torch.dtype, decay_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(decay = 1 - k, input_scale = k or 1) as 0-d tensors of ``dtype`` on w's device, k = sigmoid(w)."""
    k = torch.sigmoid(w.to(dtype))
    return 1 - k, k if decay_input else torch.ones_like(k)


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through k = sigmoid(w) and the Heaviside step.
# ---------------------------------------------------------------------------------------------


def plif_multistep_ref(x: torch.Tensor, w: torch.Tensor, beta: Beta, surrogate: str = "box", *,
                       decay_input: bool = True, v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0,
                       detach_reset: bool = False, h: float = 0.5, v0: Optional[torch.Tensor] = None,
                       return_v: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Readable reference of ``plif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype (use float64 to compare against the kernels);
    gradients reach w through autograd."""
    widths, p = check_plif_args(x, w, beta, surrogate=surrogate, decay_input=decay_input, v_th=v_th, reset=reset,
                                v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v,
                                save_dtype=None)
    widths = widths.to(x.dtype)
    k = torch.sigmoid(w.to(x.dtype))
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    steps = []
    for t in range(x.shape[0]):
        u = (1 - k) * v + (k * x[t] if decay_input else x[t])
        s = HeavisideSurrogate.apply(u, widths[t], surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u + s_reset * v_reset if p.hard_reset else u - v_th * s_reset
        steps.append(s)
    spikes = torch.stack(steps)
    return (spikes, v) if return_v else spikes


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def plif_fwd(x: Tensor, w: Tensor, v0: Optional[Tensor], p: PLIFParams, return_v: bool,
             save_dtype: torch.dtype) -> NeuronOutputs:
    """x [T, N] contiguous, w [] -> spikes [T, N] (x.dtype), d [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    spikes, d, v_last = forward_outputs(x, return_v, save_dtype)
    launch_over_neurons(
        plif_fwd_kernel, N, x.device,
        x, w, v0 if v0 is not None else x, spikes, d, v_last if return_v else d,
        N, T, p.v_th, p.v_reset,
        DECAY_INPUT=p.decay_input, HAS_V0=v0 is not None, HARD_RESET=p.hard_reset, STORE_V_LAST=return_v,
    )
    return spikes, d, v_last


def plif_bwd(grad_spikes: Tensor, d: Tensor, x: Optional[Tensor], w: Tensor, v0: Optional[Tensor], beta: Tensor,
             grad_v_last: Optional[Tensor], p: PLIFParams, *, need_grad_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] (fp32), grad_k = dL/dk [] (fp32).

    dL/dk in two fixed-order stages: each program's sum over its neurons and steps, then one sum of
    the [programs] partials, so the result does not depend on scheduling."""
    T, N = grad_spikes.shape
    grad_x, grad_v0 = backward_outputs(grad_spikes, need_grad_v0)
    if N == 0:
        return grad_x, grad_v0, torch.zeros((), dtype=torch.float32, device=d.device)
    block, warps = launch_config(N, d.device)
    programs = triton.cdiv(N, block)
    grad_k_partial = torch.empty((programs,), dtype=torch.float32, device=d.device)
    plif_bwd_kernel[(programs,)](
        grad_spikes, d, x if p.decay_input else d, w, v0 if v0 is not None else d, beta,
        grad_v_last if grad_v_last is not None else d, grad_x, grad_v0 if need_grad_v0 else d, grad_k_partial,
        N, T, (T - 1) * N, p.v_th, p.v_reset, p.h,
        SURROGATE=p.surrogate_id, HARD_RESET=p.hard_reset, DETACH_RESET=p.detach_reset, DECAY_INPUT=p.decay_input,
        HAS_V0=v0 is not None, HAS_GRAD_V_LAST=grad_v_last is not None, STORE_GRAD_V0=need_grad_v0,
        BLOCK=block, num_warps=warps,
    )
    return grad_x, grad_v0, grad_k_partial.sum()


# ---------------------------------------------------------------------------------------------
# Eager backend: LIF's step formulas with decay = 1 - k, input_scale = k (or 1), in PyTorch.
# ---------------------------------------------------------------------------------------------


def plif_fwd_torch(x: Tensor, w: Tensor, v0: Optional[Tensor], p: PLIFParams, return_v: bool,
                   save_dtype: torch.dtype) -> NeuronOutputs:
    """The forward in plain torch ops, written so that inductor fuses it (the inductor backend)."""
    dtype = math_dtype(x.dtype)
    decay, input_scale = plif_leak(w, dtype, p.decay_input)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    steps = []
    for t in range(x.shape[0]):
        d_t, v = lif_step(v, x[t].to(dtype), decay, input_scale, p.v_th, p.hard_reset, p.v_reset)
        steps.append(d_t)
    d = torch.stack(steps)
    return (d >= 0).to(x.dtype), d.to(save_dtype), (v if return_v else v.new_empty(0))


def plif_bwd_torch(grad_spikes: Tensor, d: Tensor, x: Optional[Tensor], w: Tensor, v0: Optional[Tensor], beta: Tensor,
                   grad_v_last: Optional[Tensor], p: PLIFParams, *,
                   need_grad_v0: bool) -> tuple[Tensor, Tensor, Tensor]:
    """The backward in plain torch ops, written so that inductor fuses it (the inductor backend)."""
    dtype = math_dtype(grad_spikes.dtype)
    decay, input_scale = plif_leak(w, dtype, p.decay_input)

    def delta_at(t: int, carry: Tensor) -> Tensor:
        return lif_bwd_step(d[t].to(dtype), grad_spikes[t].to(dtype), carry, beta[t].to(dtype), p)

    delta, carry = backward_through_time(delta_at, grad_spikes, grad_v_last, decay)
    # v[t-1] for every t: v0, then the reset of each step t-1 recomputed from its d
    d_prev = d[:-1].to(dtype)
    v_first = torch.zeros_like(carry) if v0 is None else v0.to(dtype)
    v_prev = torch.cat([v_first[None], after_reset(d_prev + p.v_th, d_prev, p.v_th, p.hard_reset, p.v_reset)])
    grad_k = (delta * (cast(Tensor, x).to(dtype) - v_prev)).sum() if p.decay_input else -(delta * v_prev).sum()
    grad_x = (input_scale * delta).to(grad_spikes.dtype)
    return grad_x, (carry if need_grad_v0 else carry.new_empty(0)), grad_k


# The inductor backend: the eager functions compiled into fused C++ loops (CPU) once per variant.
PLIF_FWD = {"triton": plif_fwd, "torch": plif_fwd_torch, "inductor": compiled_backend(plif_fwd_torch)}
PLIF_BWD = {"triton": plif_bwd, "torch": plif_bwd_torch, "inductor": compiled_backend(plif_bwd_torch)}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile).
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
    p = PLIFParams(surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h)
    return PLIF_FWD[backend](x, w, v0, p, return_v, save_dtype)


@plif_fwd_op.register_fake
def _(x: Tensor, w: Tensor, beta: Tensor, v0: Optional[Tensor], *constants_and_flags: Any) -> NeuronOutputs:
    return_v, save_dtype = constants_and_flags[-4:-2]
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::plif_bwd", mutates_args=())
def plif_bwd_op(grad_spikes: torch.Tensor, d: torch.Tensor, x: Optional[torch.Tensor], w: torch.Tensor,
                v0: Optional[torch.Tensor], beta: torch.Tensor, grad_v_last: Optional[torch.Tensor], surrogate_id: int,
                decay_input: bool, v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                need_grad_v0: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] and grad_k = dL/dk [] in the math dtype."""
    p = PLIFParams(surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h)
    return PLIF_BWD[backend](grad_spikes, d, x, w, v0, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@plif_bwd_op.register_fake
def plif_bwd_fake(grad_spikes: Tensor, d: Tensor, x: Optional[Tensor], w: Tensor, v0: Optional[Tensor], beta: Tensor,
                  grad_v_last: Optional[Tensor], *constants_and_flags: Any) -> tuple[Tensor, Tensor, Tensor]:
    need_grad_v0 = constants_and_flags[len(PLIFParams._fields)]
    T, N = grad_spikes.shape
    dtype = math_dtype(grad_spikes.dtype)
    grad_v0 = grad_spikes.new_empty((N if need_grad_v0 else 0,), dtype=dtype)
    return torch.empty_like(grad_spikes), grad_v0, grad_spikes.new_empty((), dtype=dtype)


@torch.library.custom_op("a2sg_triton::plif_bwd_search", mutates_args=(), **CUDAGRAPH_UNSAFE)
def plif_bwd_search_op(grad_spikes: torch.Tensor, d: torch.Tensor, x: Optional[torch.Tensor], w: torch.Tensor,
                       v0: Optional[torch.Tensor], beta: torch.Tensor, grad_v_last: Optional[torch.Tensor],
                       surrogate_id: int, decay_input: bool, v_th: float, hard_reset: bool, v_reset: float,
                       detach_reset: bool, h: float, need_grad_v0: bool, backend: str, search_key: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PLIF backward of an armed layer. The search is LIF's with the current leak, decay = 1 - k
    on the device (the carry between steps; δ itself does not depend on the input scale), and writes
    the chosen widths into the layer; the plain PLIF backward then runs with them, which also gives
    dL/dk (the search's own input gradients are not kept: one extra fused pass per armed iteration)."""
    site = search_site(search_key)
    p = PLIFParams(surrogate_id, decay_input, v_th, hard_reset, v_reset, detach_reset, h)
    decay, _ = plif_leak(w, math_dtype(grad_spikes.dtype), decay_input)
    as_lif = LIFParams(surrogate_id, decay, 1.0, v_th, hard_reset, v_reset, detach_reset, h)
    site.controller.search_backward(site.name, grad_spikes, d, beta, grad_v_last, as_lif, need_grad_v0=False,
                                    backend=backend)
    beta = site.layer.beta.to(device=beta.device, dtype=beta.dtype)
    return PLIF_BWD[backend](grad_spikes, d, x, w, v0, beta, grad_v_last, p, need_grad_v0=need_grad_v0)


@plif_bwd_search_op.register_fake
def _(*args: Any) -> tuple[Tensor, Tensor, Tensor]:
    return plif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none


def _keep(tensors: Sequence[Optional[Tensor]], p: PLIFParams, d: Tensor) -> tuple:
    """Backward needs d, x (only for dL/dk with decay_input), w, v0 (for v[-1]) and beta."""
    x, w, beta, v0 = tensors
    return d, x if p.decay_input else None, w, v0, beta


def _weight_grads(kept: Sequence[Optional[Tensor]], sums: Sequence[Tensor], needs: Sequence[bool]) -> tuple:
    """dL/dw = dL/dk k (1 - k), on the device."""
    if not needs[0]:
        return (None,)
    w, (grad_k,) = cast(Tensor, kept[2]), sums
    k = torch.sigmoid(w.to(grad_k.dtype))
    return ((grad_k * k * (1 - k)).to(w.dtype),)


PLIF = Neuron(name="plif", params=PLIFParams, n_weights=1, forward=PLIF_FWD, backward=PLIF_BWD, fwd_op=plif_fwd_op,
              bwd_op=plif_bwd_op, search_op=plif_bwd_search_op, keep=_keep, weight_grads=_weight_grads)


# ---------------------------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------------------------


def plif_multistep(x: torch.Tensor, w: torch.Tensor, beta: Beta, surrogate: str = "box", *, decay_input: bool = True,
                   v_th: float = 1.0, reset: str = "soft", v_reset: float = 0.0, detach_reset: bool = False,
                   h: float = 0.5, v0: Optional[torch.Tensor] = None, return_v: bool = False, backend: str = "auto",
                   save_dtype: Optional[torch.dtype] = None) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Multistep PLIF with the leak k = sigmoid(w): u[t] = (1 - k) v[t-1] + k x[t] (``decay_input``) or
    (1 - k) v[t-1] + x[t]; spikes, resets and surrogates as ``lif_multistep``.

    Args:
        x: input currents [T, *].
        w: the leak parameter, a 0-d tensor (it may require grad); read on the device only.
        beta: the surrogate width, a float or a tensor [T].
        surrogate, v_th, reset, v_reset, detach_reset, h, v0, return_v, backend, save_dtype: as
            ``lif_multistep``.
        decay_input: scale the input by k (SpikingJelly's ParametricLIFNode) or not.

    Returns:
        spikes [T, *] in x.dtype, or (spikes, v_T [*]) with ``return_v``; gradients reach x, w and v0.
    """
    widths, p = check_plif_args(x, w, beta, surrogate=surrogate, decay_input=decay_input, v_th=v_th, reset=reset,
                                v_reset=v_reset, detach_reset=detach_reset, h=h, v0=v0, return_v=return_v,
                                save_dtype=save_dtype)
    return apply_neuron(PLIF, x, (w,), widths, v0, p, return_v=return_v, save_dtype=save_dtype,
                        backend=resolve_backend(backend, x))


def plif_membrane(x: torch.Tensor, w: torch.Tensor, *, decay_input: bool = True, v_th: float = 1.0,
                  reset: str = "soft", v_reset: float = 0.0, v0: Optional[torch.Tensor] = None,
                  backend: str = "auto") -> torch.Tensor:
    """d = u - v_th [T, *] for input currents x [T, *] and the leak parameter w, computed by
    ``plif_multistep``'s own forward (same backend and kernel, no autograd): its spikes are exactly
    ``d >= 0``. fp32 (float64 for float64 x). For analysis, as ``lif_membrane``."""
    _, p = check_plif_args(x, w, 1.0, surrogate="box", decay_input=decay_input, v_th=v_th, reset=reset,
                           v_reset=v_reset, detach_reset=False, h=0.5, v0=v0, return_v=False, save_dtype=None)
    return neuron_membrane(PLIF, x, (w,), v0, p, resolve_backend(backend, x))
