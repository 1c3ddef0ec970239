"""nn.Module wrappers of the ops."""

import math
import weakref

import torch

from . import memory
from .ops.ilif import check_ilif_constants, ilif_membrane, ilif_multistep
from .ops.lif import lif_membrane, lif_multistep
from .ops.plif import _leak, plif_membrane, plif_multistep
from .ops.surrogate import check_surrogate
from .ops.tdbn_lif import lif_recomputed
from .ops.backend import BACKENDS, is_compiling
from .ops.checks import check_beta, check_flag, check_real, check_reset, check_save_dtype

# A2SG search sites: key -> (weak reference to the controller, layer name, weak reference to the
# layer). a2sg_triton.A2SG registers its layers here; a layer passes its key to the op only while
# armed, and only if the site is its own.
SEARCH_SITES = {}


def search_site_owner(search_key):
    """(controller, layer name, layer) registered under ``search_key``, or None if any is gone."""
    site = SEARCH_SITES.get(search_key)
    if site is None:
        return None
    controller, layer = site[0](), site[2]()
    return None if controller is None or layer is None else (controller, site[1], layer)


def register_search_site(key, controller, name, layer):
    SEARCH_SITES.pop(layer.search_key, None)  # the layer's previous controller loses it
    SEARCH_SITES[key] = (weakref.ref(controller), name, weakref.ref(layer))
    layer.search_key, layer.search_armed = key, False


def _analysis_backend(x, backend):
    """float64 input runs the eager backend in float64 (the kernels compute in fp32)."""
    return "torch" if isinstance(x, torch.Tensor) and x.dtype == torch.float64 else backend


class SearchedNeuron(torch.nn.Module):
    """A multistep neuron layer that ``a2sg_triton.A2SG`` adapts: T steps, the surrogate width buffer
    ``beta`` of shape [T] (kept fp32, saved in ``state_dict``) and an A²SG search site. ``levels`` = D
    makes ``beta`` [T, D], one width per timestep and level (``ILIF``)."""

    def __init__(self, T, beta_init, levels=None):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        self.T = T
        # a copy: the controller writes the buffer in place, which must not reach the caller's tensor
        self.register_buffer("beta", check_beta(beta_init, T, torch.device("cpu"), torch.float32,
                                                   levels=levels).clone())
        # Set by a2sg_triton.A2SG: the layer's search site, and whether the next backward searches.
        self.search_key = -1
        self.search_armed = False

    def __getstate__(self):
        """Copies (deepcopy, pickle, torch.save) are new layers: no search site."""
        state = super().__getstate__()
        state.update(search_key=-1, search_armed=False)
        return state

    def _apply(self, fn, recurse=True):
        """Moves beta with the module but keeps it fp32: model.half() would otherwise round the
        searched widths (0.37 -> 0.3691 in bf16)."""
        beta = self.beta
        super()._apply(fn, recurse)
        self.beta = beta.to(self.beta.device)
        return self

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != self.T:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects input [T={self.T}, B, ...], got {shape}")

    @staticmethod
    def _check_options(surrogate, h, reset, backend):
        """The constructor checks every neuron shares."""
        check_surrogate(surrogate, h)
        check_reset(reset)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")

    def _take_search(self):
        """The search key this forward passes to its op: the armed search (consumed here), else -1."""
        if self.search_armed and getattr(self, "_is_replica", False):
            raise RuntimeError(f"nn.{type(self).__name__} cannot search beta inside nn.DataParallel (replicas are "
                               "discarded after each call); use DistributedDataParallel")
        if not (self.search_armed and torch.is_grad_enabled()):
            return -1
        owner = search_site_owner(self.search_key)
        if owner is None or owner[2] is not self:
            raise RuntimeError(f"this {type(self).__name__} layer is armed for an A2SG search it is not registered "
                               "for (its controller is gone, or the flag was set by hand); create A2SG(model)")
        self.search_armed = False  # this forward's backward consumes the armed search
        return self.search_key


