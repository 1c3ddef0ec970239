"""Activity analysis of a spiking model built from ``a2sg_triton.nn.LIF``, ``nn.PLIF`` or ``nn.ILIF`` layers
(every ``SearchedNeuron`` counts as a spiking layer; "LIF layer" below means any of them): spike counts and
their distribution (the paper's Table A1), energy, membrane statistics (Table A2's RMD, Eq. A10, and
Theorem 2's condition, Fig. 4), weight histograms (Fig. 7), spike deletion (Table A3) and t-SNE of
a layer's output per timestep (Fig. 6), with a ``plot_*`` helper for each.

An I-LIF layer emits an integer count 0 … D per neuron and step. Throughout, a count c is c spikes
(c unit events: E-SpikeFormer's reading, in which the count is expanded into c binary spikes), so
spike totals, firing rates, energy and deletion count unit events; a binary layer is D = 1.

Every function that needs data takes ``(model, loader, T, device, ...)``; the loader yields
``(x, y)`` with static ``x`` [B, C, H, W] or sequences [B, T, C, H, W] (``model_input``). The model
runs in eval mode under ``torch.no_grad()``, every module's training flag is restored afterwards,
hooks are removed even on error, and the results are plain dicts, lists and floats (JSON-ready).
Timesteps are 0-based (the paper's t = 1 … T are t = 0 … T-1 here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import numpy as np
import torch
from torch import nn

from ..models import model_input
from ..nn import ILIF, LIF, PLIF, SearchedNeuron
from ..files import StrPath
from ..figures import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["E_AC_PJ", "E_MAC_PJ", "FIRST_LAYER", "energy", "membrane_potentials", "membrane_statistics", "model_input",
           "plot_firing_rates", "plot_membrane_statistics", "plot_spike_deletion", "plot_spike_distribution",
           "plot_tsne", "plot_weight_histograms", "spike_deletion", "spike_statistics", "synaptic_layers", "tsne_features",
           "weight_statistics"]

# Energy per operation at 45 nm (Horowitz 2014), the values SNN papers use: a multiply-accumulate
# (real-valued input) and an accumulate (a spike adds a weight).
E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# The layers with weights whose operations are counted.
SYNAPTIC = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
Synaptic = Union[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear]
# How often energy() charges the first layer's MACs: at every one of the T steps, or once.
FIRST_LAYER = ("every_step", "once")

# What the instruments take as data: (x, y) batches, x [B, C, H, W] or [B, T, C, H, W], y [B] (a DataLoader).
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def membrane_potentials(lif: Union[LIF, PLIF, ILIF], x: torch.Tensor) -> torch.Tensor:
    """The membrane potential u (before the reset) of ``lif`` for its input currents, with
    v[-1] = 0, from the layer's own forward: for LIF and PLIF u - v_th (``LIF.membrane``,
    ``PLIF.membrane``, whose ``>= 0`` are exactly its spikes) plus v_th, so within one float64 rounding
    of the u the layer computed; for I-LIF u itself (``ILIF.membrane``, whose
    ``round(clip(u / v_th, 0, D))`` are exactly its counts).

    Args:
        lif: the spiking layer.
        x: its input currents [T, ...].

    Returns:
        u, float64 [T, ...].
    """
    u = lif.membrane(x).double()
    return u if isinstance(lif, ILIF) else u + lif.v_th


def spike_statistics(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str],
                     max_batches: Optional[int] = None) -> dict[str, Any]:
    """Spikes of every LIF layer (by module name) over the loader's samples; an I-LIF count c is c
    spikes (the module docstring), D (``levels``) is 1 for LIF and PLIF.

    Per layer: ``neuron`` (the class name), ``levels`` D, ``neurons`` (per sample and timestep),
    ``spikes_per_sample``, ``spikes_per_sample_per_t`` [T], ``firing_rate`` = spikes / (neurons·T·samples)
    (for I-LIF the mean count per neuron and step, in [0, D]; ``firing_rate_definition`` says which),
    ``spike_count_distribution`` [T·D+1]: entry k is the fraction of (sample, neuron) pairs whose
    neuron emitted exactly k spikes over the T steps. That is our reading of Table A1's "percentage of
    samples with the corresponding spike counts" (its rows 0 … 4 at T = 4 sum to 100%). And
    ``step_count_distribution`` [D+1]: entry k is the fraction of (sample, neuron, step) triples with
    k spikes in that step (for LIF and PLIF 1 - rate and the rate; for I-LIF how the levels are used).

    ``input_rates`` gives, per Conv/Linear layer, the mean of its input per element and timestep:
    for a layer fed by spikes (also through average pooling) the firing rate ``energy`` needs.

    Args:
        model: takes [T, B, ...]; its spiking layers are its ``SearchedNeuron`` modules.
        loader: (x, y) batches (module docstring).
        T: timesteps.
        device: where the batches go (the model's device).
        max_batches: at most this many batches (None: all).

    Returns:
        {"T", "samples", "spikes_per_sample", "firing_rate", "layers": {name: per-layer dict},
        "input_rates": {Conv/Linear name: rate}}.
    """
    lifs = _lifs(model)
    levels = {name: _levels(lif) for name, lif in lifs.items()}
    counts = {name: torch.zeros(T * levels[name] + 1, dtype=torch.float64) for name in lifs}
    step_counts = {name: torch.zeros(levels[name] + 1, dtype=torch.float64) for name in lifs}
    per_t = {name: torch.zeros(T, dtype=torch.float64) for name in lifs}
    neurons = dict.fromkeys(lifs, 0)
    input_sums = {name: [0.0, 0] for name in synaptic_layers(model)}

    def lif_hook(name):
        def hook(module, inputs, spikes):
            per_neuron = spikes.sum(0).reshape(spikes.shape[1], -1).long()  # [B, neurons]: spikes over T
            counts[name] += torch.bincount(per_neuron.flatten(), minlength=T * levels[name] + 1).double().cpu()
            step_counts[name] += torch.bincount(spikes.flatten().long(), minlength=levels[name] + 1).double().cpu()
            per_t[name] += spikes.flatten(1).sum(1).double().cpu()
            neurons[name] = spikes[0, 0].numel()
        return hook

    def input_hook(name):
        def hook(module, inputs):
            input_sums[name][0] += float(inputs[0].double().sum())
            input_sums[name][1] += inputs[0].numel()
        return hook

    hooks: list[tuple[Callable[..., Any], Any]] = [(m.register_forward_hook, lif_hook(name))
                                                  for name, m in lifs.items()]
    hooks += [(m.register_forward_pre_hook, input_hook(name)) for name, m in synaptic_layers(model).items()]
    samples = 0
    with _inference(model), _hooked(hooks):
        for x, _ in _batches(loader, T, device, max_batches):
            model(x)
            samples += x.shape[1]
    layers: dict[str, dict[str, Any]] = {}
    for name, lif in lifs.items():
        total = float(per_t[name].sum()) / samples
        layers[name] = {
            "neuron": type(lif).__name__,
            "levels": levels[name],
            "neurons": neurons[name],
            "spikes_per_sample": total,
            "spikes_per_sample_per_t": (per_t[name] / samples).tolist(),
            "firing_rate": total / (neurons[name] * T),
            "firing_rate_definition": _rate_definition(levels[name]),
            "spike_count_distribution": (counts[name] / counts[name].sum()).tolist(),
            "step_count_distribution": (step_counts[name] / step_counts[name].sum()).tolist(),
        }
    total = sum(layer["spikes_per_sample"] for layer in layers.values())
    return {
        "T": T,
        "samples": samples,
        "spikes_per_sample": total,
        "firing_rate": total / (T * sum(neurons.values())),
        "layers": layers,
        "input_rates": {name: s / n for name, (s, n) in input_sums.items()},
    }


def energy(model: nn.Module, spike_stats: Mapping[str, Any], input_shape: Sequence[int],
           first_layer: str = "every_step") -> dict[str, Any]:
    """Inference energy per sample, in mJ, with the usual SNN convention (45 nm, E_MAC = 4.6 pJ,
    E_AC = 0.9 pJ): E = E_MAC·FLOPs(first layer) + E_AC·SOPs(every later layer).

    Direct encoding feeds real values to the first Conv/Linear layer (in execution order), so its
    MACs count as FLOPs (also for event input). ``first_layer="every_step"`` (the default and the
    usual convention) charges them at each of the T steps, as the model computes them; under direct
    encoding that layer sees the same image at every step, so hardware that computes it once pays
    1/T of that: ``first_layer="once"`` (static input only; event frames differ per step). The
    result's ``convention`` says which was used. Every later Conv/Linear layer is fed
    by spikes and does one accumulate per spike and fan-out: SOPs = input firing rate × T × its MACs
    per timestep (= input spikes × fan-out, up to a conv's zero padding). An I-LIF count c is c
    spikes, so c accumulates per fan-out (E-SpikeFormer's reading: the count is expanded into c
    binary spikes; the measured input rate is then the mean count). The rate is the one measured
    at the layer's own input (``spike_stats["input_rates"]``), so average pooling and residual
    shortcuts need no mapping from layer to LIF. BN is taken as folded into the conv; biases,
    pooling, residual additions, products of two spike tensors (spiking attention's Q Kᵀ V) and the
    neuron updates are not counted. MACs are counted with forward hooks on one sample of
    ``input_shape`` (as the loader yields it, without the batch: [C, H, W] or [T, C, H, W]).

    Args:
        model: the model ``spike_stats`` was measured on.
        spike_stats: a ``spike_statistics`` result (its T and input rates).
        input_shape: one sample's shape, [C, H, W] or [T, C, H, W].
        first_layer: "every_step" or "once" (FIRST_LAYER).

    Returns:
        {"convention", "first_layer", "e_mac_pj", "e_ac_pj", "flops", "sops", "energy_mj",
        "layers": {name: {"op", "macs_per_timestep", "input_rate", "ops", "energy_mj"}}}.
    """
    if first_layer not in FIRST_LAYER:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER}, got {first_layer!r}")
    if first_layer == "once" and len(input_shape) == 4:
        raise ValueError(f"first_layer='once' needs static input; input_shape {tuple(input_shape)} is a sequence "
                         "[T, C, H, W], whose frames differ per step")
    T = spike_stats["T"]
    synaptic = synaptic_layers(model)
    macs: dict[str, int] = {}  # total over the T steps of one sample; insertion order is execution order

    def hook(name):
        def count(module, inputs, output):
            fan_in = module.in_features if isinstance(module, nn.Linear) else (
                module.in_channels // module.groups * math.prod(module.kernel_size))
            macs[name] = macs.get(name, 0) + output.numel() * fan_in
        return count

    device = next(model.parameters()).device
    with _inference(model), _hooked([(m.register_forward_hook, hook(name)) for name, m in synaptic.items()]):
        model(model_input(torch.zeros(1, *input_shape, device=device), T))
    layers: dict[str, dict[str, Any]] = {}
    for i, (name, layer_macs) in enumerate(macs.items()):
        if i == 0:
            rate, ops, e_pj = None, layer_macs / T if first_layer == "once" else layer_macs, E_MAC_PJ
        else:
            if name not in spike_stats["input_rates"]:
                raise ValueError(f"spike_stats has no input rate for layer {name!r}; compute it on this model")
            rate = spike_stats["input_rates"][name]
            ops, e_pj = rate * layer_macs, E_AC_PJ
        layers[name] = {"op": "MAC" if i == 0 else "AC", "macs_per_timestep": layer_macs / T, "input_rate": rate,
                        "ops": ops, "energy_mj": ops * e_pj * 1e-9}
    flops = sum(layer["ops"] for layer in layers.values() if layer["op"] == "MAC")
    sops = sum(layer["ops"] for layer in layers.values() if layer["op"] == "AC")
    counts = any(isinstance(m, ILIF) for m in model.modules())
    return {
        "convention": "E = E_MAC*FLOPs(first layer) + E_AC*SOPs(rest), 45 nm; direct encoding, first layer's MACs "
                      + ("once (its input repeats over T)" if first_layer == "once" else "at every one of the T steps")
                      + ("; an I-LIF count c is c spikes (c ACs per fan-out)" if counts else "")
                      + "; BN folded; pooling, biases, spike-by-spike products (attention) and neuron updates not "
                        "counted",
        "first_layer": first_layer,
        "e_mac_pj": E_MAC_PJ,
        "e_ac_pj": E_AC_PJ,
        "flops": flops,
        "sops": sops,
        "energy_mj": sum(layer["energy_mj"] for layer in layers.values()),
        "layers": layers,
    }


def membrane_statistics(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str],
                        max_batches: Optional[int] = None) -> dict[str, dict[str, Any]]:
    """Membrane potential statistics of every LIF layer and Theorem 2's condition.

    u (before the reset) is recomputed from each layer's input (``membrane_potentials``). Per layer:
    ``neuron`` (the class name), ``v_th``, ``mu_u`` and ``sigma_u`` (population std) over every t,
    sample and neuron, the same per t, the layer's ``beta`` buffer, and RMD = (θ - mu_u) / sigma_u
    (Eq. A10) with θ = ``rmd_threshold``, the membrane at which the neuron starts to fire: v_th for
    LIF and PLIF (the paper's RMD); for I-LIF the lowest of its level thresholds θ_i = (i - ½)·v_th,
    θ_1 = v_th/2, below which its count is 0 (at D = 1 an I-LIF is a LIF firing at v_th/2, and this is
    that LIF's RMD).

    LIF and PLIF: ``theorem2`` holds, for the mean of the layer's beta buffer, L = 2β (the window
    [a, b] = [v_th - β, v_th + β]), a = v_th - β, κ = a - mu_u, L·κ, sigma_u² and whether
    L·κ > sigma_u²; ``theorem2_per_t`` the same for each β_t (with the pooled mu_u and sigma_u, as
    Fig. 4 plots one pair per layer). I-LIF: both are None, not applicable: the theorem compares
    surrogates on one window above a Gaussian u, while I-LIF's derivative sums D windows. Instead
    I-LIF layers have ``levels`` D, ``level_thresholds`` [θ_1 … θ_D] and ``saturated_fraction``, the
    fraction of (t, sample, neuron) with u > (D + ½)·v_th: where the clip at D cuts the count (its
    unclipped rounding would exceed D).

    Args:
        model: takes [T, B, ...]; its spiking layers are its ``SearchedNeuron`` modules.
        loader: (x, y) batches (module docstring).
        T: timesteps.
        device: where the batches go (the model's device).
        max_batches: at most this many batches (None: all).

    Returns:
        {layer name: its statistics, as above}.
    """
    # every SearchedNeuron of a2sg_triton.nn is one of these (v_th, beta and membrane; I-LIF's D)
    lifs = cast("dict[str, Union[LIF, PLIF, ILIF]]", _lifs(model))
    # per t: count, Σu, Σu² and, for I-LIF, the saturated count
    sums = {name: torch.zeros(4 if isinstance(lif, ILIF) else 3, T, dtype=torch.float64) for name, lif in lifs.items()}

    def hook(name):
        def accumulate(module, inputs):
            u = membrane_potentials(module, inputs[0]).flatten(1)  # [T, samples·neurons]
            count = torch.full((T,), u.shape[1], dtype=torch.float64, device=u.device)
            rows = [count, u.sum(1), (u * u).sum(1)]
            if isinstance(module, ILIF):
                rows.append((u > (module.levels + 0.5) * module.v_th).sum(1, dtype=torch.float64))
            sums[name] += torch.stack(rows).cpu()
        return accumulate

    with _inference(model), _hooked([(m.register_forward_pre_hook, hook(name)) for name, m in lifs.items()]):
        for x, _ in _batches(loader, T, device, max_batches):
            model(x)
    layers: dict[str, dict[str, Any]] = {}
    for name, lif in lifs.items():
        n, s1, s2 = sums[name][:3]
        mu, sigma = _mean_std(n.sum(), s1.sum(), s2.sum())
        mu_t, sigma_t = zip(*(_mean_std(*sums[name][:3, t]) for t in range(T)))
        beta = lif.beta.tolist()
        ilif = isinstance(lif, ILIF)
        threshold = lif.v_th / 2 if ilif else lif.v_th
        layers[name] = {
            "neuron": type(lif).__name__,
            "v_th": lif.v_th,
            "rmd_threshold": threshold,
            "mu_u": mu,
            "sigma_u": sigma,
            "rmd": (threshold - mu) / sigma if sigma > 0 else math.inf,
            "mu_u_per_t": list(mu_t),
            "sigma_u_per_t": list(sigma_t),
            "beta": beta,
            "theorem2": None if ilif else _theorem2(sum(beta) / len(beta), lif.v_th, mu, sigma),
            "theorem2_per_t": None if ilif else [_theorem2(b, lif.v_th, mu, sigma) for b in beta],
        }
        if isinstance(lif, ILIF):
            layers[name].update(levels=lif.levels, level_thresholds=[(i + 0.5) * lif.v_th for i in range(lif.levels)],
                                saturated_fraction=float(sums[name][3].sum() / n.sum()))
    return layers


def weight_statistics(model: nn.Module, bins: int = 50) -> dict[str, dict[str, Any]]:
    """Per Conv/Linear layer (by module name), its weight's (not bias) mean, std (population), min,
    max, count and histogram (``bins`` equal-width bins: ``edges`` [bins+1], ``counts`` [bins]), Fig. 7."""
    stats = {}
    for name, module in synaptic_layers(model).items():
        w = module.weight.detach().cpu().double().numpy().ravel()
        counts, edges = np.histogram(w, bins=bins)
        stats[name] = {"mean": float(w.mean()), "std": float(w.std()), "min": float(w.min()),
                       "max": float(w.max()), "count": int(w.size), "edges": edges.tolist(),
                       "counts": counts.tolist()}
    return stats


def spike_deletion(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str],
                   *, fractions: Iterable[float] = (0.0, 0.1, 0.2, 0.3), seed: int = 0,
                   max_batches: Optional[int] = None) -> list[dict[str, Any]]:
    """Accuracy and spikes under deletion noise (Table A3): every LIF layer's output spikes are each
    zeroed independently with probability ``fraction`` (one ``torch.Generator`` seeded with ``seed``
    per fraction), so the next layer sees only the kept spikes. An I-LIF count c is c spikes, each
    deleted on its own: the count that goes on is Binomial(c, 1 - fraction), not c or 0 (deleting
    one spike lowers the count by one).

    Returns one dict per fraction: ``accuracy``, ``spikes_per_sample`` (kept spikes, the ones that
    reach the next layer; 0 at fraction 1), ``emitted_spikes_per_sample`` (before deletion: it also
    changes, since every layer after the first receives fewer spikes) and both per layer.

    Args:
        model: takes [T, B, ...]; its spiking layers are its ``SearchedNeuron`` modules.
        loader: (x, y) batches (module docstring).
        T: timesteps.
        device: where the batches go (the model's device).
        fractions: the deletion probabilities, each in [0, 1].
        seed: seeds each fraction's generator.
        max_batches: at most this many batches (None: all).
    """
    return [_deletion_run(model, loader, T, device, float(fraction), seed, max_batches) for fraction in fractions]


def _deletion_run(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str], fraction: float,
                  seed: int, max_batches: Optional[int]) -> dict[str, Any]:
    lifs = _lifs(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    emitted, kept = dict.fromkeys(lifs, 0.0), dict.fromkeys(lifs, 0.0)

    def hook(name):
        def delete(module, inputs, spikes):
            # slot k < D holds the count's (k+1)-th spike where k < count; each slot is kept with
            # probability 1 - fraction (for D = 1 exactly one draw per spike, as for binary layers)
            slots = torch.arange(_levels(module), device=spikes.device).view(-1, *[1] * spikes.dim())
            keep = torch.rand((len(slots), *spikes.shape), generator=generator, device=spikes.device) >= fraction
            out = ((slots < spikes) & keep).sum(0).to(spikes.dtype)
            emitted[name] += float(spikes.sum())
            kept[name] += float(out.sum())
            return out
        return delete

    correct = samples = 0
    with _inference(model), _hooked([(m.register_forward_hook, hook(name)) for name, m in lifs.items()]):
        for x, y in _batches(loader, T, device, max_batches):
            correct += int((model(x).argmax(1) == y).sum())
            samples += y.shape[0]
    return {
        "fraction": fraction,
        "accuracy": correct / samples,
        "samples": samples,
        "spikes_per_sample": sum(kept.values()) / samples,
        "emitted_spikes_per_sample": sum(emitted.values()) / samples,
        "layers": {name: {"spikes_per_sample": kept[name] / samples,
                          "emitted_spikes_per_sample": emitted[name] / samples} for name in lifs},
    }


def tsne_features(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str], layer: str,
                  timesteps: Sequence[int], *, n_samples: int = 500, seed: int = 0) -> dict[str, Any]:
    """2-D t-SNE of the output of module ``layer`` at each of ``timesteps`` (Fig. 6).

    The module's output must be [T, B, ...] (a LIF layer's spikes, or e.g. a time-folded conv);
    at step t each sample's output[t] is flattened into one feature vector. The first ``n_samples``
    samples of the loader are embedded (give it a class-balanced order, e.g. a ``Subset`` in
    ``a2sg_triton.data.stratified_order``, if the data is stored class by class) with
    ``TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, n-1))``.

    Args:
        model: takes [T, B, ...].
        loader: (x, y) batches (module docstring).
        T: timesteps.
        device: where the batches go (the model's device).
        layer: the module's name in ``model.named_modules()``.
        timesteps: the steps to embed, each in [0, T).
        n_samples: how many samples to embed, from the loader's start.
        seed: t-SNE's random_state.

    Returns:
        {"layer", "labels": [n], "timesteps": [{"t", "points": [n, 2]} per timestep]}.

    Raises:
        ValueError: no such layer, bad timesteps, an output not [T, B, ...], or an output that is
            the same for every sample at some step.
    """
    from sklearn.manifold import TSNE  # heavy import, only needed here

    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"no module named {layer!r} in the model")
    if not timesteps or any(not 0 <= t < T for t in timesteps):
        raise ValueError(f"timesteps must be a non-empty list of steps in 0 … {T - 1}, got {timesteps!r}")
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if output.dim() < 2 or output.shape[0] != T:
            raise ValueError(f"module {layer!r} must output [T={T}, B, ...], got {list(output.shape)}")
        features.append(output[list(timesteps)].flatten(2).float().cpu())  # [steps, B, features]

    with _inference(model), _hooked([(modules[layer].register_forward_hook, hook)]):
        for x, y in _batches(loader, T, device, None):
            model(x)
            labels.append(y.cpu())
            if sum(len(batch) for batch in labels) >= n_samples:
                break
    arrays = torch.cat(features, 1)[:, :n_samples].numpy()
    labels = torch.cat(labels)[:n_samples].tolist()
    n = len(labels)
    embeddings = []
    for t, x in zip(timesteps, arrays):
        if np.ptp(x, axis=0).max() == 0:  # sklearn's PCA initialisation divides by zero (and may crash)
            raise ValueError(f"every sample has the same output of {layer!r} at t={t}; t-SNE is undefined")
        tsne = TSNE(n_components=2, random_state=seed, init="pca", perplexity=min(30, n - 1))
        embeddings.append({"t": int(t), "points": tsne.fit_transform(x).tolist()})
    return {"layer": layer, "labels": labels, "timesteps": embeddings}


# ---------------------------------------------------------------------------------------------
# Plots: matplotlib Figure objects (Agg, no pyplot state), written atomically as PNG.
# ---------------------------------------------------------------------------------------------


def plot_spike_distribution(spike_stats: Mapping[str, Any], path: StrPath) -> None:
    """Table A1 as bars: per LIF layer, the percentage of (sample, neuron) pairs with k spikes over T,
    k = 0 … T·D (for I-LIF the summed count: a count c is c spikes, which the axis label says)."""
    layers = spike_stats["layers"]
    fig, axes = _figure(len(layers))
    for ax, (name, layer) in zip(axes, layers.items()):
        percent = [100 * p for p in layer["spike_count_distribution"]]
        ax.bar_label(ax.bar(range(len(percent)), percent), fmt="%.2f", fontsize="x-small",
                     rotation=90 if len(percent) > 6 else 0)
        ax.set_title(f"{name}\n{layer['spikes_per_sample']:.4g} spikes/sample", fontsize="small")
        ax.set_xlabel("spikes over T" if layer["levels"] == 1 else
                      f"summed count over T (I-LIF, D = {layer['levels']})")
    axes[0].set_ylabel("% of (sample, neuron) pairs")
    save_figure(fig, path)


def plot_firing_rates(spike_stats: Mapping[str, Any], path: StrPath) -> None:
    """Firing rate of every LIF layer (left) and per timestep (right); with I-LIF layers the axes say
    that their rate is the mean count per neuron and step."""
    layers = spike_stats["layers"]
    counts = any(layer["levels"] > 1 for layer in layers.values())
    unit = " (I-LIF: mean count)" if counts else ""
    fig, (left, right) = _figure(2, sharey=False)
    left.bar(range(len(layers)), [layer["firing_rate"] for layer in layers.values()])
    left.set_xticks(range(len(layers)), list(layers), rotation=90, fontsize="x-small")
    left.set_ylabel(f"firing rate{unit}")
    for name, layer in layers.items():
        right.plot([s / layer["neurons"] for s in layer["spikes_per_sample_per_t"]], marker="o", label=name)
    right.set_xlabel("timestep t")
    right.set_ylabel(f"firing rate at t{unit}")
    right.legend(fontsize="x-small")
    save_figure(fig, path)


def plot_weight_histograms(weight_stats: Mapping[str, Mapping[str, Any]], path: StrPath) -> None:
    """Fig. 7: the weight histogram of every Conv/Linear layer."""
    fig, axes = _figure(len(weight_stats), sharey=False)
    for ax, (name, w) in zip(axes, weight_stats.items()):
        ax.stairs(w["counts"], w["edges"], fill=True)
        ax.set_title(f"{name}\nmean {w['mean']:.3g}, std {w['std']:.3g}", fontsize="small")
        ax.set_xlabel("weight")
    axes[0].set_ylabel("count")
    save_figure(fig, path)


def plot_membrane_statistics(membrane_stats: Mapping[str, Mapping[str, Any]], path: StrPath) -> None:
    """Per LIF layer: μ_u ± σ_u against the firing threshold θ (v_th; I-LIF: v_th/2, with its other
    level thresholds as grey ticks), RMD = (θ - μ_u) / σ_u (Eq. A10), and Theorem 2's L·κ against σ_u²
    (mean β), marked "n/a" for I-LIF layers, where it does not apply."""
    names = list(membrane_stats)
    x = range(len(names))
    fig, (mu_ax, rmd_ax, thm_ax) = _figure(3, sharey=False)
    mu_ax.errorbar(x, [m["mu_u"] for m in membrane_stats.values()],
                   yerr=[m["sigma_u"] for m in membrane_stats.values()], fmt="o", capsize=3, label="μ_u ± σ_u")
    mu_ax.plot(x, [m["rmd_threshold"] for m in membrane_stats.values()], "r_", markersize=12,
               label="firing threshold θ (v_th; I-LIF: v_th/2)")
    levels = [(i, theta) for i, m in enumerate(membrane_stats.values()) for theta in m.get("level_thresholds", [])[1:]]
    if levels:
        mu_ax.plot(*zip(*levels), "_", color="grey", markersize=8, label="I-LIF level thresholds")
    mu_ax.set_ylabel("membrane potential u")
    mu_ax.legend(fontsize="x-small")
    rmd_ax.bar(x, [m["rmd"] for m in membrane_stats.values()])
    rmd_ax.set_ylabel("RMD = (θ - μ_u) / σ_u")
    conditions = [(i, m["theorem2"]) for i, m in enumerate(membrane_stats.values())]
    applicable = [(i, c) for i, c in conditions if c is not None]
    if applicable:
        thm_ax.plot([i for i, _ in applicable], [c["L_kappa"] for _, c in applicable], "o-", label="L·κ")
        thm_ax.plot([i for i, _ in applicable], [c["sigma2"] for _, c in applicable], "s--", label="σ_u²")
        thm_ax.legend(fontsize="x-small")
    for i, c in conditions:
        if c is None and applicable:
            thm_ax.annotate("n/a", (i, 0.5), xycoords=("data", "axes fraction"), fontsize="x-small", ha="center")
        elif c is not None:
            thm_ax.annotate("holds" if c["holds"] else "fails", (i, c["L_kappa"]), fontsize="x-small",
                            textcoords="offset points", xytext=(0, 5), ha="center")
    if not applicable:
        thm_ax.text(0.5, 0.5, "not applicable:\nI-LIF has D windows", transform=thm_ax.transAxes, ha="center",
                    fontsize="small")
    thm_ax.set_title("Theorem 2: L·κ > σ_u²" + (" (n/a: I-LIF)" if len(applicable) < len(conditions) else ""),
                     fontsize="small")
    for ax in (mu_ax, rmd_ax, thm_ax):
        ax.set_xticks(x, names, rotation=90, fontsize="x-small")
        ax.set_xlim(-0.5, len(names) - 0.5)  # every layer's tick inside, also on a panel without points
    save_figure(fig, path)


def plot_spike_deletion(results: Sequence[Mapping[str, Any]], path: StrPath) -> None:
    """Table A3 as curves: accuracy and kept spikes per sample against the deleted fraction."""
    fractions = [100 * r["fraction"] for r in results]
    fig, (acc_ax, spike_ax) = _figure(2, sharey=False)
    acc_ax.plot(fractions, [100 * r["accuracy"] for r in results], "o-")
    acc_ax.set_ylabel("accuracy (%)")
    spike_ax.plot(fractions, [r["spikes_per_sample"] for r in results], "o-", label="kept")
    spike_ax.plot(fractions, [r["emitted_spikes_per_sample"] for r in results], "s--", label="emitted")
    spike_ax.set_ylabel("spikes per sample")
    spike_ax.legend(fontsize="x-small")
    for ax in (acc_ax, spike_ax):
        ax.set_xlabel("deleted spikes (%)")
    save_figure(fig, path)


def plot_tsne(tsne: Mapping[str, Any], path: StrPath) -> None:
    """Fig. 6: the t-SNE points of every timestep, coloured by label; the last panel's legend says
    which colour is which label."""
    fig, axes = _figure(len(tsne["timesteps"]))
    for ax, step in zip(axes, tsne["timesteps"]):
        points = np.asarray(step["points"])
        scatter = ax.scatter(points[:, 0], points[:, 1], c=tsne["labels"], cmap="tab10", s=6)
        ax.set_title(f"{tsne['layer']}, t = {step['t']}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(*scatter.legend_elements(), title="label", fontsize="x-small", title_fontsize="x-small")
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------------


def _lifs(model: nn.Module) -> dict[str, SearchedNeuron]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SearchedNeuron)}


def _levels(lif: nn.Module) -> int:
    """The largest number of spikes a layer emits per neuron and step: I-LIF's D, else 1."""
    return lif.levels if isinstance(lif, ILIF) else 1


def _rate_definition(levels: int) -> str:
    if levels == 1:
        return "spikes (0/1) per neuron and step"
    return f"mean count (0 … {levels}) per neuron and step: a count c is c spikes"


def synaptic_layers(model: nn.Module) -> dict[str, Synaptic]:
    """{module name: module} of the layers with weights whose operations are counted (SYNAPTIC)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SYNAPTIC)}


def _batches(loader: Batches, T: int, device: Union[torch.device, str],
             max_batches: Optional[int]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x [T, B, ...], y) on ``device``, at most ``max_batches`` of them."""
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        yield model_input(x.to(device), T), y.to(device)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode and no_grad; every module's own training flag is restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def _hooked(hooks: Iterable[tuple[Callable[..., Any], Any]]) -> Iterator[None]:
    """Registers hooks given as (register method, hook) pairs and removes them all on exit."""
    handles = []
    try:
        for register, fn in hooks:
            handles.append(register(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mean_std(n: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> tuple[float, float]:
    mean = float(s1 / n)
    return mean, math.sqrt(max(float(s2 / n) - mean * mean, 0.0))


def _theorem2(beta: float, v_th: float, mu: float, sigma: float) -> dict[str, Any]:
    L, a = 2 * beta, v_th - beta
    kappa = a - mu
    return {"beta": beta, "L": L, "a": a, "kappa": kappa, "L_kappa": L * kappa, "sigma2": sigma * sigma,
            "holds": L * kappa > sigma * sigma}


def _figure(panels: int, sharey: bool = True) -> tuple[Figure, np.ndarray]:
    """One row of square panels."""
    fig, axes = new_figure(columns=panels, panel_size=(3.2, 3.2), sharey=sharey)
    return fig, axes[0]
