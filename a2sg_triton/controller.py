"""The A²SG controller: searches every LIF (and PLIF) layer's per-timestep beta inside its own backward (Alg. A1).

At an armed iteration each ``nn.LIF`` layer's backward runs ``a2sg_triton::lif_bwd_search``
instead of the plain LIF backward. Autograd reaches the layers top-down, as Alg. A1 needs. For
t = T-1 ... 0 the op evaluates the candidate widths with the fused statistics kernel, lets
``search_beta`` choose beta_t, computes delta[t] with it (the TGC reference and the carry for t-1)
and so produces this iteration's gradients with the new betas, which it then writes into the
layer's ``beta`` buffer. The op is opaque to torch.compile, so a compiled model searches too.
"""

import csv
import inspect
import io
import itertools
import json
import os
import time
import weakref
from typing import Optional

import torch

from .lif import lif_bwd_fake
from .plif import PLIF_BWD, plif_bwd_fake
from .stats import CANDIDATE_STATS, DELTA_STATS
from .nn import SEARCH_SITES, SearchedNeuron, register_search_site, search_site_owner
from .search import GPState, SearchConfig, search_beta
from .utils import atomic_write, math_dtype, unwrap_model

ADAPT_MODES = ("none", "spatial", "temporal", "spatiotemporal")
HISTORY_FIELDS = ("epoch", "layer", "t", "metric", "beta", "previous_beta", "best_beta", "best_value",
                  "metric_at_beta", "predicted", "fell_back", "flat", "gp_seconds", "seconds")

_next_key = itertools.count()


def _forget_sites(keys):
    for key in keys:
        SEARCH_SITES.pop(key, None)


