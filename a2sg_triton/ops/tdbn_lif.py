"""tdBN followed by LIF with u - v_th recomputed in backward instead of saved (docs/memory.md).

A conv -> tdBN -> LIF block normally keeps, per element, the conv output (for tdBN's backward) and
d = u - v_th (for the LIF's). Here the LIF keeps only what it cannot cheaply recompute: the conv
output y and tdBN's per-channel statistics. Backward recomputes tdBN's output z and the LIF
recurrence with the forward's own arithmetic, so d is bit-identical to the forward's: the LIF
backward and the A²SG search see exactly the d that the forward computed.

Side by side: the readable reference (``tdbn_lif_ref``: ``F.batch_norm``, then the LIF reference,
autograd throughout), tdBN's statistics and explicit normalisation (``tdbn_output_torch``, the
Triton launcher ``tdbn_output_triton``), its backward (ATen's), the recompute launcher
``tdbn_lif_bwd`` (one Triton pass: tdBN, the LIF forward and the LIF backward), the recipes that
say how to recompute a LIF's input, ``RecomputedLIF`` and the public ``lif_recomputed``.
``a2sg_triton.memory`` decides when a layer takes this path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ._neuron import dense_order, from_flat, launch_over_neurons, run_backward, to_flat
from .lif import LIF, LIF_FWD, LIFParams, lif_multistep_ref
from .backend import HAS_TRITON, math_dtype, resolve_backend

if HAS_TRITON:
    import triton

    from ..kernels.tdbn_lif import tdbn_fwd_kernel, tdbn_lif_bwd_kernel

NORM_BLOCK = 1024


def tdbn_lif_ref(y: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], T: int,
                 beta: Union[float, torch.Tensor], surrogate: str = "box", *, eps: float = 1e-5,
                 **neuron: Any) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Readable reference: tdBN in training mode (``F.batch_norm`` on y [T*B, C, ...]) then the LIF
    reference on [T, B, C, ...]; autograd gives every gradient.

    Args:
        y: the conv output [T*B, C, ...].
        weight: tdBN's scale [C] (None: 1).
        bias: tdBN's shift [C] (None: 0).
        T: timesteps.
        beta: the surrogate width, a float or [T].
        surrogate: one of SURROGATES.
        eps: tdBN's epsilon.
        **neuron: the LIF's other options (``lif_multistep_ref``'s keyword arguments).

    Returns:
        ``lif_multistep_ref``'s: the spikes [T, B, C, ...] (and v_T with ``return_v=True``).
    """
    z = F.batch_norm(y, None, None, weight, bias, True, 0.0, eps)
    return lif_multistep_ref(z.unflatten(0, (T, -1)), beta, surrogate, **neuron)


# ---------------------------------------------------------------------------------------------
# tdBN: statistics, the explicit normalisation (torch and Triton), backward.
# ---------------------------------------------------------------------------------------------


def tdbn_statistics(bn: _BatchNorm, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mean and invstd of y [N, C, ...] per channel for the BatchNorm module ``bn`` in training
    mode. Updates its running statistics and ``num_batches_tracked`` exactly as BatchNorm's own
    training forward does: ``torch.batch_norm_update_stats`` is the kernel that forward runs.

    Args:
        bn: the BatchNorm module (its momentum, eps and running statistics).
        y: its input [N, C, ...].

    Returns:
        (mean [C], invstd [C]) in the math dtype of y.

    Raises:
        ValueError: one value per channel (no batch statistics).
    """
    if y.numel() // y.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {y.size()}")
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    with torch.no_grad():
        mean, var = torch.batch_norm_update_stats(y, *running, factor)
        dtype = math_dtype(y.dtype)
        return mean.to(dtype), 1 / torch.sqrt(var.to(dtype) + bn.eps)


def _channel_view(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """v [C] viewed as [1, C, 1, ...] to broadcast against y [N, C, ...]."""
    return v.view(1, -1, *([1] * (y.dim() - 2)))


def tdbn_output_torch(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """z = (y - mean) * scale + bias per channel (scale = weight * invstd), in y's dtype.

    Args:
        y: [N, C, ...].
        mean, scale, bias: [C].

    Returns:
        z, y's shape and dtype.
    """
    z = y - _channel_view(mean, y)
    z.mul_(_channel_view(scale, y))
    z.add_(_channel_view(bias, y))
    return z.to(y.dtype)


def _kernel_channels(*vectors: torch.Tensor) -> list[torch.Tensor]:
    """Per-channel vectors as the kernels read them: fp32, contiguous."""
    return [v.to(torch.float32).contiguous() for v in vectors]


def tdbn_output_triton(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same formula in ``tdbn_fwd_kernel``, over y in memory order (contiguous or channels_last).

    Args: as ``tdbn_output_torch``'s.

    Returns:
        z, y's shape and dtype (y's memory format when contiguous or channels_last).
    """
    if not (y.is_contiguous() or y.is_contiguous(memory_format=torch.channels_last)):
        y = y.contiguous()
    z = torch.empty_like(y)
    if y.numel() > 0:
        tdbn_fwd_kernel[(triton.cdiv(y.numel(), NORM_BLOCK),)](y, *_kernel_channels(mean, scale, bias), z, y.numel(),
                                                             y.shape[1], y.stride(1), BLOCK=NORM_BLOCK)
    return z


TDBN_OUTPUT: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "triton": tdbn_output_triton, "torch": tdbn_output_torch}


