"""The host skeleton that every multistep neuron op shares (LIF, PLIF, I-LIF).

A neuron file (``lif.py``, ``plif.py``, ``ilif.py``) keeps what is its own: its constants (a
NamedTuple of host scalars), its reference, its Triton launchers and eager backends, its three
torch.library ops written out with typed signatures (forward, backward, searching backward) and a
``Neuron`` naming them. Everything else is here: the [T, *] <-> [T, N] layout, the launch
configuration, one autograd path for eager calls (``NeuronFunction``) and one for torch.compile (the
forward op's registered autograd), and the backward's dispatch to the plain or the searching op.

Every neuron's forward op takes its inputs in one order,
``(x, *weights, beta, v0, *constants, return_v, save_dtype, backend, search_key)``, and returns
``(out, saved, v_last)``: the output [T, N], the one [T, N] tensor backward needs, and v_T [N] (or
[0]). Its backward op takes ``(grad_out, *kept, grad_v_last, *constants, need_grad_v0, backend)``,
``kept`` being what ``Neuron.keep`` chose to save, and returns ``(grad_x, grad_v0, *weight sums)``.
A forward op given ``search_key >= 0`` (an armed A²SG layer) runs the searching op in its backward.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import torch

from .backend import HAS_TRITON, compiled_variant, is_compiling, math_dtype

if HAS_TRITON:
    import triton

NeuronOutputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a forward's (out, saved, v_last)
InputGrads = tuple[torch.Tensor, torch.Tensor]  # a backward's (grad_x, grad_v0)

# (neurons per program, warps): large blocks stream best once every SM has a few programs; below
# that, smaller blocks keep more SMs busy. A heuristic from the SM count, not yet measured on a GPU.
BLOCK_SIZES = ((1024, 4), (512, 4), (256, 2), (128, 1))
PROGRAMS_PER_SM = 4


def launch_config(N: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, num_warps) for N neurons: the largest block that still gives every SM PROGRAMS_PER_SM programs."""
    programs = PROGRAMS_PER_SM * _sm_count(device)
    for block, warps in BLOCK_SIZES:
        if N >= block * programs:
            return block, warps
    return BLOCK_SIZES[-1]


def launch_over_neurons(kernel: Any, N: int, device: torch.device, *args: Any, **flags: Any) -> None:
    """Launches a neuron kernel over N neurons, one program per block of ``launch_config(N)``, with
    ``args`` and the constexpr ``flags``; nothing for N = 0."""
    if N > 0:
        block, warps = launch_config(N, device)
        kernel[(triton.cdiv(N, block),)](*args, **flags, BLOCK=block, num_warps=warps)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: any block works
    return torch.cuda.get_device_properties(device).multi_processor_count


def forward_outputs(x: torch.Tensor, return_v: bool, save_dtype: torch.dtype) -> NeuronOutputs:
    """The buffers a neuron's forward launcher fills, for x [T, N]: the output [T, N] (x.dtype), the
    tensor saved for backward [T, N] (save_dtype) and v_last [N], or [0] without ``return_v`` (fp32)."""
    T, N = x.shape
    return (torch.empty_like(x), torch.empty((T, N), dtype=save_dtype, device=x.device),
            torch.empty((N if return_v else 0,), dtype=torch.float32, device=x.device))


def backward_outputs(grad_out: torch.Tensor, need_grad_v0: bool) -> InputGrads:
    """The buffers a neuron's backward launcher fills, for grad_out [T, N]: grad_x [T, N]
    (grad_out.dtype) and grad_v0 [N], or [0] without ``need_grad_v0`` (fp32)."""
    N = grad_out.shape[1]
    return (torch.empty_like(grad_out),
            torch.empty((N if need_grad_v0 else 0,), dtype=torch.float32, device=grad_out.device))


