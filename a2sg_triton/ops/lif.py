"""Multistep LIF neuron with a per-timestep surrogate width (docs/math.md).

Side by side: the readable reference (``lif_multistep_ref``), the Triton launchers (``lif_fwd`` /
``lif_bwd`` around ``lif_fwd_kernel`` / ``lif_bwd_kernel``), the eager analytic backend
(``lif_fwd_torch`` / ``lif_bwd_torch``), the torch.library ops with their autograd registration
(``a2sg_triton::lif_fwd`` / ``a2sg_triton::lif_bwd``) and the public ``lif_multistep``.

Backward needs only d = u - v_th per step; the spike is recomputed as d >= 0.
"""

import math
from typing import Optional

import torch

from .surrogate import SURROGATES, check_surrogate, surrogate_grad
from .checks import check_beta, check_flag, check_real, check_reset, check_save_dtype, check_tensor
from .backend import compiled_variant, is_compiling, math_dtype, resolve_backend, HAS_TRITON

if HAS_TRITON:
    import triton

    from ..kernels.lif import lif_bwd_kernel, lif_fwd_kernel

# (neurons per program, warps): large blocks stream best once every SM has a few programs; below
# that, smaller blocks keep more SMs busy. A heuristic from the SM count, not yet measured on a GPU.
BLOCK_SIZES = ((1024, 4), (512, 4), (256, 2), (128, 1))
PROGRAMS_PER_SM = 4


def launch_config(N, device):
    """(BLOCK, num_warps) for N neurons: the largest block that still gives every SM PROGRAMS_PER_SM programs."""
    programs = PROGRAMS_PER_SM * _sm_count(device)
    for block, warps in BLOCK_SIZES:
        if N >= block * programs:
            return block, warps
    return BLOCK_SIZES[-1]


def _sm_count(device):
    if device.type != "cuda":
        return 1  # the interpreter: any block works
    return torch.cuda.get_device_properties(device).multi_processor_count


def _check_lif_args(x, beta, surrogate, decay, input_scale, v_th, reset, v_reset, detach_reset, h, v0,
                    return_v, save_dtype):
    """Validates everything before any kernel runs; returns (beta [T] in the math dtype, hard_reset)."""
    check_tensor("x", x)
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x must have shape [T, ...] with T >= 1, got shape {list(x.shape)}")
    check_surrogate(surrogate, h)
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
    return beta, hard_reset


# ---------------------------------------------------------------------------------------------
# Reference: a loop over T with autograd through a Heaviside step whose derivative is f(u; beta).
# ---------------------------------------------------------------------------------------------


class HeavisideSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, beta, surrogate, v_th, h):
        ctx.save_for_backward(u, beta)
        ctx.surrogate, ctx.v_th, ctx.h = surrogate, v_th, h
        return (u - v_th >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_spike):
        u, beta = ctx.saved_tensors
        return grad_spike * surrogate_grad(u, beta, ctx.surrogate, ctx.v_th, ctx.h), None, None, None, None


