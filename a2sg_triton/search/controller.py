"""The A²SG controller: searches every LIF, PLIF and I-LIF layer's widths inside its own backward (Alg. A1).

At an armed iteration each ``nn.LIF`` layer's backward runs ``a2sg_triton::lif_bwd_search``
instead of the plain LIF backward (each neuron owns its searching op; they find this controller in
the search-site registry, ``a2sg_triton.ops.search_sites``, and call ``search_backward`` or
``search_levels_backward``). Autograd reaches the layers top-down, as Alg. A1 needs. For
t = T-1 ... 0 the op evaluates the candidate widths with the fused statistics kernel, lets
``search_beta`` choose beta_t, computes delta[t] with it (the TGC reference and the carry for t-1)
and so produces this iteration's gradients with the new betas, which it then writes into the
layer's ``beta`` buffer. The op is opaque to torch.compile, so a compiled model searches too.
PLIF searches as LIF with its current leak; I-LIF searches per (t, level), the level playing the
timestep's part (``A2SG.search_levels_backward``).
"""

import csv
import io
import itertools
import json
import os
import time
import weakref
from typing import Any, Optional

import torch

from ..files import StrPath, atomic_write
from ..nn import SearchedNeuron, unwrap_model
from ..ops.backend import math_dtype
from ..ops.checks import positive_and_finite
from ..ops.ilif import ILIFParams
from ..ops.lif import LIFParams, StepParams, step_params
from ..ops.search_sites import forget_search_sites, register_search_site, search_site_owner
from ..ops.stats import CANDIDATE_STATS, DELTA_STATS
from .bo import GPState, SearchConfig, search_beta

ADAPT_MODES = ("none", "spatial", "temporal", "spatiotemporal")
HISTORY_FIELDS = ("epoch", "layer", "t", "level", "metric", "beta", "previous_beta", "best_beta", "best_value",
                  "metric_at_beta", "predicted", "fell_back", "flat", "gp_seconds", "seconds")

_next_key = itertools.count()