def backward_through_time(delta_at: Callable[[int, torch.Tensor], torch.Tensor], grad_out: torch.Tensor,
                          grad_v_last: Optional[torch.Tensor], decay: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The eager backward's recursion (docs/math.md) for t = T-1 ... 0: delta[t] = delta_at(t, c[t]),
    c[T-1] = grad_v_last (or 0), c[t-1] = decay delta[t]. Returns (delta [T, N], dL/dv0 = decay delta[0])
    in the math dtype of grad_out [T, N]; the carries never leave the device."""
    dtype = math_dtype(grad_out.dtype)
    carry = torch.zeros_like(grad_out[0], dtype=dtype) if grad_v_last is None else grad_v_last.to(dtype)
    deltas = []
    for t in reversed(range(grad_out.shape[0])):
        deltas.append(delta_at(t, carry))
        carry = decay * deltas[-1]
    return torch.stack(deltas[::-1]), carry


def compiled_backend(eager: Callable[..., Any]) -> Callable[..., Any]:
    """``eager`` (a neuron's forward or backward in torch ops) as the inductor backend: compiled once
    per variant, the variant being T and every argument but the tensors' sizes (a tensor's dtype,
    None for an absent one); see ``backend.compiled_variant``."""

    def run(*args: Any, **options: Any) -> Any:
        key = (args[0].shape[0], *(a.dtype if isinstance(a, torch.Tensor) else a for a in args),
               *sorted(options.items()))
        return compiled_variant(eager, *key, numel=args[0].numel())(*args, **options)

    run.__name__ = run.__qualname__ = f"{eager.__name__}_inductor"
    return run


# ---------------------------------------------------------------------------------------------
# Layout: every op works on [T, N], N the neurons in memory order.
# ---------------------------------------------------------------------------------------------


def dense_order(x: torch.Tensor) -> tuple[int, ...]:
    """The order of x's dims 1.. from the outermost to the innermost in memory, when every T slice is
    dense in it (contiguous and channels_last layouts alike), so that x.permute(0, *order) is
    contiguous and the op reads x without a copy; else the plain order (the op copies)."""
    plain = tuple(range(1, x.dim()))
    if x.is_contiguous():
        return plain
    order = tuple(sorted(plain, key=lambda i: -x.stride()[i]))
    return order if x.permute(0, *order).is_contiguous() else plain


def to_flat(t: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """[T, *] -> [T, N] in ``order`` (a view when t is laid out in it)."""
    return t.permute(0, *order).reshape(t.shape[0], math.prod(t.shape[1:])).contiguous()


def from_flat(flat: torch.Tensor, shape: Sequence[int], order: Sequence[int]) -> torch.Tensor:
    """[T, N] in ``order`` -> [T, *shape[1:]] (a view, with the strides of a tensor laid out in order)."""
    permuted = flat.view(shape[0], *(shape[i] for i in order))
    inverse = [0] * len(shape)
    for position, dim in enumerate((0, *order)):
        inverse[dim] = position
    return permuted.permute(*inverse)


# ---------------------------------------------------------------------------------------------
# What the skeleton knows of one neuron.
# ---------------------------------------------------------------------------------------------


def no_weight_grads(kept: Sequence[Optional[torch.Tensor]], sums: Sequence[torch.Tensor],
                    needs: Sequence[bool]) -> tuple:
    """``Neuron.weight_grads`` of a neuron without learnable weights."""
    return ()


@dataclass(frozen=True, eq=False, kw_only=True)
class Neuron:
    """One neuron op as the skeleton drives it.

    Attributes:
        name: the op's name ("lif"): its ops are ``a2sg_triton::<name>_fwd``, ``_bwd``, ``_bwd_search``.
        params: the NamedTuple of the neuron's constants, in the ops' order.
        n_weights: tensors between x and beta in the forward op's inputs (PLIF's w: 1).
        forward: backend -> ``(x, *weights, v0, params, return_v, save_dtype) -> (out, saved, v_last)``.
        backward: backend -> ``(grad_out, *kept, grad_v_last, params, *, need_grad_v0)
            -> (grad_x, grad_v0, *sums)``.
        fwd_op, bwd_op, search_op: the torch.library ops (flat, typed signatures).
        keep: ``(tensors, params, saved) -> kept``: what backward needs of the forward's tensors
            ``(x, *weights, beta, v0)`` and its saved [T, N] tensor.
        weight_grads: ``(kept, sums, needs) -> grads of the weights`` from the backward's extra sums.
    """

    name: str
    params: type
    n_weights: int
    forward: Mapping[str, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    backward: Mapping[str, Callable[..., tuple]]
    fwd_op: Any
    bwd_op: Any
    search_op: Any
    keep: Callable[..., tuple]
    weight_grads: Callable[..., tuple] = no_weight_grads

    def __post_init__(self) -> None:
        self.fwd_op.register_autograd(functools.partial(_op_backward, self),
                                      setup_context=functools.partial(setup_context, self))

    @property
    def n_tensors(self) -> int:
        """x, the weights, beta and v0."""
        return self.n_weights + 3


class Flags(NamedTuple):
    """The forward op's last four inputs."""

    return_v: bool
    save_dtype: torch.dtype
    backend: str
    search_key: int


