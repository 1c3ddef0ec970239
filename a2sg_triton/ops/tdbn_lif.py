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

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._neuron import dense_order, from_flat, launch_config, run_backward, to_flat
from .lif import LIF, LIF_FWD, LIFParams, lif_multistep_ref
from .backend import HAS_TRITON, math_dtype, resolve_backend

if HAS_TRITON:
    import triton

    from ..kernels.tdbn_lif import tdbn_fwd_kernel, tdbn_lif_bwd_kernel

NORM_BLOCK = 1024


def tdbn_lif_ref(y, weight, bias, T, beta, surrogate="box", *, eps=1e-5, **neuron):
    """Readable reference: tdBN in training mode (``F.batch_norm`` on y [T*B, C, ...]) then the LIF
    reference on [T, B, C, ...]; autograd gives every gradient."""
    z = F.batch_norm(y, None, None, weight, bias, True, 0.0, eps)
    return lif_multistep_ref(z.unflatten(0, (T, -1)), beta, surrogate, **neuron)


# ---------------------------------------------------------------------------------------------
# tdBN: statistics, the explicit normalisation (torch and Triton), backward.
# ---------------------------------------------------------------------------------------------


def tdbn_statistics(bn, y):
    """Batch mean and invstd of y [N, C, ...] per channel for the BatchNorm module ``bn`` in training
    mode. Updates its running statistics and ``num_batches_tracked`` exactly as BatchNorm's own
    training forward does: ``torch.batch_norm_update_stats`` is the kernel that forward runs."""
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


def _channel_view(v, y):
    return v.view(1, -1, *([1] * (y.dim() - 2)))


def tdbn_output_torch(y, mean, scale, bias):
    """z = (y - mean) * scale + bias per channel (scale = weight * invstd), in y's dtype."""
    z = y - _channel_view(mean, y)
    z.mul_(_channel_view(scale, y))
    z.add_(_channel_view(bias, y))
    return z.to(y.dtype)


def _kernel_channels(*vectors):
    """Per-channel vectors as the kernels read them: fp32, contiguous."""
    return [v.to(torch.float32).contiguous() for v in vectors]


def tdbn_output_triton(y, mean, scale, bias):
    """The same formula in ``tdbn_fwd_kernel``, over y in memory order (contiguous or channels_last)."""
    if not (y.is_contiguous() or y.is_contiguous(memory_format=torch.channels_last)):
        y = y.contiguous()
    z = torch.empty_like(y)
    if y.numel() > 0:
        tdbn_fwd_kernel[(triton.cdiv(y.numel(), NORM_BLOCK),)](y, *_kernel_channels(mean, scale, bias), z, y.numel(),
                                                             y.shape[1], y.stride(1), BLOCK=NORM_BLOCK)
    return z


TDBN_OUTPUT = {"triton": tdbn_output_triton, "torch": tdbn_output_torch}


def tdbn_backend(backend, y):
    """'triton' or 'torch': how tdBN normalises y for a layer whose LIF runs ``backend``."""
    return "triton" if resolve_backend(backend, y) == "triton" else "torch"


def tdbn_backward(grad_z, y, weight, mean, invstd, eps, needs):
    """(dL/dy, dL/dweight, dL/dbias) from dL/dz: ATen's batch-norm backward, the one autograd runs
    after BatchNorm's training forward, given this forward's statistics. ``needs``: which to compute."""
    return torch.ops.aten.native_batch_norm_backward(grad_z, y, weight, None, None, mean, invstd, True, eps,
                                                     list(needs))


class TdBNFunction(torch.autograd.Function):
    """z = tdBN(y) by the explicit formula, so that ``RecomputedLIF`` can recompute it bit for bit;
    backward is ATen's. This is z's own graph, used when something besides a recomputing LIF reads z."""

    @staticmethod
    def forward(ctx, y, weight, bias, mean, invstd, scale, eps, backend):
        ctx.save_for_backward(y, weight, mean, invstd)
        ctx.eps = eps
        return TDBN_OUTPUT[backend](y, mean, scale, bias)

    @staticmethod
    def backward(ctx, grad_z):
        y, weight, mean, invstd = ctx.saved_tensors
        return (*tdbn_backward(grad_z, y, weight, mean, invstd, ctx.eps, ctx.needs_input_grad[:3]), *([None] * 5))


# ---------------------------------------------------------------------------------------------
# Recipes: how to recompute a LIF layer's input from saved tensors, and backpropagate through it.
# ---------------------------------------------------------------------------------------------


class TdBNRecipe:
    """z = tdBN(y) of one forward, from the tensors (y, weight, bias, mean, invstd, scale)."""

    n_tensors = 6

    def __init__(self, eps, backend):
        self.eps, self.backend = eps, backend

    def recompute(self, tensors):
        y, _, bias, mean, _, scale = tensors
        return TDBN_OUTPUT[self.backend](y, mean, scale, bias)

    def backward(self, grad, tensors, needs):
        y, weight, _, mean, invstd, _ = tensors
        return (*tdbn_backward(grad, y, weight, mean, invstd, self.eps, needs[:3]), None, None, None)