def lif_multistep_ref(x, beta, surrogate="box", *, decay=0.5, input_scale=0.5, v_th=1.0, reset="soft",
                      v_reset=0.0, detach_reset=False, h=0.5, v0=None, return_v=False):
    """Readable reference of ``lif_multistep``: the same arguments but the op's execution options
    (``backend``, ``save_dtype``). Computes in x's dtype, v_T included (use float64 to compare
    against the kernels).
    """
    beta, hard_reset = _check_lif_args(x, beta, surrogate, decay, input_scale, v_th, reset, v_reset,
                                       detach_reset, h, v0, return_v, None)
    beta = beta.to(x.dtype)
    v = torch.zeros_like(x[0]) if v0 is None else v0.to(x.dtype)
    spikes = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        s = HeavisideSurrogate.apply(u, beta[t], surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u + s_reset * v_reset if hard_reset else u - v_th * s_reset
        spikes.append(s)
    spikes = torch.stack(spikes)
    return (spikes, v) if return_v else spikes


# ---------------------------------------------------------------------------------------------
# Triton launchers.
# ---------------------------------------------------------------------------------------------


def lif_fwd(x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype):
    """x [T, N] contiguous -> spikes [T, N] (x.dtype), d [T, N] (save_dtype), v_last [N] or [0] (fp32)."""
    T, N = x.shape
    spikes = torch.empty_like(x)
    d = torch.empty((T, N), dtype=save_dtype, device=x.device)
    v_last = torch.empty((N if return_v else 0,), dtype=torch.float32, device=x.device)
    if N > 0:
        block, warps = launch_config(N, x.device)
        lif_fwd_kernel[(triton.cdiv(N, block),)](
            x, v0 if v0 is not None else x, spikes, d, v_last if return_v else d,
            N, T, decay, input_scale, v_th, v_reset,
            HAS_V0=v0 is not None, HARD_RESET=hard_reset, STORE_V_LAST=return_v,
            BLOCK=block, num_warps=warps,
        )
    return spikes, d, v_last


def lif_bwd(grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset,
            detach_reset, h, need_grad_v0):
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] (fp32)."""
    T, N = grad_spikes.shape
    grad_x = torch.empty_like(grad_spikes)
    grad_v0 = torch.empty((N if need_grad_v0 else 0,), dtype=torch.float32, device=d.device)
    if N > 0:
        block, warps = launch_config(N, d.device)
        lif_bwd_kernel[(triton.cdiv(N, block),)](
            grad_spikes, d, beta, grad_v_last if grad_v_last is not None else d, grad_x,
            grad_v0 if need_grad_v0 else d,
            N, T, (T - 1) * N, decay, input_scale, v_th, v_reset, h,
            SURROGATE=surrogate_id, HARD_RESET=hard_reset, DETACH_RESET=detach_reset,
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


def lif_bwd_step(d_t, grad_s_t, carry, beta_t, surrogate, v_th, hard_reset, v_reset, detach_reset, h):
    """delta[t] with width beta_t (a float or a tensor that broadcasts): f, then the local gradient."""
    f = surrogate_grad(d_t, beta_t, surrogate, v_th=0.0, h=h)
    return lif_local_grad(d_t, grad_s_t, carry, f, v_th, hard_reset, v_reset, detach_reset)


def lif_fwd_torch(x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype):
    """The forward in plain torch ops, written so that inductor fuses it (``lif_fwd_inductor``)."""
    dtype = math_dtype(x.dtype)
    v = torch.zeros_like(x[0], dtype=dtype) if v0 is None else v0.to(dtype)
    d = []
    for t in range(x.shape[0]):
        d_t, v = lif_step(v, x[t].to(dtype), decay, input_scale, v_th, hard_reset, v_reset)
        d.append(d_t)
    d = torch.stack(d)
    return (d >= 0).to(x.dtype), d.to(save_dtype), (v if return_v else v.new_empty(0))


def lif_bwd_torch(grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset,
                  v_reset, detach_reset, h, need_grad_v0):
    """The backward in plain torch ops, written so that inductor fuses it (``lif_bwd_inductor``)."""
    dtype = math_dtype(grad_spikes.dtype)
    carry = torch.zeros_like(grad_spikes[0], dtype=dtype) if grad_v_last is None else grad_v_last.to(dtype)
    deltas = []
    for t in reversed(range(grad_spikes.shape[0])):
        delta = lif_bwd_step(d[t].to(dtype), grad_spikes[t].to(dtype), carry, beta[t].to(dtype),
                             SURROGATES[surrogate_id], v_th, hard_reset, v_reset, detach_reset, h)
        deltas.append(delta)
        carry = decay * delta
    grad_x = (input_scale * torch.stack(deltas[::-1])).to(grad_spikes.dtype)
    return grad_x, (carry if need_grad_v0 else carry.new_empty(0))


# ---------------------------------------------------------------------------------------------
# Inductor backend: the eager functions above compiled into fused C++ loops (CPU) once per variant.
# ---------------------------------------------------------------------------------------------


def lif_fwd_inductor(x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype):
    fwd = compiled_variant(lif_fwd_torch, x.shape[0], x.dtype, v0 is None, decay, input_scale, v_th, hard_reset,
                           v_reset, return_v, save_dtype, numel=x.numel())
    return fwd(x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype)


def lif_bwd_inductor(grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset,
                     v_reset, detach_reset, h, need_grad_v0):
    bwd = compiled_variant(lif_bwd_torch, grad_spikes.shape[0], grad_spikes.dtype, d.dtype, grad_v_last is None,
                           surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h, need_grad_v0,
                           numel=grad_spikes.numel())
    return bwd(grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset,
               detach_reset, h, need_grad_v0)


LIF_FWD = {"triton": lif_fwd, "torch": lif_fwd_torch, "inductor": lif_fwd_inductor}
LIF_BWD = {"triton": lif_bwd, "torch": lif_bwd_torch, "inductor": lif_bwd_inductor}


# ---------------------------------------------------------------------------------------------
# torch.library ops (opaque to torch.compile) and their autograd.
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
    return LIF_FWD[backend](x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype)


@lif_fwd_op.register_fake
def _(x, beta, v0, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h, return_v,
      save_dtype, backend, search_key):
    T, N = x.shape
    v_last = x.new_empty((N if return_v else 0,), dtype=math_dtype(x.dtype))
    return torch.empty_like(x), x.new_empty((T, N), dtype=save_dtype), v_last


@torch.library.custom_op("a2sg_triton::lif_bwd", mutates_args=())
def lif_bwd_op(grad_spikes: torch.Tensor, d: torch.Tensor, beta: torch.Tensor, grad_v_last: Optional[torch.Tensor],
               surrogate_id: int, decay: float, input_scale: float, v_th: float, hard_reset: bool, v_reset: float,
               detach_reset: bool, h: float, need_grad_v0: bool, backend: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> grad_x [T, N] (grad_spikes.dtype), grad_v0 [N] or [0] in the math dtype."""
    return LIF_BWD[backend](grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset,
                            v_reset, detach_reset, h, need_grad_v0)