class LIF(SearchedNeuron):
    """Multistep LIF neuron on [T, B, ...] input with a per-timestep surrogate width.

    The paper's neuron (Eq. A1): decay = input_scale = 1/tau, so tau=2 gives 0.5 and 0.5; pass
    ``decay``/``input_scale`` for other conventions. The width beta is a buffer of shape [T]
    (saved in ``state_dict``) that the A²SG controller rewrites.

    ``save_dtype``: what backward keeps of the forward (u - v_th), None = fp32 or torch.bfloat16
    (half the memory, every spike still recomputed exactly). ``return_v``: forward returns
    (spikes, v_T), v_T in fp32 (float64 for float64 input). ``stateful``: streaming mode, the
    final membrane of one call is the initial membrane of the next (with its autograd graph, so a
    loss over several chunks backpropagates through all of them; ``detach_state()`` cuts it for
    truncated BPTT) until ``reset_state()``. Copies and pickles of the layer carry neither the
    state nor an A²SG search registration.
    """

    def __init__(self, T, surrogate="box", tau=2.0, v_th=1.0, beta_init=0.5, h=0.5, reset="soft",
                 detach_reset=False, backend="auto", *, decay=None, input_scale=None, v_reset=0.0,
                 save_dtype=None, return_v=False, stateful=False):
        super().__init__(T, beta_init)
        check_real("tau", tau)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self._check_options(surrogate, h, reset, backend)
        check_flag("detach_reset", detach_reset)
        self.surrogate, self.tau, self.h = surrogate, float(tau), float(h)
        self.v_th, self.v_reset = check_real("v_th", v_th), check_real("v_reset", v_reset)
        self.decay = 1.0 / tau if decay is None else check_real("decay", decay)
        self.input_scale = 1.0 / tau if input_scale is None else check_real("input_scale", input_scale)
        self.reset, self.detach_reset, self.backend = reset, detach_reset, backend
        check_save_dtype(save_dtype)
        self.save_dtype = save_dtype
        self.return_v, self.stateful = check_flag("return_v", return_v), check_flag("stateful", stateful)
        self.state = None  # v_T of the last call in stateful mode

    def __getstate__(self):
        """Copies (deepcopy, pickle, torch.save) are new layers: no search site, no streaming state."""
        state = super().__getstate__()
        state.update(state=None)
        return state

    def reset_state(self):
        """Starts the next call from v = 0 (stateful mode)."""
        self.state = None

    def detach_state(self):
        """Keeps the carried membrane but cuts its autograd history (truncated BPTT)."""
        if self.state is not None:
            self.state = self.state.detach()

    def forward(self, x):
        self._check_input(x)
        if self.stateful and getattr(self, "_is_replica", False):
            raise RuntimeError("nn.LIF cannot carry a stateful membrane inside nn.DataParallel (replicas are "
                               "discarded after each call); use DistributedDataParallel")
        search_key = self._take_search()
        v0 = None
        if self.stateful and self.state is not None:
            v0 = self.state
            if v0.shape != x.shape[1:] or v0.device != x.device:
                raise ValueError(f"LIF state has shape {list(v0.shape)} on {v0.device}, the input needs "
                                 f"{list(x.shape[1:])} on {x.device}; call reset_state() between sequences")
        neuron = dict(decay=self.decay, input_scale=self.input_scale, v_th=self.v_th, reset=self.reset,
                      v_reset=self.v_reset, detach_reset=self.detach_reset, h=self.h, backend=self.backend,
                      save_dtype=self.save_dtype, _search_key=search_key)
        streaming = self.return_v or self.stateful
        context = None if is_compiling() else memory.active()
        found = None
        if context is not None and not streaming and torch.is_grad_enabled():
            found = context.recipe_for(x)
        if found is not None:  # x is recomputable: backward keeps what it is made of instead of u - v_th
            out = lif_recomputed(x, *found, self.beta, self.surrogate, **neuron)
        else:
            out = lif_multistep(x, self.beta, self.surrogate, v0=v0, return_v=streaming, **neuron)
        if context is not None:
            context.mark_spikes(out[0] if streaming else out)
        if not streaming:
            return out
        if self.stateful:
            self.state = out[1]
        return out if self.return_v else out[0]

    def membrane(self, x):
        """u - v_th [T, ...] of this layer for input currents x [T, ...], from its own forward (same
        backend and kernel, v0 = 0): its spikes are exactly ``membrane(x) >= 0``. float64 input runs
        the eager backend in float64 (the kernels compute in fp32)."""
        return lif_membrane(x, decay=self.decay, input_scale=self.input_scale, v_th=self.v_th, reset=self.reset,
                            v_reset=self.v_reset, backend=_analysis_backend(x, self.backend))

    def leak(self, dtype=torch.float32):
        """(decay, input_scale) of u[t] = decay v[t-1] + input_scale x[t]: floats (``dtype`` is for PLIF's)."""
        return self.decay, self.input_scale

    def extra_repr(self):
        # decay/input_scale given explicitly (another library's convention) replace the paper's tau
        paper = self.decay == self.input_scale == 1.0 / self.tau
        leak = f"tau={self.tau}" if paper else f"decay={self.decay}, input_scale={self.input_scale}"
        return (f"T={self.T}, surrogate={self.surrogate!r}, {leak}, v_th={self.v_th}, "
                + (f"v_reset={self.v_reset}, " if self.reset == "hard" else "")
                + f"reset={self.reset!r}, detach_reset={self.detach_reset}, backend={self.backend!r}"
                + (f", save_dtype={self.save_dtype}" if self.save_dtype is not None else "")
                + (", return_v=True" if self.return_v else "") + (", stateful=True" if self.stateful else ""))


