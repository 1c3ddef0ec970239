"""Converting models of other SNN libraries to a2sg_triton layers (docs/porting.md)."""

import copy
from types import ModuleType
from typing import Any, Optional, Union

import torch

from .nn import ILIF, LIF, PLIF, SearchedNeuron
from .ops.surrogate import check_surrogate
from .ops.checks import check_beta


class _Unsupported(Exception):
    """One module the converter cannot reproduce exactly; the message says why."""


def from_spikingjelly(model: torch.nn.Module, T: int, *, surrogate: Optional[str] = None,
                      beta_init: Optional[Union[float, torch.Tensor]] = None, inplace: bool = False) -> torch.nn.Module:
    """``model`` with every multi-step SpikingJelly 2.x ``LIFNode`` replaced by an ``nn.LIF``, every
    ``ParametricLIFNode`` by an ``nn.PLIF`` (its learned ``w`` carried over) and every ``ILIFNode`` by
    an ``nn.ILIF`` computing the same function, ready for ``a2sg_triton.A2SG``.

    Every constant is mapped exactly (docs/porting.md): ``tau`` and ``decay_input`` become ``decay``
    and ``input_scale``; ``v_reset=None`` is the soft reset; a hard reset to ``v_reset`` becomes a
    hard reset to 0 with threshold ``v_threshold - v_reset`` (the same spikes and gradients: the
    membrane is shifted by ``v_reset``); ``detach_reset`` is kept. ``surrogate=None`` keeps each
    node's surrogate: ``ATan(alpha)`` -> ``atan`` with beta = 1/alpha, ``Sigmoid(alpha)`` ->
    ``sigmoid`` with beta = 2/alpha, ``PiecewiseQuadratic(alpha)`` -> ``tri`` with beta = 1/alpha,
    ``PiecewiseLeakyReLU(w, c=0)`` -> ``box`` with beta = w. A name of ``a2sg_triton.SURROGATES``
    switches every node to that surrogate with width ``beta_init`` (default 0.5). An ``ILIFNode``'s
    rectangular straight-through estimator becomes ``box`` with beta = v_threshold / 2 at every
    timestep and level (with a surrogate name, every level of step t gets ``beta_init``'s width t).

    Each converted layer starts every call from rest, as a SpikingJelly node does after
    ``functional.reset_net``. Anything that cannot be reproduced exactly (a single-step node, another
    neuron class, an unknown surrogate, an ``ILIFNode`` gradient window other than its default,
    ``store_v_seq``, a neuron precision setting, hooks on the node) is a ValueError naming every such
    module's path. Layer
    modules (``layer.Conv2d``, ``layer.BatchNorm2d``, ``layer.SeqToANNContainer``, ...) are kept: in
    multi-step mode they take [T, B, ...] like ``nn.LIF``. The converted layers are put on the
    device of the model's parameters and buffers. ``inplace=False`` converts a deep copy and leaves
    ``model`` unchanged.

    Args:
        model: a SpikingJelly model in multi-step mode (or one node).
        T: timesteps, an int >= 1.
        surrogate: None keeps each node's surrogate; a name of SURROGATES switches every node to it.
        beta_init: with ``surrogate``: the width, a float or [T] (default 0.5).
        inplace: convert ``model`` itself instead of a deep copy.

    Returns:
        The converted model (``model`` itself with ``inplace``), or the converted layer when ``model``
        is a node.

    Raises:
        ImportError: SpikingJelly is not installed.
        TypeError: model is not a module.
        ValueError: a bad argument, or modules that cannot be reproduced exactly.
    """
    try:
        from spikingjelly.activation_based import neuron, surrogate as sj_surrogate
    except ImportError as e:
        raise ImportError('from_spikingjelly needs SpikingJelly >= 2.0: pip install --no-deps "spikingjelly>=2.0" '
                          '"loguru>=0.7,<1" (a plain pip install also pulls torchvision and torchaudio)') from e
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    if surrogate is None:
        if beta_init is not None:
            raise ValueError("beta_init needs surrogate: with surrogate=None each node keeps its own width")
    else:
        check_surrogate(surrogate, h=0.5)
        beta_init = 0.5 if beta_init is None else beta_init
        try:  # -> a [T] fp32 tensor on the CPU, which each new layer gets a copy of
            beta_init = check_beta(beta_init.cpu() if isinstance(beta_init, torch.Tensor) else beta_init, T,
                                   torch.device("cpu"), torch.float32)
        except ValueError as e:
            raise ValueError(f"beta_init: {e}") from None
    if not inplace:
        model = copy.deepcopy(model)
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise ValueError(f"model has tensors on several devices {sorted(map(str, devices))}; convert it on one "
                         "device (the new layers hold a beta buffer that must sit with their input)")
    device = devices.pop() if devices else torch.device("cpu")

    def is_neuron(m: torch.nn.Module) -> bool:
        return isinstance(m, (neuron.BaseNode, neuron.SimpleBaseNode, neuron.NonSpikingBaseNode)) or \
            f"{type(m).__module__}.".startswith(f"{neuron.__name__}.")

    def convert(node: torch.nn.Module) -> SearchedNeuron:
        # Its own beta: the controller rewrites each layer's in place (nor may it write the caller's).
        beta = None if beta_init is None else beta_init.clone()
        new = _layer_from_node(node, T, surrogate, beta, neuron, sj_surrogate).to(device)
        return new.train(node.training)

    if is_neuron(model):
        try:
            return convert(model)
        except _Unsupported as e:
            raise ValueError(f"cannot convert <model>: {e}") from None
    # Every node is converted before any is replaced, so a failed conversion changes nothing.
    sites: list[tuple[torch.nn.Module, str, torch.nn.Module]]
    converted: dict[int, Optional[SearchedNeuron]]
    problems: list[str]
    sites, converted, problems = [], {}, []  # converted: id(node) -> layer; a shared node stays shared

    def walk(parent: torch.nn.Module, prefix: str) -> None:
        for name, child in parent._modules.items():  # not named_children: it hides a repeated child
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if not is_neuron(child):
                walk(child, path)
                continue
            sites.append((parent, name, child))
            if id(child) not in converted:
                try:
                    converted[id(child)] = convert(child)
                except _Unsupported as e:
                    converted[id(child)] = None
                    problems.append(f"{path}: {e}")

    walk(model, "")
    if problems:
        raise ValueError("from_spikingjelly cannot reproduce these modules exactly:\n  " + "\n  ".join(problems))
    for parent, name, node in sites:
        setattr(parent, name, converted[id(node)])
    return model