@lif_bwd_op.register_fake
def lif_bwd_fake(grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset,
                  detach_reset, h, need_grad_v0, backend):
    T, N = grad_spikes.shape
    grad_v0 = grad_spikes.new_empty((N if need_grad_v0 else 0,), dtype=math_dtype(grad_spikes.dtype))
    return torch.empty_like(grad_spikes), grad_v0


def _lif_setup_context(ctx, inputs, output):
    (x, beta, v0, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h, return_v,
     save_dtype, backend, search_key) = inputs
    ctx.save_for_backward(output[1], beta)
    ctx.mark_non_differentiable(output[1])
    ctx.params = (surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h)
    ctx.return_v, ctx.backend, ctx.search_key = return_v, backend, search_key
    ctx.eager = False  # LIFFunction sets it
    ctx.v0_dtype = None if v0 is None else v0.dtype
    ctx.x_dtype = x.dtype


def _lif_backward(ctx, grad_spikes, grad_d, grad_v_last):
    """Shared by the op's autograd (torch.compile traces it: it calls the op) and ``LIFFunction``
    (eager: it calls the backend directly, without the op's dispatch)."""
    d, beta = ctx.saved_tensors
    if grad_spikes is None:
        grad_spikes = torch.zeros(d.shape, dtype=ctx.x_dtype, device=d.device)
    need_grad_v0 = ctx.v0_dtype is not None and ctx.needs_input_grad[2]
    args = (grad_spikes.contiguous(), d, beta,
            grad_v_last.contiguous() if ctx.return_v and grad_v_last is not None else None,
            *ctx.params, need_grad_v0, ctx.backend)
    grad_x, grad_v0 = lif_bwd_dispatch(args, ctx.search_key, ctx.eager)
    grad_v0 = grad_v0.to(ctx.v0_dtype) if need_grad_v0 else None
    return grad_x, None, grad_v0, *([None] * 12)


def lif_bwd_dispatch(args, search_key, eager):
    """The LIF backward on ``lif_bwd_op``'s arguments: the armed A²SG search (``search_key`` >= 0),
    else the backend called directly (``eager``) or through the op (what torch.compile traces)."""
    if search_key >= 0:  # registered by a2sg_triton.search.controller, looked up late to avoid an import cycle
        return torch.ops.a2sg_triton.lif_bwd_search(*args, search_key)
    if eager:
        return LIF_BWD[args[-1]](*args[:-1])
    return lif_bwd_op(*args)


lif_fwd_op.register_autograd(_lif_backward, setup_context=_lif_setup_context)


class LIFFunction(torch.autograd.Function):
    """The eager path of ``lif_multistep``: the op's forward and autograd without torch.library's
    per-call argument handling (which costs more than the work in a small layer). Under
    torch.compile ``lif_multistep`` calls the op instead, which the compiler treats as opaque."""

    @staticmethod
    def forward(ctx, *inputs):
        (x, beta, v0, surrogate_id, decay, input_scale, v_th, hard_reset, v_reset, detach_reset, h, return_v,
         save_dtype, backend, search_key) = inputs
        output = LIF_FWD[backend](x, v0, decay, input_scale, v_th, hard_reset, v_reset, return_v, save_dtype)
        _lif_setup_context(ctx, inputs, output)
        ctx.eager = True
        return output

    @staticmethod
    def backward(ctx, *grads):
        return _lif_backward(ctx, *grads)