def tdbn_backend(backend: str, y: torch.Tensor) -> str:
    """'triton' or 'torch': how tdBN normalises y for a layer whose LIF runs ``backend``.

    Args:
        backend: one of BACKENDS.
        y: tdBN's input (its device and dtype decide).

    Returns:
        "triton" or "torch".
    """
    return "triton" if resolve_backend(backend, y) == "triton" else "torch"


def tdbn_backward(grad_z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                  invstd: torch.Tensor, eps: float, needs: Sequence[bool]) -> tuple[Optional[torch.Tensor], ...]:
    """(dL/dy, dL/dweight, dL/dbias) from dL/dz: ATen's batch-norm backward, the one autograd runs
    after BatchNorm's training forward, given this forward's statistics. ``needs``: which to compute.

    Args:
        grad_z: dL/dz [N, C, ...].
        y: tdBN's input [N, C, ...].
        weight: tdBN's scale [C].
        mean, invstd: this forward's batch statistics [C].
        eps: tdBN's epsilon.
        needs: three flags: whether dL/dy, dL/dweight, dL/dbias are needed.

    Returns:
        (dL/dy [N, C, ...], dL/dweight [C], dL/dbias [C]), each None where not needed.
    """
    return torch.ops.aten.native_batch_norm_backward(grad_z, y, weight, None, None, mean, invstd, True, eps,
                                                     list(needs))


class TdBNFunction(torch.autograd.Function):
    """z = tdBN(y) by the explicit formula, so that ``RecomputedLIF`` can recompute it bit for bit;
    backward is ATen's. This is z's own graph, used when something besides a recomputing LIF reads z."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                mean: torch.Tensor, invstd: torch.Tensor, scale: torch.Tensor, eps: float,
                backend: str) -> torch.Tensor:
        """z [N, C, ...] = (y - mean) * scale + bias per channel, by ``TDBN_OUTPUT[backend]``."""
        ctx.save_for_backward(y, weight, mean, invstd)
        ctx.eps = eps
        return TDBN_OUTPUT[backend](y, mean, scale, bias)

    @staticmethod
    def backward(ctx: Any, grad_z: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        """(dL/dy, dL/dweight, dL/dbias) by ATen's batch-norm backward; None for the rest."""
        y, weight, mean, invstd = ctx.saved_tensors
        return (*tdbn_backward(grad_z, y, weight, mean, invstd, ctx.eps, ctx.needs_input_grad[:3]), *([None] * 5))


# ---------------------------------------------------------------------------------------------
# Recipes: how to recompute a LIF layer's input from saved tensors, and backpropagate through it.
# ---------------------------------------------------------------------------------------------


