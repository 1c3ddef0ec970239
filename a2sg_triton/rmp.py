"""RMP-loss: a regulariser that pulls every membrane potential towards the spike it is quantised to
(Guo et al., ICCV 2023, "RMP-Loss: Regularizing Membrane Potential Distribution for Spiking Neural
Networks"; the definition we implement and where it comes from: docs/training.md, "RMP-loss").

    L_RMP = (1/L) Σ_l mean_{t, b, i} (u_l[t, b, i] - s_l[t, b, i])²,   loss = L_task + λ L_RMP

u is a layer's membrane potential before the spike, s ∈ {0, 1} the spike it emitted (a constant
target), the mean runs over its timesteps, samples and neurons, and L counts the recorded layer
calls. Use it with any model of ``nn.LIF`` / ``nn.PLIF`` layers::

    with record_membranes(model) as membranes:
        logits = model(x)
        loss = F.cross_entropy(logits, y) + 0.1 * rmp_loss(membranes)
    loss.backward()

``record_membranes`` hooks every such layer; each forward call appends a ``Membrane`` whose ``u``
is recomputed from the layer's input and its own output spikes, in the autograd graph: the gradient
of the loss reaches the input currents, the weights below, PLIF's leak, and (through the spikes'
surrogate gradient) the resets, exactly as if the op had returned u itself.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, Union

import torch

from .nn import LIF, PLIF, SearchedNeuron
from .ops.backend import math_dtype
from .nn import unwrap_model

class Membrane(NamedTuple):
    """One recorded layer call: the layer's name, u [T, ...] (in the autograd graph) and its spikes
    [T, ...] (detached)."""

    layer: str
    u: torch.Tensor
    spikes: torch.Tensor


def membrane_potential(layer: torch.nn.Module, x: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """u [T, ...] (fp32; float64 for float64 x) of ``layer`` (an ``nn.LIF`` or ``nn.PLIF`` called
    with v0 = 0) for its input x and its output ``spikes``, differentiable in x, the spikes and
    PLIF's w: the layer's recurrence with the spikes it emitted,
    u[t] = decay v[t-1] + input_scale x[t], v[t] = u[t] - v_th s[t] (soft) or (1 - s[t]) u[t] + s[t] v_reset (hard),
    the spikes detached in the reset when the layer detaches its reset.

    Args:
        layer: an ``nn.LIF`` or ``nn.PLIF``.
        x: its input [T, ...].
        spikes: its output [T, ...].

    Returns:
        u [T, ...] in the math dtype of x.

    Raises:
        TypeError: layer is neither.
    """
    if not isinstance(layer, (LIF, PLIF)):
        raise TypeError(f"layer must be an a2sg_triton.nn.LIF or nn.PLIF, got {type(layer).__name__}")
    dtype = math_dtype(x.dtype)
    decay, input_scale = layer.leak(dtype)
    reset_spikes = (spikes.detach() if layer.detach_reset else spikes).to(dtype)
    v: Union[float, torch.Tensor] = 0.0
    us: list[torch.Tensor] = []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t].to(dtype)
        s = reset_spikes[t]
        v = (1 - s) * u + s * layer.v_reset if layer.reset == "hard" else u - layer.v_th * s
        us.append(u)
    return torch.stack(us)


@contextmanager
def record_membranes(model: torch.nn.Module) -> Iterator[list[Membrane]]:
    """Inside the context every forward call of an ``nn.LIF`` / ``nn.PLIF`` of ``model`` (which may be
    wrapped by DistributedDataParallel or torch.compile) appends ``Membrane(layer name, u, spikes)``
    to the yielded list (``membrane_potential``); clear it between iterations. Layers that carry
    state between calls (``LIF(stateful=True)``) or return v_T are refused: their u starts elsewhere.

    Args:
        model: a module holding ``nn.LIF`` / ``nn.PLIF`` layers (possibly wrapped).

    Yields:
        The list the ``Membrane`` records are appended to.

    Raises:
        TypeError: model is not a module, or holds another spiking layer (e.g. ``nn.ILIF``).
        ValueError: no spiking layer, or one that is stateful or returns v_T.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = {name: m for name, m in unwrap_model(model).named_modules() if isinstance(m, SearchedNeuron)}
    if not layers:
        raise ValueError("model has no a2sg_triton.nn.LIF or nn.PLIF layer whose membrane could be recorded")
    for name, layer in layers.items():
        if not isinstance(layer, (LIF, PLIF)):
            raise TypeError(f"layer {name!r} is a {type(layer).__name__}: RMP-loss records nn.LIF and nn.PLIF layers")
        if isinstance(layer, LIF) and (layer.stateful or layer.return_v):
            raise ValueError(f"layer {name!r} is stateful or returns v_T: RMP-loss needs layers that start from v = 0")
    membranes: list[Membrane] = []

    def hook(name: str) -> Callable[[torch.nn.Module, tuple[Any, ...], torch.Tensor], None]:
        def record(module: torch.nn.Module, inputs: tuple[Any, ...], spikes: torch.Tensor) -> None:
            membranes.append(Membrane(name, membrane_potential(module, inputs[0], spikes), spikes.detach()))
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        yield membranes
    finally:
        for handle in handles:
            handle.remove()


def rmp_loss(membranes: Iterable[tuple[Any, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """L_RMP of the recorded ``membranes`` (``Membrane`` tuples, or any (layer, u, spikes)): the mean
    over them of mean((u - spikes)²), a 0-d tensor in the autograd graph of every u.

    Args:
        membranes: (layer, u [T, ...], spikes [T, ...]) per recorded call.

    Returns:
        L_RMP, a 0-d tensor.

    Raises:
        ValueError: nothing was recorded.
    """
    terms = [((u - spikes.to(u.dtype)) ** 2).mean() for _, u, spikes in membranes]
    if not terms:
        raise ValueError("no membrane was recorded: run the model's forward inside record_membranes(model)")
    return torch.stack(terms).mean()