def lif_multistep(x, beta, surrogate="box", *, decay=0.5, input_scale=0.5, v_th=1.0, reset="soft", v_reset=0.0,
                  detach_reset=False, h=0.5, v0=None, return_v=False, backend="auto", save_dtype=None,
                  _search_key=-1):
    """Multistep LIF over x [T, *]; returns spikes (x.dtype), or (spikes, v_T) with ``return_v``.

    v_T is the fp32 state the kernels carry (float64 for float64 x), whatever x's dtype, so a stream
    of chunks (each call's v_T the next call's ``v0``) is not rounded to fp16/bf16 between chunks.
    beta: float or tensor [T], the surrogate width per timestep (used by backward only; it is never
    read on the host, so changing its values neither syncs nor recompiles). It is not learnable: a
    beta that requires grad is refused. save_dtype: dtype of the
    one tensor saved for backward, u - v_th (None = fp32; torch.bfloat16 halves it).
    ``_search_key`` is the A²SG controller's: it arms a beta search in this call's backward.
    """
    beta, hard_reset = _check_lif_args(x, beta, surrogate, decay, input_scale, v_th, reset, v_reset,
                                       detach_reset, h, v0, return_v, save_dtype)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    x_flat, v0_flat = to_flat(x, order), None if v0 is None else to_flat(v0[None], order)[0]
    run = lif_fwd_op if is_compiling() else LIFFunction.apply
    spikes, _, v_last = run(
        x_flat, beta, v0_flat, SURROGATES.index(surrogate), float(decay), float(input_scale), float(v_th), hard_reset,
        float(v_reset), detach_reset, float(h), return_v, save_dtype or math_dtype(x.dtype), backend, _search_key,
    )
    spikes = from_flat(spikes, x.shape, order)
    if return_v:
        return spikes, from_flat(v_last[None], (1, *x.shape[1:]), order)[0]
    return spikes


def dense_order(x):
    """The order of x's dims 1.. from the outermost to the innermost in memory, when every T slice is
    dense in it (contiguous and channels_last layouts alike), so that x.permute(0, *order) is
    contiguous and the op reads x without a copy; else the plain order (the op copies)."""
    plain = tuple(range(1, x.dim()))
    if x.is_contiguous():
        return plain
    order = tuple(sorted(plain, key=lambda i: -x.stride(i)))
    return order if x.permute(0, *order).is_contiguous() else plain


def to_flat(t, order):
    """[T, *] -> [T, N] in ``order`` (a view when t is laid out in it)."""
    return t.permute(0, *order).reshape(t.shape[0], math.prod(t.shape[1:])).contiguous()


def from_flat(flat, shape, order):
    """[T, N] in ``order`` -> [T, *shape[1:]] (a view, with the strides of a tensor laid out in order)."""
    permuted = flat.view(shape[0], *(shape[i] for i in order))
    inverse = [0] * len(shape)
    for position, dim in enumerate((0, *order)):
        inverse[dim] = position
    return permuted.permute(*inverse)


def lif_membrane(x, *, decay=0.5, input_scale=0.5, v_th=1.0, reset="soft", v_reset=0.0, v0=None, backend="auto"):
    """d = u - v_th [T, *] for input currents x [T, *], computed by ``lif_multistep``'s own forward
    (same backend and kernel, no autograd): its spikes are exactly ``d >= 0``. fp32 (float64 for
    float64 x). For analysis: the membrane a layer really had, not a re-derivation of it.
    """
    _, hard_reset = _check_lif_args(x, 1.0, "box", decay, input_scale, v_th, reset, v_reset, False, 0.5, v0, False,
                                    None)
    backend = resolve_backend(backend, x)
    order = dense_order(x)
    with torch.no_grad():
        _, d, _ = LIF_FWD[backend](to_flat(x, order), None if v0 is None else to_flat(v0[None], order)[0],
                                   float(decay), float(input_scale), float(v_th), hard_reset, float(v_reset), False,
                                   math_dtype(x.dtype))
    return from_flat(d, x.shape, order)
