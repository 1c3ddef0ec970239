"""The neuron layers: ``LIF``, ``PLIF`` and ``ILIF`` modules over the ops, with the surrogate width
buffer that ``a2sg_triton.A2SG`` searches, streaming state and memory saving."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch

from . import memory
from .ops._neuron import apply_neuron
from .ops.backend import BACKENDS, is_compiling, resolve_backend
from .ops.checks import check_beta, check_flag, check_real, check_reset, check_save_dtype
from .ops.ilif import ILIF as ILIF_NEURON
from .ops.ilif import check_ilif_args, check_ilif_constants, ilif_membrane
from .ops.lif import LIF as LIF_NEURON
from .ops.lif import check_lif_args, lif_membrane
from .ops.plif import PLIF as PLIF_NEURON
from .ops.plif import check_plif_args, plif_leak, plif_membrane
from .ops.search_sites import search_site_owner
from .ops.surrogate import check_surrogate
from .ops.tdbn_lif import lif_recomputed

__all__ = ["ILIF", "LIF", "PLIF", "SearchedNeuron", "unwrap_model"]

Output = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


def _analysis_backend(x: Any, backend: str) -> str:
    """float64 input runs the eager backend in float64 (the kernels compute in fp32)."""
    return "torch" if isinstance(x, torch.Tensor) and x.dtype == torch.float64 else backend


class SearchedNeuron(torch.nn.Module):
    """A multistep neuron layer that ``a2sg_triton.A2SG`` adapts: T steps, the surrogate width buffer
    ``beta`` of shape [T] (kept fp32, saved in ``state_dict``) and an A²SG search site. ``levels`` = D
    makes ``beta`` [T, D], one width per timestep and level (``ILIF``).

    The options every neuron layer shares:

    Args:
        T: timesteps; input is [T, B, ...].
        beta_init: the initial width: a float, or a tensor of beta's shape (or [D] for ``ILIF``).
        backend: "auto", "triton", "torch" or "inductor".
        save_dtype: what backward keeps of the forward (u - v_th, or u for I-LIF): None = fp32 or
            torch.bfloat16 (half the memory, every spike still recomputed exactly).
        return_v: forward returns (output, v_T), v_T in fp32 (float64 for float64 input).
        stateful: streaming mode, the final membrane of one call is the initial membrane of the next
            (with its autograd graph, so a loss over several chunks backpropagates through all of
            them; ``detach_state()`` cuts it for truncated BPTT) until ``reset_state()``.

    Copies and pickles of a layer carry neither the state nor an A²SG search registration.
    """

    binary = True  # emits 0/1 spikes, which memory saving keeps as bits

    def __init__(self, T: int, beta_init: Union[float, torch.Tensor], *, levels: Optional[int] = None,
                 backend: str = "auto", save_dtype: Optional[torch.dtype] = None, return_v: bool = False,
                 stateful: bool = False):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        self.T = T
        # a copy: the controller writes the buffer in place, which must not reach the caller's tensor
        self.register_buffer("beta", check_beta(beta_init, T, torch.device("cpu"), torch.float32,
                                                   levels=levels).clone())
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_save_dtype(save_dtype)
        self.backend, self.save_dtype = backend, save_dtype
        self.return_v, self.stateful = check_flag("return_v", return_v), check_flag("stateful", stateful)
        self.state: Optional[torch.Tensor] = None  # v_T of the last call in stateful mode
        # Set by a2sg_triton.A2SG: the layer's search site, and whether the next backward searches.
        self.search_key = -1
        self.search_armed = False

    def __getstate__(self) -> dict:
        """Copies (deepcopy, pickle, torch.save) are new layers: no search site, no streaming state."""
        state = super().__getstate__()
        state.update(search_key=-1, search_armed=False, state=None)
        return state

    def _apply(self, fn, recurse=True):
        """Moves beta with the module but keeps it fp32: model.half() would otherwise round the
        searched widths (0.37 -> 0.3691 in bf16)."""
        beta = self.beta
        super()._apply(fn, recurse)
        self.beta = beta.to(self.beta.device)
        return self

    def reset_state(self) -> None:
        """Starts the next call from v = 0 (stateful mode)."""
        self.state = None

    def detach_state(self) -> None:
        """Keeps the carried membrane but cuts its autograd history (truncated BPTT)."""
        if self.state is not None:
            self.state = self.state.detach()

    def forward(self, x: torch.Tensor) -> Output:
        """x [T, B, ...] -> the output [T, B, ...] (x.dtype), or (output, v_T [B, ...]) with ``return_v``."""
        self._check_input(x)
        v0 = self._initial_state(x)
        search_key = self._take_search()
        streaming = self.return_v or self.stateful
        out = self._multistep(x, v0, streaming, search_key)
        context = None if is_compiling() else memory.active()
        if context is not None and self.binary:  # spikes kept as bits where a later layer saves them
            context.mark_spikes(out[0] if isinstance(out, tuple) else out)
        if not streaming:
            return out
        if self.stateful:
            self.state = out[1]
        return out if self.return_v else out[0]

    def _multistep(self, x: torch.Tensor, v0: Optional[torch.Tensor], return_v: bool, search_key: int) -> Output:
        raise NotImplementedError

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != self.T:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects input [T={self.T}, B, ...], got {shape}")

    def _initial_state(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """v0 of this call: the carried membrane in stateful mode, else None (v = 0)."""
        if self.stateful and getattr(self, "_is_replica", False):
            raise RuntimeError(f"nn.{type(self).__name__} cannot carry a stateful membrane inside nn.DataParallel "
                               "(replicas are discarded after each call); use DistributedDataParallel")
        if not (self.stateful and self.state is not None):
            return None
        v0 = self.state
        if v0.shape != x.shape[1:] or v0.device != x.device:
            raise ValueError(f"{type(self).__name__} state has shape {list(v0.shape)} on {v0.device}, the input needs "
                             f"{list(x.shape[1:])} on {x.device}; call reset_state() between sequences")
        return v0

    @staticmethod
    def _check_options(surrogate: str, h: float, reset: str) -> None:
        """The constructor checks every neuron shares."""
        check_surrogate(surrogate, h)
        check_reset(reset)

    def _take_search(self) -> int:
        """The search key this forward passes to its op: the armed search (consumed here), else -1."""
        if self.search_armed and getattr(self, "_is_replica", False):
            raise RuntimeError(f"nn.{type(self).__name__} cannot search beta inside nn.DataParallel (replicas are "
                               "discarded after each call); use DistributedDataParallel")
        if not (self.search_armed and torch.is_grad_enabled()):
            return -1
        owner = search_site_owner(self.search_key)
        if owner is None or owner.layer is not self:
            raise RuntimeError(f"this {type(self).__name__} layer is armed for an A2SG search it is not registered "
                               "for (its controller is gone, or the flag was set by hand); create A2SG(model)")
        self.search_armed = False  # this forward's backward consumes the armed search
        return self.search_key

    def _options_repr(self) -> str:
        """The shared options that differ from their defaults, for ``extra_repr``."""
        save_dtype = f", save_dtype={self.save_dtype}" if self.save_dtype is not None else ""
        return (f", backend={self.backend!r}{save_dtype}" + (", return_v=True" if self.return_v else "")
                + (", stateful=True" if self.stateful else ""))


class LIF(SearchedNeuron):
    """Multistep LIF neuron on [T, B, ...] input with a per-timestep surrogate width.

    The paper's neuron (Eq. A1): decay = input_scale = 1/tau, so tau=2 gives 0.5 and 0.5; pass
    ``decay``/``input_scale`` for other conventions. The width beta is a buffer of shape [T]
    (saved in ``state_dict``) that the A²SG controller rewrites.

    Args:
        T: timesteps.
        surrogate: one of ``a2sg_triton.SURROGATES``.
        tau: the paper's time constant (decay = input_scale = 1/tau unless given).
        v_th, reset, v_reset, detach_reset, h: as ``lif_multistep``.
        beta_init: the initial width, a float or a tensor [T].
        decay, input_scale: override the paper's 1/tau.
        backend, save_dtype, return_v, stateful: as ``SearchedNeuron``.

    Inside ``a2sg_triton.memory.memory_saving`` a LIF whose input a ``TdBatchNorm2d`` made keeps what
    that input is made of instead of u - v_th and recomputes both in backward (docs/memory.md).
    """

    def __init__(self, T: int, surrogate: str = "box", *, tau: float = 2.0, v_th: float = 1.0,
                 beta_init: Union[float, torch.Tensor] = 0.5, h: float = 0.5, reset: str = "soft",
                 detach_reset: bool = False, decay: Optional[float] = None, input_scale: Optional[float] = None,
                 v_reset: float = 0.0, backend: str = "auto", save_dtype: Optional[torch.dtype] = None,
                 return_v: bool = False, stateful: bool = False):
        super().__init__(T, beta_init, backend=backend, save_dtype=save_dtype, return_v=return_v, stateful=stateful)
        check_real("tau", tau)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self._check_options(surrogate, h, reset)
        check_flag("detach_reset", detach_reset)
        self.surrogate, self.tau, self.h = surrogate, float(tau), float(h)
        self.v_th, self.v_reset = check_real("v_th", v_th), check_real("v_reset", v_reset)
        self.decay = 1.0 / tau if decay is None else check_real("decay", decay)
        self.input_scale = 1.0 / tau if input_scale is None else check_real("input_scale", input_scale)
        self.reset, self.detach_reset = reset, detach_reset

    def _multistep(self, x: torch.Tensor, v0: Optional[torch.Tensor], return_v: bool, search_key: int) -> Output:
        beta, p = check_lif_args(x, self.beta, surrogate=self.surrogate, decay=self.decay,
                                 input_scale=self.input_scale, v_th=self.v_th, reset=self.reset, v_reset=self.v_reset,
                                 detach_reset=self.detach_reset, h=self.h, v0=v0, return_v=return_v,
                                 save_dtype=self.save_dtype)
        backend = resolve_backend(self.backend, x)
        context = None if is_compiling() else memory.active()
        found = None
        if context is not None and not return_v and torch.is_grad_enabled():
            found = context.recipe_for(x)
        if found is not None:  # x is recomputable: backward keeps what it is made of instead of u - v_th
            return lif_recomputed(x, *found, beta, p, backend=backend, save_dtype=self.save_dtype,
                                  search_key=search_key)
        return apply_neuron(LIF_NEURON, x, (), beta, v0, p, return_v=return_v, save_dtype=self.save_dtype,
                            backend=backend, search_key=search_key)

    def membrane(self, x: torch.Tensor) -> torch.Tensor:
        """u - v_th [T, ...] of this layer for input currents x [T, ...], from its own forward (same
        backend and kernel, v0 = 0): its spikes are exactly ``membrane(x) >= 0``. float64 input runs
        the eager backend in float64 (the kernels compute in fp32)."""
        return lif_membrane(x, decay=self.decay, input_scale=self.input_scale, v_th=self.v_th, reset=self.reset,
                            v_reset=self.v_reset, backend=_analysis_backend(x, self.backend))

    def leak(self, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
        """(decay, input_scale) of u[t] = decay v[t-1] + input_scale x[t]: floats (``dtype`` is for PLIF's)."""
        return self.decay, self.input_scale

    def extra_repr(self) -> str:
        # decay/input_scale given explicitly (another library's convention) replace the paper's tau
        paper = self.decay == self.input_scale == 1.0 / self.tau
        leak = f"tau={self.tau}" if paper else f"decay={self.decay}, input_scale={self.input_scale}"
        return (f"T={self.T}, surrogate={self.surrogate!r}, {leak}, v_th={self.v_th}, "
                + (f"v_reset={self.v_reset}, " if self.reset == "hard" else "")
                + f"reset={self.reset!r}, detach_reset={self.detach_reset}" + self._options_repr())


class PLIF(SearchedNeuron):
    """Multistep PLIF neuron on [T, B, ...] input (Fang et al. 2021; docs/math.md): LIF with the
    learnable leak k = sigmoid(w), the parameter ``w`` initialised to -log(init_tau - 1) (k = 1/init_tau).

    Args:
        T: timesteps.
        surrogate: one of ``a2sg_triton.SURROGATES``.
        init_tau: the initial time constant (> 1).
        decay_input: u[t] = (1 - k) v[t-1] + k x[t] (SpikingJelly's ParametricLIFNode), else
            (1 - k) v[t-1] + x[t].
        v_th, reset, v_reset, detach_reset, h: as ``lif_multistep``.
        beta_init: the initial width, a float or a tensor [T].
        backend, save_dtype, return_v, stateful: as ``SearchedNeuron``.

    The width beta is a buffer of shape [T] that the A²SG controller rewrites, as for ``LIF``. Inside
    ``a2sg_triton.memory.memory_saving`` its spikes are saved as bits where a later layer saves them;
    it keeps its own u - v_th (the tdBN -> LIF recomputation is LIF's only).
    """

    def __init__(self, T: int, surrogate: str = "box", *, init_tau: float = 2.0, decay_input: bool = True,
                 v_th: float = 1.0, beta_init: Union[float, torch.Tensor] = 0.5, h: float = 0.5, reset: str = "soft",
                 v_reset: float = 0.0, detach_reset: bool = False, backend: str = "auto",
                 save_dtype: Optional[torch.dtype] = None, return_v: bool = False, stateful: bool = False):
        super().__init__(T, beta_init, backend=backend, save_dtype=save_dtype, return_v=return_v, stateful=stateful)
        check_real("init_tau", init_tau)
        if init_tau <= 1:
            raise ValueError(f"init_tau must be > 1 (k = 1/tau lies in (0, 1)), got {init_tau}")
        self._check_options(surrogate, h, reset)
        self.surrogate, self.init_tau, self.h = surrogate, float(init_tau), float(h)
        self.decay_input = check_flag("decay_input", decay_input)
        self.v_th, self.v_reset = check_real("v_th", v_th), check_real("v_reset", v_reset)
        self.reset, self.detach_reset = reset, check_flag("detach_reset", detach_reset)
        self.w = torch.nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def _multistep(self, x: torch.Tensor, v0: Optional[torch.Tensor], return_v: bool, search_key: int) -> Output:
        beta, p = check_plif_args(x, self.w, self.beta, surrogate=self.surrogate, decay_input=self.decay_input,
                                  v_th=self.v_th, reset=self.reset, v_reset=self.v_reset,
                                  detach_reset=self.detach_reset, h=self.h, v0=v0, return_v=return_v,
                                  save_dtype=self.save_dtype)
        return apply_neuron(PLIF_NEURON, x, (self.w,), beta, v0, p, return_v=return_v, save_dtype=self.save_dtype,
                            backend=resolve_backend(self.backend, x), search_key=search_key)

    def membrane(self, x: torch.Tensor) -> torch.Tensor:
        """u - v_th [T, ...] for input currents x [T, ...] with the current leak, from the layer's own
        forward (v0 = 0): its spikes are exactly ``membrane(x) >= 0`` (as ``LIF.membrane``)."""
        return plif_membrane(x, self.w.detach(), decay_input=self.decay_input, v_th=self.v_th, reset=self.reset,
                             v_reset=self.v_reset, backend=_analysis_backend(x, self.backend))

    def leak(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(decay, input_scale) = (1 - k, k or 1) as 0-d tensors of ``dtype``, differentiable in w."""
        return plif_leak(self.w, dtype, self.decay_input)

    def extra_repr(self) -> str:
        return (f"T={self.T}, surrogate={self.surrogate!r}, init_tau={self.init_tau}, "
                f"decay_input={self.decay_input}, v_th={self.v_th}, reset={self.reset!r}, "
                f"detach_reset={self.detach_reset}" + self._options_repr())


class ILIF(SearchedNeuron):
    """Multistep I-LIF neuron on [T, B, ...] input (SpikeYOLO's integer LIF; docs/math.md): each step
    emits an integer count q = round(clip(u / v_th, 0, D)) and subtracts v_th q (soft reset).

    The defaults are SpikingJelly's ``ILIFNode()`` (tau = 4/3: decay 0.25, input_scale 1, D = 4).
    The surrogate derivative sums one window per level at (i - 1/2) v_th; the width buffer ``beta``
    has shape [T, D], one width per timestep and level; box with beta = v_th / 2 is SpikingJelly's
    rectangular straight-through estimator.

    Args:
        T: timesteps.
        surrogate: one of ``a2sg_triton.SURROGATES``.
        levels: D, the largest count.
        decay, input_scale, v_th, detach_reset, h: as ``ilif_multistep``.
        beta_init: the initial widths, a float, [D] or [T, D].
        backend, save_dtype, return_v, stateful: as ``SearchedNeuron``.
    """

    binary = False  # counts 0 ... D: memory saving keeps them as they are

    def __init__(self, T: int, surrogate: str = "box", *, levels: int = 4, decay: float = 0.25,
                 input_scale: float = 1.0, v_th: float = 1.0, beta_init: Union[float, torch.Tensor] = 0.5,
                 h: float = 0.5, detach_reset: bool = False, backend: str = "auto",
                 save_dtype: Optional[torch.dtype] = None, return_v: bool = False, stateful: bool = False):
        check_ilif_constants(levels, v_th)
        super().__init__(T, beta_init, levels=levels, backend=backend, save_dtype=save_dtype, return_v=return_v,
                         stateful=stateful)
        self._check_options(surrogate, h, "soft")
        self.levels, self.surrogate, self.h = levels, surrogate, float(h)
        self.decay, self.input_scale = check_real("decay", decay), check_real("input_scale", input_scale)
        self.v_th = float(v_th)
        self.detach_reset = check_flag("detach_reset", detach_reset)

    def _multistep(self, x: torch.Tensor, v0: Optional[torch.Tensor], return_v: bool, search_key: int) -> Output:
        beta, p = check_ilif_args(x, self.beta, surrogate=self.surrogate, levels=self.levels, decay=self.decay,
                                  input_scale=self.input_scale, v_th=self.v_th, detach_reset=self.detach_reset,
                                  h=self.h, v0=v0, return_v=return_v, save_dtype=self.save_dtype)
        return apply_neuron(ILIF_NEURON, x, (), beta, v0, p, return_v=return_v, save_dtype=self.save_dtype,
                            backend=resolve_backend(self.backend, x), search_key=search_key)

    def membrane(self, x: torch.Tensor) -> torch.Tensor:
        """u [T, ...] (the membrane before the reset; not u - v_th, as I-LIF has D thresholds) for input
        currents x [T, ...], from the layer's own forward (v0 = 0): its counts are exactly
        ``round(clip(membrane(x) / v_th, 0, levels))``. float64 input runs the eager backend in float64."""
        return ilif_membrane(x, levels=self.levels, decay=self.decay, input_scale=self.input_scale, v_th=self.v_th,
                             backend=_analysis_backend(x, self.backend))

    def extra_repr(self) -> str:
        return (f"T={self.T}, levels={self.levels}, surrogate={self.surrogate!r}, decay={self.decay}, "
                f"input_scale={self.input_scale}, v_th={self.v_th}, detach_reset={self.detach_reset}"
                + self._options_repr())


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers (any nesting)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model