def _layer_from_node(node: Any, T: int, surrogate: Optional[str], beta_init: Optional[Union[float, torch.Tensor]],
                     neuron: ModuleType, sj_surrogate: ModuleType) -> SearchedNeuron:
    """The nn.LIF, nn.PLIF or nn.ILIF that computes what the SpikingJelly ``node`` does.

    Args:
        node: a SpikingJelly neuron module.
        T: timesteps.
        surrogate: our surrogate's name, or None to map the node's.
        beta_init: the width [T] with ``surrogate``, else None.
        neuron: ``spikingjelly.activation_based.neuron``.
        sj_surrogate: ``spikingjelly.activation_based.surrogate``.

    Returns:
        The new layer (on the CPU).

    Raises:
        _Unsupported: the node cannot be reproduced exactly.
    """
    kind = type(node).__name__
    if type(node) not in (neuron.LIFNode, neuron.ParametricLIFNode, neuron.ILIFNode):
        raise _Unsupported(f"{kind} is not a neuron a2sg_triton has (LIFNode, ParametricLIFNode and ILIFNode are "
                           "converted)")
    if node.step_mode != "m":
        raise _Unsupported(f"{kind} in single-step mode (step_mode={node.step_mode!r}); only multi-step nodes "
                           "are converted (functional.set_step_mode(model, 'm'))")
    if node.store_v_seq:
        raise _Unsupported(f"{kind} with store_v_seq=True: a2sg_triton's layers do not record v_seq")
    if node._neuron_precision is not None:
        raise _Unsupported(f"{kind} with a neuron precision setting {node._neuron_precision}")
    if node._forward_hooks or node._forward_pre_hooks or node._backward_hooks or node._backward_pre_hooks:
        raise _Unsupported(f"{kind} with hooks (a monitor?): they would not carry over; remove them first")
    if type(node) is neuron.ILIFNode:
        return _ilif_from_node(node, T, surrogate, beta_init, sj_surrogate)
    if surrogate is None:
        surrogate, beta_init = _surrogate_of(node.surrogate_function, sj_surrogate)
    # SpikingJelly: h = v + (x - (v - v_reset)) k (decay_input) or v - (v - v_reset) k + x, k = 1/tau (LIF)
    # or sigmoid(w) (PLIF), with v_reset = 0 for the soft reset. In v - v_reset that is
    # u = (1 - k) v + (k x or x), threshold v_threshold - v_reset and the hard reset to 0; spikes and
    # surrogate inputs u - v_th are unchanged.
    shift = 0.0 if node.v_reset is None else node.v_reset
    neuron_args: dict[str, Any] = dict(beta_init=beta_init, v_th=node.v_threshold - shift, reset="soft" if node.v_reset is None else
                       "hard", v_reset=0.0, detach_reset=node.detach_reset)
    if type(node) is neuron.LIFNode:
        return LIF(T, surrogate, decay=1.0 - 1.0 / node.tau, input_scale=1.0 / node.tau if node.decay_input else 1.0,
                   **neuron_args)
    layer = PLIF(T, surrogate, decay_input=node.decay_input, **neuron_args)
    # the learned leak itself, not the initial one, in the node's dtype
    layer.w = torch.nn.Parameter(node.w.detach().reshape(()).clone(), requires_grad=node.w.requires_grad)
    return layer