def apply_neuron(neuron: Neuron, x: torch.Tensor, weights: Sequence[torch.Tensor], beta: torch.Tensor,
                 v0: Optional[torch.Tensor], params: NamedTuple, *, return_v: bool = False,
                 save_dtype: Optional[torch.dtype] = None, backend: str,
                 search_key: int = -1) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Runs ``neuron`` on checked arguments: x [T, *], beta as the op takes it, v0 [*] or None.

    Returns the output [T, *] (x.dtype), or (output, v_T [*]) with ``return_v``. Eager calls run
    ``NeuronFunction``; under torch.compile the forward op, which the compiler treats as opaque.
    ``search_key`` >= 0 arms the layer's A²SG search in this call's backward.
    """
    order = dense_order(x)
    v0_flat = None if v0 is None else to_flat(v0[None], order)[0]
    inputs = (to_flat(x, order), *weights, beta, v0_flat, *params,
              *Flags(return_v, save_dtype or math_dtype(x.dtype), backend, search_key))
    out, _, v_last = neuron.fwd_op(*inputs) if is_compiling() else NeuronFunction.apply(neuron, *inputs)
    out = from_flat(out, x.shape, order)
    if return_v:
        return out, from_flat(v_last[None], (1, *x.shape[1:]), order)[0]
    return out


def neuron_membrane(neuron: Neuron, x: torch.Tensor, weights: Sequence[torch.Tensor], v0: Optional[torch.Tensor],
                    params: NamedTuple, backend: str) -> torch.Tensor:
    """The [T, *] tensor the neuron's forward saves for backward (u - v_th or u), by its own forward,
    without autograd, in the math dtype."""
    order = dense_order(x)
    with torch.no_grad():
        _, saved, _ = neuron.forward[backend](to_flat(x, order), *weights,
                                              None if v0 is None else to_flat(v0[None], order)[0], params, False,
                                              math_dtype(x.dtype))
    return from_flat(saved, x.shape, order)


# ---------------------------------------------------------------------------------------------
# Autograd: the forward op's registration (torch.compile) and NeuronFunction (eager) share it.
# ---------------------------------------------------------------------------------------------


def setup_context(neuron: Neuron, ctx: Any, inputs: Sequence[Any], output: Sequence[torch.Tensor]) -> None:
    tensors = inputs[:neuron.n_tensors]
    flags = Flags(*inputs[-4:])
    ctx.params = neuron.params(*inputs[neuron.n_tensors:-4])
    ctx.save_for_backward(*neuron.keep(tensors, ctx.params, output[1]))
    ctx.mark_non_differentiable(output[1])
    ctx.neuron, ctx.flags, ctx.n_inputs = neuron, flags, len(inputs)
    ctx.eager = False  # NeuronFunction sets it
    v0 = tensors[-1]
    ctx.v0_dtype = None if v0 is None else v0.dtype
    ctx.x_dtype = tensors[0].dtype


def _op_backward(neuron: Neuron, ctx: Any, *grads: Optional[torch.Tensor]) -> tuple:
    return neuron_backward(ctx, grads, ctx.needs_input_grad)


def neuron_backward(ctx: Any, grads: Sequence[Optional[torch.Tensor]], needs: Sequence[bool]) -> tuple:
    """The gradients of the forward op's inputs from those of its outputs (out, saved, v_last)."""
    neuron, flags = ctx.neuron, ctx.flags
    kept = ctx.saved_tensors
    grad_out, _, grad_v_last = grads
    if grad_out is None:
        grad_out = torch.zeros(kept[0].shape, dtype=ctx.x_dtype, device=kept[0].device)
    need_grad_v0 = ctx.v0_dtype is not None and needs[neuron.n_tensors - 1]
    grad_v_last = grad_v_last.contiguous() if flags.return_v and grad_v_last is not None else None
    grad_x, grad_v0, *sums = run_backward(neuron, (grad_out.contiguous(), *kept, grad_v_last), ctx.params,
                                          need_grad_v0=need_grad_v0, backend=flags.backend,
                                          search_key=flags.search_key, eager=ctx.eager)
    weight_grads = neuron.weight_grads(kept, sums, needs[1:1 + neuron.n_weights])
    grad_v0 = grad_v0.to(ctx.v0_dtype) if need_grad_v0 else None
    return (grad_x, *weight_grads, None, grad_v0, *([None] * (ctx.n_inputs - neuron.n_tensors)))


def run_backward(neuron: Neuron, args: Sequence[Optional[torch.Tensor]], params: NamedTuple, *,
                 need_grad_v0: bool, backend: str, search_key: int, eager: bool) -> tuple:
    """The backward on ``args`` = (grad_out, *kept, grad_v_last): the searching op for an armed layer
    (``search_key`` >= 0), else the backend called directly (``eager``) or through the op (what
    torch.compile traces)."""
    if search_key >= 0:
        return neuron.search_op(*args, *params, need_grad_v0, backend, search_key)
    if eager:
        return neuron.backward[backend](*args, params, need_grad_v0=need_grad_v0)
    return neuron.bwd_op(*args, *params, need_grad_v0, backend)


class NeuronFunction(torch.autograd.Function):
    """The eager path of every neuron: the forward op's computation and autograd without
    torch.library's per-call argument handling (which costs more than the work in a small layer)."""

    @staticmethod
    def forward(ctx: Any, neuron: Neuron, *inputs: Any) -> tuple:  # type: ignore[override]
        n = neuron.n_tensors
        x, *weights, _, v0 = inputs[:n]
        flags = Flags(*inputs[-4:])
        output = neuron.forward[flags.backend](x, *weights, v0, neuron.params(*inputs[n:-4]), flags.return_v,
                                               flags.save_dtype)
        setup_context(neuron, ctx, inputs, output)
        ctx.eager = True
        return output

    @staticmethod
    def backward(ctx: Any, *grads: Optional[torch.Tensor]) -> tuple:  # type: ignore[override]
        return (None, *neuron_backward(ctx, grads, ctx.needs_input_grad[1:]))