class PLIF(SearchedNeuron):
    """Multistep PLIF neuron on [T, B, ...] input (Fang et al. 2021; docs/math.md): LIF with the
    learnable leak k = sigmoid(w), the parameter ``w`` initialised to -log(init_tau - 1) (k = 1/init_tau).

    ``decay_input``: u[t] = (1 - k) v[t-1] + k x[t] (SpikingJelly's ParametricLIFNode), else
    (1 - k) v[t-1] + x[t]. The width beta is a buffer of shape [T] that the A²SG controller rewrites,
    as for ``LIF``. Inside ``a2sg_triton.memory.memory_saving`` its spikes are saved as bits where a
    later layer saves them; it keeps its own u - v_th (the tdBN -> LIF recomputation is LIF's only).
    """

    def __init__(self, T, surrogate="box", *, init_tau=2.0, decay_input=True, v_th=1.0, beta_init=0.5, h=0.5,
                 reset="soft", v_reset=0.0, detach_reset=False, backend="auto"):
        super().__init__(T, beta_init)
        check_real("init_tau", init_tau)
        if init_tau <= 1:
            raise ValueError(f"init_tau must be > 1 (k = 1/tau lies in (0, 1)), got {init_tau}")
        self._check_options(surrogate, h, reset, backend)
        self.surrogate, self.init_tau, self.h = surrogate, float(init_tau), float(h)
        self.decay_input = check_flag("decay_input", decay_input)
        self.v_th, self.v_reset = check_real("v_th", v_th), check_real("v_reset", v_reset)
        self.reset, self.detach_reset, self.backend = reset, check_flag("detach_reset", detach_reset), backend
        self.w = torch.nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    def forward(self, x):
        self._check_input(x)
        out = plif_multistep(x, self.w, self.beta, self.surrogate, decay_input=self.decay_input, v_th=self.v_th,
                             reset=self.reset, v_reset=self.v_reset, detach_reset=self.detach_reset, h=self.h,
                             backend=self.backend, _search_key=self._take_search())
        context = None if is_compiling() else memory.active()
        if context is not None:  # spikes kept as bits; u - v_th is kept too (no tdBN recomputation for PLIF)
            context.mark_spikes(out)
        return out

    def membrane(self, x):
        """u - v_th [T, ...] for input currents x [T, ...] with the current leak, from the layer's own
        forward (v0 = 0): its spikes are exactly ``membrane(x) >= 0`` (as ``LIF.membrane``)."""
        return plif_membrane(x, self.w.detach(), decay_input=self.decay_input, v_th=self.v_th, reset=self.reset,
                             v_reset=self.v_reset, backend=_analysis_backend(x, self.backend))

    def leak(self, dtype=torch.float32):
        """(decay, input_scale) = (1 - k, k or 1) as 0-d tensors of ``dtype``, differentiable in w."""
        return _leak(self.w, dtype, self.decay_input)

    def extra_repr(self):
        return (f"T={self.T}, surrogate={self.surrogate!r}, init_tau={self.init_tau}, "
                f"decay_input={self.decay_input}, v_th={self.v_th}, reset={self.reset!r}, "
                f"detach_reset={self.detach_reset}, backend={self.backend!r}")


class ILIF(SearchedNeuron):
    """Multistep I-LIF neuron on [T, B, ...] input (SpikeYOLO's integer LIF; docs/math.md): each step
    emits an integer count q = round(clip(u / v_th, 0, D)) and subtracts v_th q (soft reset).

    The defaults are SpikingJelly's ``ILIFNode()`` (tau = 4/3: decay 0.25, input_scale 1, D = 4).
    The surrogate derivative sums one window per level at (i - 1/2) v_th; the width buffer ``beta``
    has shape [T, D], one width per timestep and level (``beta_init``: a float, [D] or [T, D]); box
    with beta = v_th / 2 is SpikingJelly's rectangular straight-through estimator.
    """

    def __init__(self, T, D=4, surrogate="box", *, decay=0.25, input_scale=1.0, v_th=1.0, beta_init=0.5, h=0.5,
                 detach_reset=False, backend="auto"):
        check_ilif_constants(D, v_th)
        super().__init__(T, beta_init, levels=D)
        self._check_options(surrogate, h, "soft", backend)
        self.D, self.surrogate, self.h = D, surrogate, float(h)
        self.decay, self.input_scale = check_real("decay", decay), check_real("input_scale", input_scale)
        self.v_th = float(v_th)
        self.detach_reset, self.backend = check_flag("detach_reset", detach_reset), backend

    def forward(self, x):
        self._check_input(x)
        return ilif_multistep(x, self.beta, self.surrogate, D=self.D, decay=self.decay, input_scale=self.input_scale,
                              v_th=self.v_th, detach_reset=self.detach_reset, h=self.h, backend=self.backend,
                              _search_key=self._take_search())

    def membrane(self, x):
        """u [T, ...] (the membrane before the reset; not u - v_th, as I-LIF has D thresholds) for input
        currents x [T, ...], from the layer's own forward (v0 = 0): its counts are exactly
        ``round(clip(membrane(x) / v_th, 0, D))``. float64 input runs the eager backend in float64."""
        return ilif_membrane(x, D=self.D, decay=self.decay, input_scale=self.input_scale, v_th=self.v_th,
                             backend=_analysis_backend(x, self.backend))

    def extra_repr(self):
        return (f"T={self.T}, D={self.D}, surrogate={self.surrogate!r}, decay={self.decay}, "
                f"input_scale={self.input_scale}, v_th={self.v_th}, detach_reset={self.detach_reset}, "
                f"backend={self.backend!r}")


def unwrap_model(model):
    """The plain module under DistributedDataParallel and torch.compile wrappers (any nesting)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model