def _ilif_from_node(node: Any, T: int, surrogate: Optional[str], beta_init: Optional[Union[float, torch.Tensor]],
                    sj_surrogate: ModuleType) -> ILIF:
    """ILIFNode -> nn.ILIF: h = (1 - 1/tau) v + x is decay = 1 - 1/tau, input_scale = 1; D is its
    MultiLevelSpikeCount's max_spike_count. Its rectangular straight-through estimator (dq/du = 1/v_th
    on 0 <= u / v_th <= D) is box with beta = v_th / 2 at every (t, level): the D windows tile that
    interval. A ``surrogate`` name gives every level of step t the width beta_init[t]."""
    fn = node.surrogate_function
    if type(fn) is not sj_surrogate.MultiLevelSpikeCount or not fn.spiking:
        raise _Unsupported(f"ILIFNode with surrogate {fn!r} (a spiking MultiLevelSpikeCount is needed)")
    D = fn.max_spike_count
    if surrogate is None:
        if (fn.grad_min, fn.grad_max) != (0.0, float(D)):
            raise _Unsupported(f"ILIFNode with grad_window=({fn.grad_min}, {fn.grad_max}): box windows at the "
                               f"D levels express only the default window (0, {D}) (convert with surrogate='box' "
                               "etc. to switch to ours)")
        surrogate, beta_init = "box", node.v_threshold / 2
    else:
        assert isinstance(beta_init, torch.Tensor)  # from_spikingjelly's [T] widths
        beta_init = beta_init[:, None].expand(T, D)
    return ILIF(T, surrogate, levels=D, decay=1.0 - 1.0 / node.tau, input_scale=1.0, v_th=node.v_threshold,
                beta_init=beta_init, detach_reset=node.detach_reset)


def _surrogate_of(fn: Any, sj_surrogate: ModuleType) -> tuple[str, float]:
    """(name, beta) of our surrogate whose f(u; beta) equals SpikingJelly's ``fn`` (docs/porting.md)."""
    if fn is None:  # SpikingJelly's functional default
        fn = sj_surrogate.Sigmoid()
    kind = type(fn).__name__
    if not getattr(fn, "spiking", True):
        raise _Unsupported(f"surrogate {kind} with spiking=False (its forward is not a spike)")
    params = {sj_surrogate.ATan: ("atan", "alpha", lambda a: 1.0 / a),
              sj_surrogate.Sigmoid: ("sigmoid", "alpha", lambda a: 2.0 / a),
              sj_surrogate.PiecewiseQuadratic: ("tri", "alpha", lambda a: 1.0 / a),
              sj_surrogate.PiecewiseLeakyReLU: ("box", "w", lambda w: w)}
    if type(fn) not in params or (type(fn) is sj_surrogate.PiecewiseLeakyReLU and fn.c != 0):
        raise _Unsupported(f"surrogate {fn!r} has no equal in a2sg_triton (convert with surrogate='asy' etc. to "
                           "switch to one of ours)")
    name, attr, to_beta = params[type(fn)]
    value = getattr(fn, attr)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise _Unsupported(f"surrogate {kind} with {attr}={value!r} (a float > 0 is needed)")
    return name, to_beta(float(value))