class A2SG:
    """Adaptive surrogate widths for every ``a2sg_triton.nn.LIF`` and ``nn.PLIF`` in ``model``.

    Call ``begin_epoch(epoch)`` before each epoch's first iteration: when ``epoch % every == 0``
    the next backward of every layer searches its beta vector (modes as in docs/search.md: "none",
    "spatial" = SGV at every t, "temporal" = TGC for t < T-1, "spatiotemporal" = both).
    Under torch.distributed the candidate statistics are merged over ``process_group`` first
    (``CandidateStats.all_reduce``), so every rank chooses the same betas.

    ``model`` may be wrapped by DistributedDataParallel or torch.compile: layer names (in the
    history and ``state_dict``) are those of the plain model, so a checkpoint resumes under any
    wrapper. ``nn.DataParallel`` is refused (its replicas would each search a slice of the batch):
    use DistributedDataParallel. A layer belongs to the controller created for it last; an older
    controller of the same layer refuses to arm it.
    """

    def __init__(self, model, adapt="spatiotemporal", strategy="bo", n_obs=100, n_eval=150, radius=0.05,
                 beta_range=(0.05, 1.0), every=1, seed=0, *, gp_fit=None, process_group=None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(adapt, str) or adapt not in ADAPT_MODES:
            raise ValueError(f"adapt must be one of {ADAPT_MODES}, got {adapt!r}")
        for name, value, minimum in (("every", every, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if isinstance(model, torch.nn.DataParallel):
            raise TypeError("A2SG does not support nn.DataParallel (each replica would search its own slice "
                            "of the batch); use torch.nn.parallel.DistributedDataParallel")
        model = unwrap_model(model)
        gp_fit = {} if gp_fit is None else {"gp_fit": gp_fit}  # None: SearchConfig's measured default
        self.config = SearchConfig(strategy=strategy, n_obs=n_obs, n_eval=n_eval, radius=radius,
                                   beta_range=beta_range, **gp_fit)
        self.adapt, self.every, self.seed, self.process_group = adapt, every, seed, process_group
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SearchedNeuron)}
        if not self.layers:
            raise ValueError("model has no a2sg_triton.nn.LIF or nn.PLIF layer to adapt")
        # Fresh keys for this controller's own layers: a key never outlives its controller, and a
        # compiled graph that bakes one in stays valid across epochs.
        keys = [next(_next_key) for _ in self.layers]
        for key, (name, layer) in zip(keys, self.layers.items()):
            register_search_site(key, self, name, layer)
        weakref.finalize(self, _forget_sites, keys)
        self.generator = torch.Generator().manual_seed(seed)
        self.gp_states = {(name, t): GPState() for name, layer in self.layers.items() for t in range(layer.T)}
        self._history = []
        # History rows whose device-side values (the previous beta_t and the metric at the chosen
        # beta) are not on the host yet: (row, float64 tensor [2]). They come along with the next
        # search's one device-to-host copy, or when the history is read.
        self._pending = []
        self.epoch = None

    @property
    def history(self):
        """One dict per (search, layer, timestep), fields HISTORY_FIELDS (docs/search.md)."""
        if self._pending:
            self._fetch(None)
        return self._history

    def search_log(self, since=0):
        """Counts over the history rows from index ``since`` on (one epoch's searches, say): searches,
        GP choices that fell back, flat curves (width kept), and the widths of every layer now within
        1% of the range's width from its lower or upper end."""
        rows = self.history[since:]
        lo, hi = self.config.beta_range
        margin = 0.01 * (hi - lo)
        betas = torch.cat([layer.beta.detach().double().cpu() for layer in self.layers.values()])
        return {"searches": len(rows), "fell_back": sum(bool(r["fell_back"]) for r in rows),
                "flat": sum(bool(r.get("flat")) for r in rows),  # rows saved before "flat" existed lack it
                "at_lower_end": int((betas <= lo + margin).sum()), "at_upper_end": int((betas >= hi - margin).sum()),
                "widths": betas.numel()}

    def _fetch(self, values):
        """values.cpu() with the pending history values on values' device in the same transfer, so
        that the search's one host sync per (layer, t) serves the history too. values None: every
        pending value (one transfer per device)."""
        if values is None:
            for device in {p[1].device for p in self._pending}:
                self._fetch(torch.empty(0, dtype=torch.float64, device=device))
            return None
        pending = [p for p in self._pending if p[1].device == values.device]
        self._pending = [p for p in self._pending if p[1].device != values.device]
        flat = torch.cat([values.to(torch.float64), *(p[1] for p in pending)]).cpu()
        for i, (row, _) in enumerate(pending):
            previous, metric = flat[values.numel() + 2 * i:values.numel() + 2 * i + 2].tolist()
            row["previous_beta"], row["metric_at_beta"] = previous, metric
            if row["beta"] is None:  # nothing finite was observed: beta_t was kept
                row["beta"] = row["best_beta"] = previous
        return flat[:values.numel()]

    def begin_epoch(self, epoch):
        """Arms the search for the next backward of every layer when ``epoch % every == 0``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._check_ownership()
        self.epoch = epoch
        armed = self.adapt != "none" and epoch % self.every == 0
        for layer in self.layers.values():
            layer.search_armed = armed

    def _check_ownership(self):
        for name, layer in self.layers.items():
            owner = search_site_owner(layer.search_key)
            if owner is None or owner[0] is not self or owner[2] is not layer:
                raise RuntimeError(f"layer {name!r} is now adapted by another A2SG controller (one created "
                                   "for this model later); use that controller")

    def metric_at(self, t, T):
        """'sgv', 'tgc' or None (keep beta_t) for timestep t of T under this controller's mode."""
        last = t == T - 1
        if self.adapt == "spatial":
            return "sgv"
        if self.adapt == "temporal":
            return None if last else "tgc"
        if self.adapt == "spatiotemporal":
            return "sgv" if last else "tgc"
        return None

    # -- the search backward ------------------------------------------------------------------

    def search_backward(self, name, grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale, v_th,
                        hard_reset, v_reset, detach_reset, h, need_grad_v0, backend):
        """Alg. A1 for one layer: per t (top-down in time) search beta_t, then delta[t] with it.

        One host sync per searched (layer, t): the candidates' metric values (search_beta needs
        them on the host). delta[t] for the chosen width comes from one fused pass
        (``DELTA_STATS``) that also writes grad_x[t] and yields the statistics recorded as
        metric_at_beta; the widths stay on the device (a kept beta_t is never read on the host).
        """
        layer = self.layers[name]
        T, N = grad_spikes.shape
        if N == 0:  # no neuron (an empty batch): no statistics, nothing to search
            return torch.empty_like(grad_spikes), grad_spikes.new_empty((0,), dtype=math_dtype(grad_spikes.dtype))
        stats_fn, step_fn = CANDIDATE_STATS[backend], DELTA_STATS[backend]
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        old_beta = beta.detach()
        new_beta = old_beta.clone()  # chosen widths are written in on the device, no host round trip
        grad_x = torch.empty_like(grad_spikes)
        carry, carry_scale, ref = grad_v_last, 1.0, None  # the carry is carry_scale * carry = decay * delta[t+1]

        for t in reversed(range(T)):
            d_t, grad_s_t = d[t], grad_spikes[t]
            metric = self.metric_at(t, T)
            tgc = metric == "tgc"
            row = None
            if metric is not None:
                start = time.perf_counter()

                def evaluate(betas):
                    stats = stats_fn(d_t, grad_s_t, carry, ref if tgc else None, betas, surrogate_id, 0.0, v_th,
                                     hard_reset, v_reset, detach_reset, h, carry_scale=carry_scale)
                    if distributed:
                        stats.all_reduce(self.process_group)
                    return self._fetch(stats.tgc() if tgc else stats.sgv())

                result = search_beta(evaluate, maximize=tgc, config=self.config, generator=self.generator,
                                     current=None, gp_state=self.gp_states[(name, t)])
                if result.beta is not None:
                    new_beta[t] = result.beta
                row = {"epoch": self.epoch, "layer": name, "t": t, "metric": metric, "beta": result.beta,
                       "previous_beta": None, "best_beta": result.best_beta, "best_value": result.best_value,
                       "metric_at_beta": None, "predicted": result.predicted, "fell_back": result.fell_back,
                       "flat": result.flat, "gp_seconds": result.gp_seconds}
            delta, stats = step_fn(d_t, grad_s_t, carry, carry_scale, ref if tgc else None, new_beta[t:t + 1],
                                   surrogate_id, v_th, hard_reset, v_reset, detach_reset, h, input_scale, grad_x[t])
            if row is not None:
                if distributed:
                    stats.all_reduce(self.process_group)
                row["seconds"] = time.perf_counter() - start
                self._history.append(row)
                self._pending.append((row, torch.stack([old_beta[t].to(torch.float64),
                                                        (stats.tgc() if tgc else stats.sgv())[0]])))
            # A tensor decay (PLIF's 1 - k, never read on the host) scales the carry itself: the kernels
            # take the scale as a host scalar.
            carry, carry_scale, ref = (decay * delta, 1.0, delta) if isinstance(decay, torch.Tensor) else (
                delta, decay, delta)

        with torch.no_grad():
            layer.beta.copy_(new_beta)
        grad_v0 = decay * carry if need_grad_v0 else carry.new_empty(0)
        return grad_x, grad_v0

    # -- checkpoints and export ---------------------------------------------------------------

    def state_dict(self):
        return {
            "adapt": self.adapt, "every": self.every, "seed": self.seed, "config": vars(self.config),
            "epoch": self.epoch,
            "betas": {name: layer.beta.detach().cpu().clone() for name, layer in self.layers.items()},
            "armed": {name: layer.search_armed for name, layer in self.layers.items()},
            "rng": self.generator.get_state(),
            "gp_states": {f"{name}/{t}": s.state_dict() for (name, t), s in self.gp_states.items()},
            "history": [dict(row) for row in self.history],
        }

    def load_state_dict(self, state):
        """Restores betas, RNG, GP states and history; refuses a state from another model or mode."""
        if not isinstance(state, dict) or "betas" not in state:
            raise ValueError("not an A2SG state_dict")
        state = _plain_names(state)
        if set(state["betas"]) != set(self.layers):
            raise ValueError(f"state_dict holds layers {sorted(state['betas'])}, the model has {sorted(self.layers)}")
        for name, beta in state["betas"].items():
            if beta.shape != self.layers[name].beta.shape:
                raise ValueError(f"beta of layer {name!r} has shape {list(beta.shape)} in the state_dict, "
                                 f"{list(self.layers[name].beta.shape)} in the model")
        for key in ("adapt", "every"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state_dict was saved with {key}={state[key]!r}, this controller has "
                                 f"{getattr(self, key)!r}")
        if state["config"] != vars(self.config):
            raise ValueError(f"state_dict was saved with search config {state['config']}, this controller has "
                             f"{vars(self.config)}")
        with torch.no_grad():
            for name, beta in state["betas"].items():
                self.layers[name].beta.copy_(beta)
                self.layers[name].search_armed = state["armed"][name]
        self.epoch = state["epoch"]
        self.generator.set_state(state["rng"])
        for (name, t), gp_state in self.gp_states.items():
            gp_state.load_state_dict(state["gp_states"][f"{name}/{t}"])
        self._history, self._pending = [dict(row) for row in state["history"]], []

    def export_history(self, path):
        """Writes the history as JSON (``.json``) or CSV (``.csv``), atomically."""
        path = os.fspath(path)
        if path.endswith(".json"):
            text = json.dumps(self.history, indent=1)
        elif path.endswith(".csv"):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
            text = buffer.getvalue()
        else:
            raise ValueError(f"path must end in .json or .csv, got {path!r}")
        atomic_write(path, lambda f: f.write(text), binary=False)


def _plain_name(name):
    """A layer name without DDP ("module.") or torch.compile ("_orig_mod.") prefixes."""
    for prefix in ("module.", "_orig_mod."):
        if name.startswith(prefix):
            return _plain_name(name[len(prefix):])
    return name


def _plain_names(state):
    """An A2SG state_dict with plain layer names: controllers built on a wrapper once saved those."""
    state = dict(state)
    for key in ("betas", "armed"):
        state[key] = {_plain_name(name): value for name, value in state[key].items()}
    state["gp_states"] = {_plain_name(name): value for name, value in state["gp_states"].items()}
    state["history"] = [dict(row, layer=_plain_name(row["layer"])) for row in state["history"]]
    return state


def _controller_for(search_key):
    owner = search_site_owner(search_key)
    if owner is None:
        raise RuntimeError(f"no live A2SG controller for search key {search_key}: keep the controller alive "
                           "while the model trains")
    return owner[0], owner[1]


# The searching op waits on the host (search_beta needs each evaluation's values there), so it must
# never be captured into a CUDA graph: tagged cudagraph_unsafe, torch.compile's CUDA graphs
# (mode="reduce-overhead") partition around it or skip the graph that holds it. Torch versions
# without the tag cannot be told: do not capture an armed iteration yourself there (docs/search.md).
CUDAGRAPH_UNSAFE = ({"tags": (torch.Tag.cudagraph_unsafe,)} if hasattr(torch.Tag, "cudagraph_unsafe")
                    and "tags" in inspect.signature(torch.library.custom_op).parameters else {})


@torch.library.custom_op("a2sg_triton::lif_bwd_search", mutates_args=(), **CUDAGRAPH_UNSAFE)
def lif_bwd_search_op(grad_spikes: torch.Tensor, d: torch.Tensor, beta: torch.Tensor,
                      grad_v_last: Optional[torch.Tensor], surrogate_id: int, decay: float, input_scale: float,
                      v_th: float, hard_reset: bool, v_reset: float, detach_reset: bool, h: float,
                      need_grad_v0: bool, backend: str, search_key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The LIF backward of an armed layer: searches its betas, writes them, returns the gradients."""
    controller, name = _controller_for(search_key)
    return controller.search_backward(name, grad_spikes, d, beta, grad_v_last, surrogate_id, decay, input_scale,
                                      v_th, hard_reset, v_reset, detach_reset, h, need_grad_v0, backend)


@lif_bwd_search_op.register_fake
def _(*args):
    return lif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none


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
    controller, name = _controller_for(search_key)
    decay = 1 - torch.sigmoid(w.to(math_dtype(grad_spikes.dtype)))
    controller.search_backward(name, grad_spikes, d, beta, grad_v_last, surrogate_id, decay, 1.0, v_th, hard_reset,
                               v_reset, detach_reset, h, False, backend)
    beta = controller.layers[name].beta.to(device=beta.device, dtype=beta.dtype)
    return PLIF_BWD[backend](grad_spikes, d, x, w, v0, beta, grad_v_last, surrogate_id, decay_input, v_th, hard_reset,
                             v_reset, detach_reset, h, need_grad_v0)


@plif_bwd_search_op.register_fake
def _(*args):
    return plif_bwd_fake(*args[:-1])  # the plain backward's shapes; search_key changes none