class TdBNRecipe:
    """z = tdBN(y) of one forward, from the tensors (y, weight, bias, mean, invstd, scale)."""

    n_tensors = 6

    def __init__(self, eps: float, backend: str) -> None:
        self.eps, self.backend = eps, backend

    def recompute(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """z [N, C, ...] from (y, weight, bias, mean, invstd, scale)."""
        y, _, bias, mean, _, scale = tensors
        return TDBN_OUTPUT[self.backend](y, mean, scale, bias)

    def backward(self, grad: torch.Tensor, tensors: Sequence[torch.Tensor],
                 needs: Sequence[bool]) -> tuple[Optional[torch.Tensor], ...]:
        """The six tensors' gradients from dL/dz (None for mean, invstd and scale)."""
        y, weight, _, mean, invstd, _ = tensors
        return (*tdbn_backward(grad, y, weight, mean, invstd, self.eps, needs[:3]), None, None, None)


class UnflattenRecipe:
    """The inner recipe's tensor with dim 0 split into ``sizes``: [T*B, ...] -> [T, B, ...]."""

    n_tensors: int

    def __init__(self, inner: Recipe, sizes: Sequence[int]) -> None:
        self.inner, self.sizes, self.n_tensors = inner, tuple(sizes), inner.n_tensors

    def recompute(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inner recipe's tensor [T*B, ...] as [T, B, ...]."""
        return self.inner.recompute(tensors).unflatten(0, self.sizes)

    def backward(self, grad: torch.Tensor, tensors: Sequence[torch.Tensor],
                 needs: Sequence[bool]) -> tuple[Optional[torch.Tensor], ...]:
        """The inner recipe's gradients from grad [T, B, ...]."""
        return self.inner.backward(grad.flatten(0, 1), tensors, needs)


class SumRecipe:
    """a + b: a is a recipe's tensor; b another recipe's, or (b is None) one saved tensor of its own."""

    n_tensors: int

    def __init__(self, a: Recipe, b: Optional[Recipe]) -> None:
        self.a, self.b = a, b
        self.n_tensors = a.n_tensors + (1 if b is None else b.n_tensors)

    def recompute(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """a + b from a's tensors, then b's (or b itself)."""
        n = self.a.n_tensors
        other = tensors[n] if self.b is None else self.b.recompute(tensors[n:])
        return self.a.recompute(tensors[:n]) + other

    def backward(self, grad: torch.Tensor, tensors: Sequence[torch.Tensor],
                 needs: Sequence[bool]) -> tuple[Optional[torch.Tensor], ...]:
        """a's tensors' gradients, then b's (grad itself for a saved b)."""
        n = self.a.n_tensors
        grads_b: tuple[Optional[torch.Tensor], ...]
        if self.b is None:
            grads_b = (grad if needs[n] else None,)
        else:
            grads_b = self.b.backward(grad, tensors[n:], needs[n:])
        return (*self.a.backward(grad, tensors[:n], needs[:n]), *grads_b)


# How a LIF input is recomputed in backward from the tensors kept with it.
Recipe = Union[TdBNRecipe, UnflattenRecipe, SumRecipe]


def _fused_tdbn(recipe: Recipe) -> Union[tuple[TdBNRecipe, int], tuple[None, None]]:
    """(TdBNRecipe, channel dim of the LIF input) when one Triton pass can recompute and backpropagate."""
    if isinstance(recipe, UnflattenRecipe) and isinstance(recipe.inner, TdBNRecipe):
        return recipe.inner, 2
    if isinstance(recipe, TdBNRecipe):
        return recipe, 1
    return None, None


# ---------------------------------------------------------------------------------------------
# The recompute launcher and the LIF op that uses it.
# ---------------------------------------------------------------------------------------------


def tdbn_lif_bwd(y: torch.Tensor, channels: Sequence[torch.Tensor], grad_spikes: torch.Tensor, beta: torch.Tensor,
                 p: LIFParams, *, channel_div: int, save_dtype: torch.dtype,
                 backward: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """y [T, N] in the LIF's neuron order, channels = (mean, scale, bias) [C] -> d [T, N] (save_dtype),
    and with ``backward`` also grad_x [T, N] (grad_spikes' dtype) of the LIF backward on it (else
    None). Neuron n's channel is (n // channel_div) % C.

    Args:
        y: the conv output [T, N], in the LIF's neuron order.
        channels: (mean, scale, bias), each [C].
        grad_spikes: dL/ds [T, N].
        beta: the widths [T].
        p: the LIF's constants.
        channel_div: neurons per channel run (n // channel_div) % C.
        save_dtype: d's dtype.
        backward: also run the LIF backward.

    Returns:
        (d [T, N], grad_x [T, N] or None).
    """
    T, N = y.shape
    d = torch.empty((T, N), dtype=save_dtype, device=y.device)
    grad_x = torch.empty_like(grad_spikes) if backward else None
    # the recompute alone reads neither the surrogate nor detach_reset: one variant per reset
    surrogate_id, detach_reset = (p.surrogate_id, p.detach_reset) if backward else (0, False)
    launch_over_neurons(
        tdbn_lif_bwd_kernel, N, y.device,
        y, *_kernel_channels(*channels), grad_spikes if backward else y, beta, d,
        grad_x if backward else d, N, T, channels[0].numel(), channel_div, (T - 1) * N, p.decay, p.input_scale,
        p.v_th, p.v_reset, p.h,
        SURROGATE=surrogate_id, HARD_RESET=p.hard_reset, DETACH_RESET=detach_reset, BACKWARD=backward,
    )
    return d, grad_x


class RecomputePlan(NamedTuple):
    """How ``RecomputedLIF`` runs: x's layout, the LIF's constants and the op's options."""

    order: tuple[int, ...]
    x_shape: tuple[int, ...]
    params: LIFParams
    save_dtype: torch.dtype
    backend: str
    search_key: int
    fused: bool  # tdBN, the LIF forward and its backward in one Triton pass (tdbn_lif_bwd)


N_FIXED = 4  # RecomputedLIF.forward's arguments before the recipe's tensors


class RecomputedLIF(torch.autograd.Function):
    """The LIF forward on x_flat; backward recomputes x from the recipe's tensors, then d, then runs
    the LIF backward (or the armed A²SG search) and the recipe's backward. Keeps no [T, N] d."""

    @staticmethod
    def forward(ctx: Any, x_flat: torch.Tensor, beta: torch.Tensor, recipe: Recipe,
                plan: RecomputePlan, *tensors: torch.Tensor) -> torch.Tensor:
        """The spikes [T, N] of the LIF on x_flat [T, N]; keeps beta and the recipe's tensors."""
        spikes, _, _ = LIF_FWD[plan.backend](x_flat, None, plan.params, False, plan.save_dtype)
        ctx.save_for_backward(beta, *tensors)
        ctx.recipe, ctx.plan = recipe, plan
        return spikes

    @staticmethod
    def backward(ctx: Any, grad_spikes: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:
        """None for the fixed arguments, then the recipe's tensors' gradients."""
        beta, *tensors = ctx.saved_tensors
        grad_spikes = grad_spikes.contiguous()
        plan = ctx.plan
        grad_x = None
        if plan.fused:
            _, channel_dim = _fused_tdbn(ctx.recipe)
            y, _, bias, mean, _, scale = tensors
            y_flat = to_flat(y.unflatten(0, plan.x_shape[:2]) if channel_dim == 2 else y, plan.order)
            position = plan.order.index(channel_dim)
            channel_div = math.prod(plan.x_shape[dim] for dim in plan.order[position + 1:])
            d, grad_x = tdbn_lif_bwd(y_flat, (mean, scale, bias), grad_spikes, beta, plan.params,
                                     channel_div=channel_div, save_dtype=plan.save_dtype,
                                     backward=plan.search_key < 0)
        else:
            x_flat = to_flat(ctx.recipe.recompute(tensors), plan.order)
            _, d, _ = LIF_FWD[plan.backend](x_flat, None, plan.params, False, plan.save_dtype)
        if grad_x is None:
            grad_x, _ = run_backward(LIF, (grad_spikes, d, beta, None), plan.params, need_grad_v0=False,
                                     backend=plan.backend, search_key=plan.search_key, eager=True)
        del d
        grads = ctx.recipe.backward(from_flat(grad_x, plan.x_shape, plan.order), tensors,
                                    ctx.needs_input_grad[N_FIXED:])
        return (*([None] * N_FIXED), *grads)


def lif_recomputed(x: torch.Tensor, recipe: Recipe, tensors: Sequence[torch.Tensor], beta: torch.Tensor,
                   p: LIFParams, *, backend: str, save_dtype: Optional[torch.dtype] = None,
                   search_key: int = -1) -> torch.Tensor:
    """The LIF op (no v0, no v_T) on checked arguments (``check_lif_args``) for an x that ``recipe``
    recomputes from ``tensors``, which backward keeps instead of u - v_th; gradients flow to
    ``tensors``. ``backend`` is resolved ("auto" is not); ``search_key`` >= 0 arms the layer's search.

    ``recipe.recompute(tensors)`` must give x bit for bit (the recipes here use the forward's own
    functions). ``save_dtype`` is the dtype d takes in backward, as the plain op would have saved it.

    Args:
        x: the LIF input [T, ...].
        recipe: how x is recomputed from ``tensors``.
        tensors: what the recipe recomputes x from (kept for backward).
        beta: the widths [T].
        p: the LIF's constants.
        backend: the resolved backend.
        save_dtype: d's dtype in backward (None: the math dtype of x).
        search_key: >= 0 arms the layer's search.

    Returns:
        The spikes, x's shape and dtype.
    """
    order = dense_order(x)
    tdbn, _ = _fused_tdbn(recipe)
    fused = tdbn is not None and tdbn.backend == "triton" and backend == "triton"
    plan = RecomputePlan(order, tuple(x.shape), p, save_dtype or math_dtype(x.dtype), backend, search_key, fused)
    spikes = RecomputedLIF.apply(to_flat(x.detach(), order), beta, recipe, plan, *tensors)
    return from_flat(spikes, x.shape, order)