class A2SG:
    """Adaptive surrogate widths for every ``a2sg_triton.nn.LIF``, ``nn.PLIF`` and ``nn.ILIF`` in ``model``.

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

    Args:
        model: the network; every ``nn.LIF``, ``nn.PLIF`` and ``nn.ILIF`` in it is adapted.
        adapt: "none", "spatial", "temporal" or "spatiotemporal" (A²SG with ``asy``).
        strategy: "bo" (Alg. A2: random draws, then one BoTorch LogEI step) or "grid".
        n_obs, n_eval, radius, beta_range: the search's sizes and range (docs/search.md).
        every: search every this many epochs.
        seed: the search's random draws.
        gp_fit: "fixed", "warm" or "fit" (None: SearchConfig's default; docs/search-gp-cost.md).
        process_group: the torch.distributed group whose ranks merge their statistics.
    """

    def __init__(self, model: torch.nn.Module, *, adapt: str = "spatiotemporal", strategy: str = "bo",
                 n_obs: int = 100, n_eval: int = 150, radius: float = 0.05,
                 beta_range: tuple[float, float] = (0.05, 1.0), every: int = 1, seed: int = 0,
                 gp_fit: Optional[str] = None, process_group: Optional[Any] = None):
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
        fit = {} if gp_fit is None else {"gp_fit": gp_fit}  # None: SearchConfig's measured default
        self.config = SearchConfig(strategy=strategy, n_obs=n_obs, n_eval=n_eval, radius=radius,
                                   beta_range=beta_range, **fit)
        self.adapt, self.every, self.seed, self.process_group = adapt, every, seed, process_group
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SearchedNeuron)}
        if not self.layers:
            raise ValueError("model has no a2sg_triton.nn.LIF, nn.PLIF or nn.ILIF layer to adapt")
        # Fresh keys for this controller's own layers: a key never outlives its controller, and a
        # compiled graph that bakes one in stays valid across epochs.
        keys = [next(_next_key) for _ in self.layers]
        for key, (name, layer) in zip(keys, self.layers.items()):
            register_search_site(key, self, name, layer)
        weakref.finalize(self, forget_search_sites, keys)
        self.generator = torch.Generator().manual_seed(seed)
        # one GP per searched width: (name, t) for a [T] beta, (name, t, level - 1) for I-LIF's [T, D]
        self.gp_states = {(name, *index): GPState() for name, layer in self.layers.items()
                          for index in itertools.product(*map(range, layer.beta.shape))}
        self._history: list[dict[str, Any]] = []
        # History rows whose device-side values (the previous beta_t and the metric at the chosen
        # beta) are not on the host yet: (row, float64 tensor [2]). They come along with the next
        # search's one device-to-host copy, or when the history is read.
        self._pending: list[tuple[dict[str, Any], torch.Tensor]] = []
        self.epoch: Optional[int] = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per (search, layer, timestep), fields HISTORY_FIELDS (docs/search.md)."""
        if self._pending:
            self._fetch(None)
        return self._history

    def search_log(self, since: int = 0) -> dict[str, int]:
        """Counts over the history rows from index ``since`` on (one epoch's searches, say): searches,
        GP choices that fell back, flat curves (width kept), and the widths of every layer now within
        1% of the range's width from its lower or upper end."""
        rows = self.history[since:]
        lo, hi = self.config.beta_range
        margin = 0.01 * (hi - lo)
        betas = torch.cat([layer.beta.detach().double().cpu().flatten() for layer in self.layers.values()])
        return {"searches": len(rows), "fell_back": sum(bool(r["fell_back"]) for r in rows),
                "flat": sum(bool(r.get("flat")) for r in rows),  # rows saved before "flat" existed lack it
                "at_lower_end": int((betas <= lo + margin).sum()), "at_upper_end": int((betas >= hi - margin).sum()),
                "widths": betas.numel()}

    def _fetch(self, values: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
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

    def begin_epoch(self, epoch: int) -> None:
        """Arms the search for the next backward of every layer when ``epoch % every == 0``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self._check_ownership()
        self.epoch = epoch
        armed = self.adapt != "none" and epoch % self.every == 0
        for layer in self.layers.values():
            layer.search_armed = armed

    def _check_ownership(self) -> None:
        for name, layer in self.layers.items():
            owner = search_site_owner(layer.search_key)
            if owner is None or owner.controller is not self or owner.layer is not layer:
                raise RuntimeError(f"layer {name!r} is now adapted by another A2SG controller (one created "
                                   "for this model later); use that controller")

    def metric_at(self, t: int, T: int) -> Optional[str]:
        """'sgv', 'tgc' or None (keep beta_t) for timestep t of T under this controller's mode."""
        return self._metric(first=t == T - 1)

    def _metric(self, first: bool) -> Optional[str]:
        """The metric of a search site: ``first`` is the site each backward visits first (t = T-1;
        for I-LIF, t = T-1 at the top level D), every later site is judged against the one before it."""
        if self.adapt == "spatial":
            return "sgv"
        if self.adapt == "temporal":
            return None if first else "tgc"
        if self.adapt == "spatiotemporal":
            return "sgv" if first else "tgc"
        return None

    # -- the search backward ------------------------------------------------------------------

    def search_backward(self, name: str, grad_spikes: torch.Tensor, d: torch.Tensor, beta: torch.Tensor,
                        grad_v_last: Optional[torch.Tensor], p: LIFParams, *, need_grad_v0: bool,
                        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Alg. A1 for one layer: per t (top-down in time) search beta_t, then delta[t] with it.

        The arguments are the LIF backward op's (``p.decay`` may be a 0-d tensor: PLIF's 1 - k); returns
        (grad_x [T, N], grad_v0 [N] or [0]) with the chosen widths, which are written into the layer.

        One host sync per searched (layer, t): the candidates' metric values (search_beta needs
        them on the host). delta[t] for the chosen width comes from one fused pass
        (``DELTA_STATS``) that also writes grad_x[t] and yields the statistics recorded as
        metric_at_beta; the widths stay on the device (a kept beta_t is never read on the host).
        """
        T, N = grad_spikes.shape
        if N == 0:  # no neuron (an empty batch): no statistics, nothing to search
            return torch.empty_like(grad_spikes), grad_spikes.new_empty((0,), dtype=math_dtype(grad_spikes.dtype))
        site = _SiteSearch(self, name, beta, step_params(p), p.input_scale, backend)
        decay = p.decay
        grad_x = torch.empty_like(grad_spikes)
        carry, carry_scale, ref = grad_v_last, 1.0, None  # the carry is carry_scale * carry = decay * delta[t+1]
        for t in reversed(range(T)):
            delta = site.search((t,), d[t], grad_spikes[t], carry, ref, grad_x[t], carry_scale=carry_scale)
            # A tensor decay (PLIF's 1 - k, never read on the host) scales the carry itself: the kernels
            # take the scale as a host scalar.
            carry, carry_scale, ref = (decay * delta, 1.0, delta) if isinstance(decay, torch.Tensor) else (
                delta, decay, delta)
        site.write_betas()
        grad_v0 = decay * delta if need_grad_v0 else delta.new_empty(0)  # delta: delta[0]
        return grad_x, grad_v0

    def search_levels_backward(self, name: str, grad_counts: torch.Tensor, u: torch.Tensor, beta: torch.Tensor,
                               grad_v_last: Optional[torch.Tensor], p: ILIFParams, *, backend: str) -> None:
        """The I-LIF search (docs/neurons.md): the level plays the timestep's part. Sites are visited
        t = T-1 ... 0 and, within t, level i = D ... 1; site (t, i) searches beta[t, i-1] on
        delta_i[t], the local gradient with the window of level i alone (threshold offset
        (i - 1/2) v_th), and the next site's TGC reference is that delta_i[t]. The carry into t-1 is
        decay * delta[t] with every level's chosen window: delta[t] = sum_i delta_i[t] - (D-1) c[t],
        since each delta_i[t] holds the carry c[t] once. Writes the chosen widths into the layer."""
        T, N = grad_counts.shape
        if N == 0:
            return
        step = StepParams(p.surrogate_id, p.v_th, False, 0.0, p.detach_reset, p.h)
        site = _SiteSearch(self, name, beta, step, 1.0, backend)
        scratch = torch.empty_like(grad_counts[0])  # the statistics pass writes a gradient nobody reads
        carry, ref = grad_v_last, None
        for t in reversed(range(T)):
            carry_scale = 1.0 if t == T - 1 else p.decay
            windows = []
            for level in range(p.levels, 0, -1):
                ref = site.search((t, level - 1), u[t], grad_counts[t], carry, ref, scratch, carry_scale=carry_scale,
                                  th_offset=(level - 0.5) * p.v_th)
                windows.append(ref)
            delta = sum(windows[1:], windows[0])  # summed level D first, as the sites were visited
            if carry is not None and p.levels > 1:
                delta = delta - ((p.levels - 1) * carry_scale) * carry.to(delta.dtype)
            carry = delta
        site.write_betas()

    # -- checkpoints and export ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "adapt": self.adapt, "every": self.every, "seed": self.seed, "config": vars(self.config),
            "epoch": self.epoch,
            "betas": {name: layer.beta.detach().cpu().clone() for name, layer in self.layers.items()},
            "armed": {name: layer.search_armed for name, layer in self.layers.items()},
            "rng": self.generator.get_state(),
            "gp_states": {_gp_key(key): s.state_dict() for key, s in self.gp_states.items()},
            "history": [dict(row) for row in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores betas, RNG, GP states and history; refuses a state from another model or mode.

        All or nothing: every part is checked (and the GP states and RNG built aside) before the
        model's widths or anything of the controller changes.

        Raises:
            ValueError: a state of another model, mode or search config, or a malformed one.
        """
        keys = ("adapt", "every", "config", "epoch", "betas", "armed", "rng", "gp_states", "history")
        if not isinstance(state, dict) or not set(keys) <= set(state):
            missing = sorted(set(keys) - set(state)) if isinstance(state, dict) else "everything"
            raise ValueError(f"not an A2SG state_dict (missing {missing})")
        if not all(isinstance(state[part], dict) for part in ("betas", "armed", "gp_states")):
            raise ValueError("not an A2SG state_dict (betas, armed and gp_states must be dicts)")
        history = state["history"]
        if not isinstance(history, list) or not all(isinstance(row, dict) and "layer" in row for row in history):
            raise ValueError("the state_dict's history must be a list of dicts, each naming its layer")
        state = _plain_names(state)
        if set(state["betas"]) != set(self.layers) or set(state["armed"]) != set(self.layers):
            raise ValueError(f"state_dict holds layers {sorted(state['betas'])}, the model has {sorted(self.layers)}")
        for name, beta in state["betas"].items():
            if not isinstance(beta, torch.Tensor) or beta.shape != self.layers[name].beta.shape:
                shape = list(beta.shape) if isinstance(beta, torch.Tensor) else type(beta).__name__
                raise ValueError(f"beta of layer {name!r} has shape {shape} in the state_dict, "
                                 f"{list(self.layers[name].beta.shape)} in the model")
            if not positive_and_finite(beta.detach().cpu()):
                raise ValueError(f"beta of layer {name!r} in the state_dict is not finite and > 0")
            if not isinstance(state["armed"][name], bool):
                raise ValueError(f"armed of layer {name!r} in the state_dict is not a bool")
        for option in ("adapt", "every"):
            if state[option] != getattr(self, option):
                raise ValueError(f"state_dict was saved with {option}={state[option]!r}, this controller has "
                                 f"{getattr(self, option)!r}")
        if state["config"] != vars(self.config):
            raise ValueError(f"state_dict was saved with search config {state['config']}, this controller has "
                             f"{vars(self.config)}")
        gp_states = {}
        for key in self.gp_states:
            if _gp_key(key) not in state["gp_states"]:
                raise ValueError(f"the state_dict has no GP state for {_gp_key(key)!r}")
            gp_states[key] = GPState()
            gp_states[key].load_state_dict(state["gp_states"][_gp_key(key)])
        generator = torch.Generator()
        try:
            generator.set_state(state["rng"])
        except (TypeError, RuntimeError) as error:
            raise ValueError(f"the state_dict's rng is not a torch.Generator state ({error})") from None
        epoch = state["epoch"]
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ValueError(f"the state_dict's epoch must be None or an int >= 0, got {epoch!r}")
        history = state["history"]
        # everything checked: now change the model and the controller
        with torch.no_grad():
            for name, beta in state["betas"].items():
                self.layers[name].beta.copy_(beta)
                self.layers[name].search_armed = state["armed"][name]
        self.epoch = epoch
        self.generator.set_state(generator.get_state())
        self.gp_states = gp_states
        self._history, self._pending = [dict(row) for row in history], []

    def export_history(self, path: StrPath) -> None:
        """Writes the history as JSON (``.json``) or CSV (``.csv``), atomically."""
        name = os.fspath(path)
        if name.endswith(".json"):
            text = json.dumps(self.history, indent=1)
        elif name.endswith(".csv"):
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
            text = buffer.getvalue()
        else:
            raise ValueError(f"path must end in .json or .csv, got {name!r}")
        atomic_write(name, lambda f: f.write(text), binary=False)


def _gp_key(key):
    """A gp_states key as the state_dict writes it: "name/t" or "name/t/column"."""
    return "/".join(map(str, key))


class _SiteSearch:
    """One layer's armed backward, one search site at a time: the chosen widths gather in a copy of
    beta on the device and reach the layer's buffer at the end (``write_betas``)."""

    def __init__(self, controller, name, beta, step: StepParams, input_scale, backend):
        self.controller, self.name, self.layer = controller, name, controller.layers[name]
        self.old_beta = beta.detach()
        self.new_beta = self.old_beta.clone()  # chosen widths are written in on the device, no host round trip
        self.stats_fn, self.step_fn = CANDIDATE_STATS[backend], DELTA_STATS[backend]
        self.step, self.input_scale = step, input_scale
        self.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.first = True

    def search(self, index, u, grad_s, carry, ref, grad_x, *, carry_scale, th_offset=0.0):
        """Searches the width beta[index] (index (t,) or (t, level - 1)) on the local gradient of the
        window centred at u = th_offset (LIF passes d = u - v_th and 0; I-LIF u and (i - 1/2) v_th),
        unless the mode keeps it; returns that local gradient with the width now chosen (and writes
        input_scale times it into grad_x)."""
        controller = self.controller
        metric = controller._metric(self.first)
        self.first = False
        tgc = metric == "tgc"
        row = None
        if metric is not None:
            start = time.perf_counter()

            def evaluate(betas):
                stats = self.stats_fn(u, grad_s, carry, ref if tgc else None, betas, self.step, th_offset=th_offset,
                                      carry_scale=carry_scale)
                if self.distributed:
                    stats.all_reduce(controller.process_group)
                return controller._fetch(stats.tgc() if tgc else stats.sgv())

            result = search_beta(evaluate, maximize=tgc, config=controller.config, generator=controller.generator,
                                 current=None, gp_state=controller.gp_states[(self.name, *index)])
            if result.beta is not None:
                self.new_beta[index] = result.beta
            row = {"epoch": controller.epoch, "layer": self.name, "t": index[0],
                   "level": index[1] + 1 if len(index) > 1 else None, "metric": metric, "beta": result.beta,
                   "previous_beta": None, "best_beta": result.best_beta, "best_value": result.best_value,
                   "metric_at_beta": None, "predicted": result.predicted, "fell_back": result.fell_back,
                   "flat": result.flat, "gp_seconds": result.gp_seconds}
        delta, stats = self.step_fn(u, grad_s, carry, ref if tgc else None, self.new_beta[index].reshape(1), self.step,
                                    grad_x, carry_scale=carry_scale, th_offset=th_offset, input_scale=self.input_scale)
        if row is not None:
            if self.distributed:
                stats.all_reduce(controller.process_group)
            row["seconds"] = time.perf_counter() - start
            controller._history.append(row)
            controller._pending.append((row, torch.stack([self.old_beta[index].to(torch.float64),
                                                          (stats.tgc() if tgc else stats.sgv())[0]])))
        return delta

    def write_betas(self):
        with torch.no_grad():
            self.layer.beta.copy_(self.new_beta)


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