class UnflattenRecipe:
    """The inner recipe's tensor with dim 0 split into ``sizes``: [T*B, ...] -> [T, B, ...]."""

    def __init__(self, inner, sizes):
        self.inner, self.sizes, self.n_tensors = inner, tuple(sizes), inner.n_tensors

    def recompute(self, tensors):
        return self.inner.recompute(tensors).unflatten(0, self.sizes)

    def backward(self, grad, tensors, needs):
        return self.inner.backward(grad.flatten(0, 1), tensors, needs)


class SumRecipe:
    """a + b: a is a recipe's tensor; b another recipe's, or (b is None) one saved tensor of its own."""

    def __init__(self, a, b):
        self.a, self.b = a, b
        self.n_tensors = a.n_tensors + (1 if b is None else b.n_tensors)

    def recompute(self, tensors):
        n = self.a.n_tensors
        other = tensors[n] if self.b is None else self.b.recompute(tensors[n:])
        return self.a.recompute(tensors[:n]) + other

    def backward(self, grad, tensors, needs):
        n = self.a.n_tensors
        if self.b is None:
            grads_b = (grad if needs[n] else None,)
        else:
            grads_b = self.b.backward(grad, tensors[n:], needs[n:])
        return (*self.a.backward(grad, tensors[:n], needs[:n]), *grads_b)


def _fused_tdbn(recipe):
    """(TdBNRecipe, channel dim of the LIF input) when one Triton pass can recompute and backpropagate."""
    if isinstance(recipe, UnflattenRecipe) and isinstance(recipe.inner, TdBNRecipe):
        return recipe.inner, 2
    if isinstance(recipe, TdBNRecipe):
        return recipe, 1
    return None, None


# ---------------------------------------------------------------------------------------------
# The recompute launcher and the LIF op that uses it.
# ---------------------------------------------------------------------------------------------


def tdbn_lif_bwd(y, channels, grad_spikes, beta, p: LIFParams, *, channel_div, save_dtype, backward):
    """y [T, N] in the LIF's neuron order, channels = (mean, scale, bias) [C] -> d [T, N] (save_dtype),
    and with ``backward`` also grad_x [T, N] (grad_spikes' dtype) of the LIF backward on it (else
    None). Neuron n's channel is (n // channel_div) % C."""
    T, N = y.shape
    d = torch.empty((T, N), dtype=save_dtype, device=y.device)
    grad_x = torch.empty_like(grad_spikes) if backward else None
    # the recompute alone reads neither the surrogate nor detach_reset: one variant per reset
    surrogate_id, detach_reset = (p.surrogate_id, p.detach_reset) if backward else (0, False)
    if N > 0:
        block, warps = launch_config(N, y.device)
        tdbn_lif_bwd_kernel[(triton.cdiv(N, block),)](
            y, *_kernel_channels(*channels), grad_spikes if backward else y, beta, d,
            grad_x if backward else d, N, T, channels[0].numel(), channel_div, (T - 1) * N, p.decay, p.input_scale,
            p.v_th, p.v_reset, p.h,
            SURROGATE=surrogate_id, HARD_RESET=p.hard_reset, DETACH_RESET=detach_reset, BACKWARD=backward,
            BLOCK=block, num_warps=warps,
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
    def forward(ctx, x_flat, beta, recipe, plan, *tensors):
        spikes, _, _ = LIF_FWD[plan.backend](x_flat, None, plan.params, False, plan.save_dtype)
        ctx.save_for_backward(beta, *tensors)
        ctx.recipe, ctx.plan = recipe, plan
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
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


def lif_recomputed(x, recipe, tensors, beta, p: LIFParams, *, backend, save_dtype=None, search_key=-1):
    """The LIF op (no v0, no v_T) on checked arguments (``check_lif_args``) for an x that ``recipe``
    recomputes from ``tensors``, which backward keeps instead of u - v_th; gradients flow to
    ``tensors``. ``backend`` is resolved ("auto" is not); ``search_key`` >= 0 arms the layer's search.

    ``recipe.recompute(tensors)`` must give x bit for bit (the recipes here use the forward's own
    functions). ``save_dtype`` is the dtype d takes in backward, as the plain op would have saved it.
    """
    order = dense_order(x)
    tdbn, _ = _fused_tdbn(recipe)
    fused = tdbn is not None and tdbn.backend == "triton" and backend == "triton"
    plan = RecomputePlan(order, tuple(x.shape), p, save_dtype or math_dtype(x.dtype), backend, search_key, fused)
    spikes = RecomputedLIF.apply(to_flat(x.detach(), order), beta, recipe, plan, *tensors)
    return from_flat(spikes, x.shape, order)
