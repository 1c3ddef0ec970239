"""Curvature and surrogate-width analyses of a trained spiking model (the paper's Figs. 1, 3, 5, A3, A4).

- ``fisher_max_eigenvalue``: largest eigenvalue of each layer's empirical Fisher (Eq. A8, Fig. 5c).
- ``loss_landscape_1d`` / ``loss_landscape_2d``: loss along filter-normalised random directions
  (Li et al. 2018, Fig. 1).
- ``metric_vs_beta``: SGV and TGC of one search site as functions of beta (Fig. 3): a LIF or PLIF layer at
  one timestep, an I-LIF layer at one (timestep, level).
- ``search_history_metrics``: the series of an ``A2SG.history`` per layer, timestep (I-LIF: and level)
  and metric (Figs. 3, 5, A3, A4).
- ``plot_*``: PNG figures of the above (matplotlib, Agg), written atomically.

Every function returns JSON-serialisable dicts and lists and leaves the model as it found it: its
``state_dict`` bit for bit, every module's training flag and every spiking layer's (LIF, PLIF, I-LIF) armed
A²SG search are restored afterwards, even on error (while it runs, no layer searches). Batches from a
loader are ``(x, y)`` as in training: static ``x`` [B, C, H, W] is repeated over T
(``direct_encode``), sequences [B, T, ...] are made time-major.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..ops.ilif import ILIFParams, ilif_bwd_torch
from ..ops.lif import StepParams, lif_bwd_step
from ..nn import ILIF, LIF, PLIF, SearchedNeuron
from ..ops.stats import CandidateStats, candidate_stats
from ..ops.surrogate import SURROGATES
from ..files import StrPath
from ..figures import new_figure, save_figure
from ..models import model_input
from .activity import Batches, synaptic_layers

# method="auto": the exact Gram route keeps a float64 copy of a layer's [n, P] gradients; above this
# many elements it uses float32 power iteration instead.
GRAM_MAX_ELEMENTS = 2**24
# plot_metric_vs_beta: legends of rows with more curves than this go beside the panels
LEGEND_INSIDE_MAX = 8


# -- shared helpers ---------------------------------------------------------------------------


@contextlib.contextmanager
def _preserved(model: nn.Module, train: Optional[bool] = None) -> Iterator[None]:
    """Runs the body with ``model.train(train)`` (None: modes unchanged) and no A²SG search armed;
    then restores the state_dict bit for bit, every module's training flag and the armed flags."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    modes = {module: module.training for module in model.modules()}
    armed = {module: module.search_armed for module in model.modules() if isinstance(module, SearchedNeuron)}
    try:
        if train is not None:
            model.train(train)
        for module in armed:
            module.search_armed = False
        yield
    finally:
        model.load_state_dict(state)
        for submodule, mode in modes.items():
            submodule.training = mode
        for module, flag in armed.items():
            module.search_armed = flag


def _weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(module name, weight) of every Conv/Linear whose weight is trained."""
    return [(name, module.weight) for name, module in synaptic_layers(model).items() if module.weight.requires_grad]


def _take_batches(loader: Batches, max_batches: Optional[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``max_batches`` (all when None) (x, y) batches, kept so every point sees the same data."""
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in loader:
        if max_batches is not None and len(batches) >= max_batches:
            break
        batches.append((x, y))
    if not batches:
        raise ValueError("loader yielded no batch")
    return batches


@torch.no_grad()
def _evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], T: int,
              device: Union[torch.device, str]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over the batches, weighted by sample."""
    total_loss = correct = count = 0.0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(model_input(x, T)).float()
        total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        count += y.shape[0]
    return total_loss / count, correct / count


# -- 1. Fisher information ---------------------------------------------------------------------


def fisher_max_eigenvalue(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str],
                          *, n_samples: int = 64, method: str = "auto", iters: int = 50,
                          seed: int = 0) -> dict[str, Any]:
    """Largest eigenvalue of each Conv/Linear layer's empirical Fisher (Eq. A8, Fig. 5c).

    F = (1/n) sum_i g_i g_i^T, g_i the gradient of sample i's cross-entropy (true label) w.r.t. the
    layer's weight, over the loader's first ``n_samples`` samples (give it a class-balanced order,
    ``a2sg_triton.data.stratified_order``, if the data is stored class by class); batch norm in eval mode. With
    Gamma = [g_1 ... g_n]^T: ``method="gram"`` takes the exact top eigenvalue of the n×n Gram matrix
    (1/n) Gamma Gamma^T (float64; the same non-zero spectrum as F), ``"power"`` runs ``iters`` power
    iterations of v -> (1/n) Gamma^T (Gamma v) from a seeded random start and reports the Rayleigh
    quotient, ``"auto"`` uses gram when n × P <= GRAM_MAX_ELEMENTS. Also reports trace(F).

    Args:
        model: takes [T, B, ...] and returns logits [B, classes].
        loader: (x, y) batches, x [B, C, H, W] or [B, T, C, H, W].
        T: timesteps.
        device: where the samples go (the model's device).
        n_samples: how many samples, from the loader's start.
        method: "auto", "gram" or "power".
        iters: power iterations.
        seed: seeds the power iteration's start.

    Returns:
        {"n_samples", "layers": {module name: {"lambda_max", "trace", "method", "n_params"}}}.
    """
    if method not in ("auto", "gram", "power"):
        raise ValueError(f"method must be 'auto', 'gram' or 'power', got {method!r}")
    with _preserved(model, train=False), torch.enable_grad():
        weights = _weights(model)
        if not weights:
            raise ValueError("model has no Conv/Linear weight to analyse")
        rows: dict[str, list[torch.Tensor]] = {name: [] for name, _ in weights}
        n = 0
        for x, y in loader:
            for i in range(y.shape[0]):
                if n == n_samples:
                    break
                logits = model(model_input(x[i:i + 1].to(device), T)).float()
                loss = F.cross_entropy(logits, y[i:i + 1].to(device))
                for (name, _), grad in zip(weights, torch.autograd.grad(loss, [w for _, w in weights])):
                    rows[name].append(grad.detach().flatten().float())
                n += 1
            if n == n_samples:
                break
        if n == 0:
            raise ValueError("loader yielded no sample")
        generator = torch.Generator().manual_seed(seed)
        layers = {}
        for name, weight in weights:
            gamma = torch.stack(rows.pop(name))  # [n, P]
            use_gram = method == "gram" or (method == "auto" and gamma.numel() <= GRAM_MAX_ELEMENTS)
            if use_gram:
                gamma64 = gamma.double()
                lambda_max = float(torch.linalg.eigvalsh(gamma64 @ gamma64.T / n)[-1])
            else:
                lambda_max = _power_iteration(gamma, iters, generator)
            layers[name] = {"lambda_max": lambda_max, "trace": float(gamma.double().square().sum() / n),
                            "method": "gram" if use_gram else "power", "n_params": weight.numel()}
    return {"n_samples": n, "layers": layers}


def _power_iteration(gamma: torch.Tensor, iters: int, generator: torch.Generator) -> float:
    """Top eigenvalue of (1/n) Gamma^T Gamma by power iteration (Rayleigh quotient of the last iterate)."""
    n = gamma.shape[0]
    v = torch.randn(gamma.shape[1], generator=generator).to(gamma)
    v /= v.norm()
    for _ in range(iters):
        w = gamma.T @ (gamma @ v) / n
        norm = w.norm()
        if norm == 0:
            return 0.0
        v = w / norm
    return float((gamma @ v).double().square().sum() / n)


# -- 2. Loss landscapes ------------------------------------------------------------------------


def _filter_normalised_direction(model: nn.Module, generator: torch.Generator,
                                 layers: Optional[Iterable[str]]) -> dict[str, torch.Tensor]:
    """Per parameter: a Gaussian direction whose every filter (slice along dim 0: a conv's output
    channel, a linear layer's output row) has the norm of the parameter's filter (Li et al. 2018).
    Parameters of dim <= 1 (biases, batch-norm scale and shift) and parameters outside ``layers``
    (module names; None = all) get a zero direction: they are not perturbed."""
    direction = {}
    for name, param in model.named_parameters():
        module_name = name.rpartition(".")[0]
        if param.dim() <= 1 or (layers is not None and module_name not in layers):
            direction[name] = torch.zeros_like(param)
            continue
        d = torch.randn(param.shape, generator=generator).to(param)
        filter_norm = param.detach().flatten(1).norm(dim=1)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(torch.finfo(d.dtype).tiny)
        direction[name] = d * (filter_norm / d_norm).view(-1, *[1] * (param.dim() - 1))
    return direction


def _landscape(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str],
               directions: Sequence[Mapping[str, torch.Tensor]], *, steps: int, span: float,
               max_batches: Optional[int], progress: bool) -> tuple[list[float], list[Any], list[Any]]:
    """Loss and accuracy at theta + a_1 d_1 (+ a_2 d_2) on the grid linspace(-span, span, steps)^k;
    ``progress``: a tqdm bar over the grid points (off when stderr is not a terminal)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    alphas = [0.0] if steps == 1 else [span * (2 * i / (steps - 1) - 1) for i in range(steps)]  # exact 0 mid
    batches = _take_batches(loader, max_batches)
    theta = {name: param.detach().clone() for name, param in model.named_parameters()}
    bar = tqdm(total=steps ** len(directions), desc=f"{len(directions)}-D landscape", leave=False,
               disable=None if progress else True)

    def at(coefficients: Sequence[float]) -> tuple[float, float]:
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(theta[name] + sum(c * d[name] for c, d in zip(coefficients, directions)))
        bar.update()
        return _evaluate(model, batches, T, device)

    with bar:
        if len(directions) == 1:
            points = [at((a,)) for a in alphas]
            return alphas, [p[0] for p in points], [p[1] for p in points]
        grid = [[at((a, b)) for b in alphas] for a in alphas]
    return alphas, [[p[0] for p in row] for row in grid], [[p[1] for p in row] for row in grid]


def loss_landscape_1d(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str], *, steps: int = 21,
                      span: float = 1.0, seed: int = 0, max_batches: Optional[int] = None,
                      layers: Optional[Iterable[str]] = None, progress: bool = False) -> dict[str, list[float]]:
    """Mean cross-entropy and accuracy at theta + alpha d, alpha in linspace(-span, span, steps) (Fig. 1).

    d is a filter-normalised Gaussian direction (Li et al. 2018; seeded): every filter of every weight
    of dim >= 2 is scaled to that filter's norm; biases and batch-norm parameters are not perturbed.
    ``layers`` (module names) restricts the perturbation to those modules' weights, e.g. one conv
    as in Fig. 1. Batch norm in eval mode; the first ``max_batches`` batches (all when None), the
    same ones at every point. With odd ``steps`` the middle alpha is exactly 0, so its loss is the
    model's plain loss.

    Args:
        model: takes [T, B, ...] and returns logits [B, classes].
        loader: (x, y) batches, x [B, C, H, W] or [B, T, C, H, W].
        T: timesteps.
        device: where the batches go (the model's device).
        steps: points along the direction.
        span: the largest |alpha|.
        seed: seeds the direction.
        max_batches: the first this many batches (None: all).
        layers: module names whose weights are perturbed (None: all).
        progress: a progress bar over the points.

    Returns:
        {"alphas": [steps], "loss": [steps], "accuracy": [steps]}.
    """
    with _preserved(model, train=False):
        generator = torch.Generator().manual_seed(seed)
        direction = _filter_normalised_direction(model, generator, layers)
        alphas, loss, accuracy = _landscape(model, loader, T, device, [direction], steps=steps, span=span,
                                            max_batches=max_batches, progress=progress)
    return {"alphas": alphas, "loss": loss, "accuracy": accuracy}


def loss_landscape_2d(model: nn.Module, loader: Batches, T: int, device: Union[torch.device, str], *, steps: int = 11,
                      span: float = 1.0, seed: int = 0, max_batches: Optional[int] = None,
                      layers: Optional[Iterable[str]] = None, progress: bool = False) -> dict[str, list[Any]]:
    """As ``loss_landscape_1d`` on the plane theta + alpha d + beta e (two independent seeded
    directions; these alpha and beta are step sizes, not the surrogate width).

    Args: as ``loss_landscape_1d``'s; ``steps`` points per axis.

    Returns:
        {"alphas": [steps], "betas": [steps], "loss": [steps][steps], "accuracy": [steps][steps]};
        ``loss[i][j]`` is at (alphas[i], betas[j]).
    """
    with _preserved(model, train=False):
        generator = torch.Generator().manual_seed(seed)
        directions = [_filter_normalised_direction(model, generator, layers) for _ in range(2)]
        alphas, loss, accuracy = _landscape(model, loader, T, device, directions, steps=steps, span=span,
                                            max_batches=max_batches, progress=progress)
    return {"alphas": alphas, "betas": list(alphas), "loss": loss, "accuracy": accuracy}


# -- 3. SGV and TGC as functions of beta --------------------------------------------------------


def metric_vs_beta(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer_name: str, t: int,
                   betas: torch.Tensor, *, T: Optional[int] = None, level: Optional[int] = None) -> dict[str, Any]:
    """SGV and TGC of the A²SG search site (t) of LIF or PLIF layer ``layer_name``, or (t, ``level``) of
    an I-LIF layer, for each candidate width (Fig. 3).

    One forward of the batch (x as a loader gives it; T defaults to the layer's T) in the model's
    current train/eval mode, and dL/ds of the layer's output spikes (I-LIF: counts) for the
    cross-entropy; the membrane in float64 from the layer's own forward. The batch norm statistics a
    train-mode forward updates are restored afterwards with everything else.

    LIF and PLIF (``level`` None): going down from T-1 to t+1 with the layer's current betas, the LIF
    backward gives the carry c[t] = dL/dv[t] and the reference delta[t+1]; then ``candidate_stats``
    evaluates delta[t] for every candidate (the quantities the A²SG search sees at that step; PLIF:
    with its current leak, as the search carries it).

    I-LIF (``level`` 1 … D): the search site (t, level) of docs/search.md, as the controller judges it.
    Its local gradient delta_level[t] is the I-LIF backward's delta[t] with level's window alone,
    centred at θ = (level - ½)·v_th; the carry c[t] = decay·delta[t+1] comes from the plain I-LIF
    backward down from T-1 with the layer's [T, D] widths; the reference is the delta of the site
    visited just before, (t, level + 1) or, at level D, (t + 1, 1), with the width the layer holds
    for it.

    Args:
        model: takes [T, B, ...] and returns logits [B, classes].
        x: one batch as a loader gives it, [B, C, H, W] or [B, T, C, H, W].
        y: its labels [B].
        layer_name: the LIF, PLIF or I-LIF layer's name in ``model.named_modules()``.
        t: the timestep, in [0, T).
        betas: the candidate widths [K] (e.g. float64).
        T: the model's timesteps (None: the layer's T).
        level: the I-LIF level, 1 … D; None for LIF and PLIF.

    Returns:
        {"layer", "t", "level" (None for LIF and PLIF), "betas" [K], "sgv" [K], "tgc" [K] (None at
        the first site visited, where the controller takes SGV: t = T-1, and for I-LIF level D),
        "current_beta"}.
    """
    lif = dict(model.named_modules()).get(layer_name)
    if not isinstance(lif, (LIF, PLIF, ILIF)):
        raise ValueError(f"{layer_name!r} is not an a2sg_triton.nn.LIF, nn.PLIF or nn.ILIF layer of the model")
    if not 0 <= t < lif.T:
        raise ValueError(f"t must be in [0, {lif.T - 1}], got {t}")
    if isinstance(lif, ILIF):
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"level must be an int in [1, {lif.levels}] for the nn.ILIF layer {layer_name!r}, "
                            f"got {level!r}")
        if not 1 <= level <= lif.levels:
            raise ValueError(f"level must be in [1, {lif.levels}], got {level}")
    elif level is not None:
        raise ValueError(f"level is for nn.ILIF layers; {layer_name!r} is an nn.{type(lif).__name__}, searched per "
                         "timestep alone")
    captured: dict[str, torch.Tensor] = {}

    def capture(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        captured["input"], captured["output"] = inputs[0].detach(), output

    with _preserved(model), torch.enable_grad():
        handle = lif.register_forward_hook(capture)
        try:
            logits = model(model_input(x, lif.T if T is None else T)).float()
        finally:
            handle.remove()
        loss = F.cross_entropy(logits, y)
        grad_s = torch.autograd.grad(loss, captured["output"])[0].detach().double()
        if isinstance(lif, ILIF):
            assert level is not None  # checked above: an int in [1, D]
            stats = _ilif_site_stats(lif, captured["input"].double(), grad_s, t, level, betas)
            current_beta = float(lif.beta[t, level - 1])
        else:
            stats = _lif_step_stats(lif, captured["input"].double(), grad_s, t, betas)
            current_beta = float(lif.beta[t])
    return {"layer": layer_name, "t": t, "level": level, "betas": stats.betas.tolist(), "sgv": stats.sgv().tolist(),
            "tgc": None if stats.dot is None else stats.tgc().tolist(), "current_beta": current_beta}


def _lif_step_stats(lif: Union[LIF, PLIF], x: torch.Tensor, grad_s: torch.Tensor, t: int,
                    betas: torch.Tensor) -> CandidateStats:
    """``candidate_stats`` of LIF or PLIF step t (float64 x and dL/ds), carry and reference from the
    LIF backward from T-1 down to t+1 with the layer's betas."""
    d = lif.membrane(x)  # u - v_th by the layer's forward, in float64
    step_params = StepParams(SURROGATES.index(lif.surrogate), lif.v_th, lif.reset == "hard", lif.v_reset,
                             lif.detach_reset, lif.h)
    with torch.no_grad():
        decay = lif.leak(torch.float64)[0]  # PLIF: its current 1 - k
    carry = ref = None
    for step in range(lif.T - 1, t, -1):
        ref = lif_bwd_step(d[step], grad_s[step], carry, float(lif.beta[step]), step_params)
        carry = decay * ref
    return candidate_stats(d[t] + lif.v_th, grad_s[t], betas, lif.surrogate, carry=carry, ref=ref, v_th=lif.v_th,
                           h=lif.h, reset=lif.reset, v_reset=lif.v_reset, detach_reset=lif.detach_reset)


def _ilif_site_stats(ilif: ILIF, x: torch.Tensor, grad_q: torch.Tensor, t: int, level: int,
                     betas: torch.Tensor) -> CandidateStats:
    """``candidate_stats`` of I-LIF search site (t, level) (float64 x and dL/dq; docs/search.md)."""
    u, grad_q = ilif.membrane(x).flatten(1), grad_q.flatten(1)  # [T, N]
    widths = ilif.beta.to(u)
    # delta[t] of every step with the layer's widths: the plain I-LIF backward with input_scale 1
    params = ILIFParams(SURROGATES.index(ilif.surrogate), ilif.levels, ilif.decay, 1.0, ilif.v_th, ilif.detach_reset,
                        ilif.h)
    delta, _ = ilif_bwd_torch(grad_q, u, widths, None, params, need_grad_v0=False)
    step_params = StepParams(params.surrogate_id, ilif.v_th, False, 0.0, ilif.detach_reset, ilif.h)

    def carry(step: int) -> Optional[torch.Tensor]:  # c[step] = dL/dv[step]: none after the last step
        return None if step == ilif.T - 1 else ilif.decay * delta[step + 1]

    # delta_i[step]: the local gradient with level i's window alone
    def window(step: int, i: int, width: Any) -> torch.Tensor:
        return lif_bwd_step(u[step] - (i - 0.5) * ilif.v_th, grad_q[step], carry(step), width, step_params)

    ref = None  # the site visited before (t, level); none before the first, (T-1, D)
    if level < ilif.levels:
        ref = window(t, level + 1, widths[t, level])
    elif t < ilif.T - 1:
        ref = window(t + 1, 1, widths[t + 1, 0])
    # candidate_stats centres the window at v_th (d = u - v_th): shifted so that d = u - θ_level
    return candidate_stats(u[t] - (level - 0.5) * ilif.v_th + ilif.v_th, grad_q[t], betas, ilif.surrogate,
                           carry=carry(t), ref=ref, v_th=ilif.v_th, h=ilif.h, detach_reset=ilif.detach_reset)


# -- 4. Search history -------------------------------------------------------------------------


def search_history_metrics(history: Iterable[Mapping[str, Any]]) -> dict[str, dict[int, dict[Any, Any]]]:
    """``A2SG.history`` rows -> {layer: {t: {metric: {"epochs", "beta", "metric_at_beta", "best_value"}}}},
    each series in epoch order: the chosen beta and the metric at it per search (Figs. 3, 5, A3, A4).
    I-LIF rows (``level`` 1 … D: one search site per timestep and level) nest one level deeper,
    {layer: {t: {level: {metric: ...}}}}, so that each series is one site's."""
    series: dict[str, dict[int, dict[Any, Any]]] = {}
    for row in sorted(history, key=lambda row: row["epoch"]):
        site = series.setdefault(row["layer"], {}).setdefault(row["t"], {})
        if row.get("level") is not None:  # histories written before I-LIF have no level
            site = site.setdefault(row["level"], {})
        entry = site.setdefault(row["metric"], {"epochs": [], "beta": [], "metric_at_beta": [], "best_value": []})
        entry["epochs"].append(row["epoch"])
        entry["beta"].append(row["beta"])
        entry["metric_at_beta"].append(row["metric_at_beta"])
        entry["best_value"].append(row["best_value"])
    return series


# -- 5. Figures --------------------------------------------------------------------------------


def _labelled(results: Mapping[str, Any], single_key: str) -> Mapping[str, Any]:
    """{label: result}; a single result (recognised by ``single_key``) becomes {"": result}."""
    return {"": results} if single_key in results else results


def plot_fisher_eigenvalues(results: Mapping[str, Any], path: StrPath) -> None:
    """Bars of lambda_max per layer (log scale), one bar group per label (Fig. 5c). ``results``: one
    ``fisher_max_eigenvalue`` result or {label: result}. A log scale has no 0: a layer with
    lambda_max <= 0 (no gradient reached it) gets a hatched bar at a floor a decade below the smallest
    positive value, labelled "λ = 0", and the title says so."""
    runs = _labelled(results, "layers")
    names = list(next(iter(runs.values()))["layers"])
    values = {label: [result["layers"][name]["lambda_max"] for name in names] for label, result in runs.items()}
    positive = [v for vs in values.values() for v in vs if v > 0]
    floor = min(positive) / 10 if positive else 1.0
    width = 0.8 / len(runs)
    fig, axes = new_figure(panel_size=(max(4.0, 0.8 * len(names) * len(runs)), 3.5))
    ax = axes[0][0]
    zeros = False
    for k, (label, vs) in enumerate(values.items()):
        bars = ax.bar([i + k * width for i in range(len(names))], [v if v > 0 else floor for v in vs], width,
                      label=label or None, color=f"C{k}")
        for bar, v in zip(bars, vs):
            if not v > 0:
                zeros = True
                bar.set_hatch("//")
                bar.set_facecolor("none")
                bar.set_edgecolor(f"C{k}")
                ax.annotate("λ = 0", (bar.get_x() + bar.get_width() / 2, floor), textcoords="offset points",
                            xytext=(0, 2), ha="center", fontsize="x-small")
    ax.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("largest Fisher eigenvalue")
    if zeros:
        ax.set_title(f"hatched: λ_max = 0 (no gradient), drawn at {floor:.1e}", fontsize="small")
    if len(runs) > 1:
        ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_loss_landscape_1d(results: Mapping[str, Any], path: StrPath) -> None:
    """Loss against alpha, one curve per label (Fig. 1). ``results``: one ``loss_landscape_1d``
    result or {label: result}."""
    runs = _labelled(results, "alphas")
    fig, axes = new_figure()
    ax = axes[0][0]
    for label, result in runs.items():
        ax.plot(result["alphas"], result["loss"], label=label or None)
    ax.set_xlabel("α (filter-normalised direction)")
    ax.set_ylabel("loss")
    if len(runs) > 1:
        ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_loss_landscape_2d(result: Mapping[str, Any], path: StrPath, levels: int = 20) -> None:
    """Contours of the loss over the plane of one ``loss_landscape_2d`` result."""
    fig, axes = new_figure(panel_size=(4.5, 4.0))
    ax = axes[0][0]
    # loss[i][j] is at (alphas[i], betas[j]); contour wants Z[y][x], so transpose.
    loss = [list(column) for column in zip(*result["loss"])]
    contour = ax.contour(result["alphas"], result["betas"], loss, levels=levels)
    ax.clabel(contour, fontsize="x-small")
    # the result's alphas and betas are steps along two directions; "β" would read as the surrogate width
    ax.set_xlabel("step along direction 1 (filter-normalised)")
    ax.set_ylabel("step along direction 2 (filter-normalised)")
    ax.set_title("loss", fontsize="small")
    save_figure(fig, path)


def plot_metric_vs_beta(results: Mapping[str, Any], path: StrPath) -> None:
    """SGV (and TGC where present) against beta, the current beta dashed, one curve per label (Fig. 3).
    ``results``: one ``metric_vs_beta`` result or {label: result}. I-LIF results get one row of panels
    per level (in the order the results first name them), LIF and PLIF results one row together. A
    label has one colour in both panels of its row (TGC has no curve at the first site), and each
    panel's legend names the curves it shows. A value that is not finite (SGV = +inf where
    mean |delta| = 0: no gradient in the window) would leave a silent gap in its curve: it is marked
    by a triangle at the panel's top edge, which the legend explains. A row of more than
    LEGEND_INSIDE_MAX curves has its legends beside the panels, which grow to hold them."""
    runs = _labelled(results, "betas")
    metrics = ["sgv"] + (["tgc"] if any(result["tgc"] is not None for result in runs.values()) else [])
    levels = list(dict.fromkeys(result.get("level") for result in runs.values()))
    rows = [{label: r for label, r in runs.items() if r.get("level") == level} for level in levels]
    curves = max(len(row) for row in rows)
    crowded = curves > LEGEND_INSIDE_MAX
    fig, axes = new_figure(rows=len(rows), columns=len(metrics),
                           panel_size=(8.0, max(3.5, 0.15 * curves + 1.0)) if crowded else (4.5, 3.5))
    for ax_row, row, level in zip(axes, rows, levels):
        _plot_metric_row(ax_row, metrics, row, level, crowded)
    save_figure(fig, path)


def _plot_metric_row(axes: Sequence[Any], metrics: Sequence[str], runs: Mapping[str, Mapping[str, Any]],
                     level: Optional[int], crowded: bool) -> None:
    """One row of ``plot_metric_vs_beta``: the results of one I-LIF level (None: LIF and PLIF)."""
    from matplotlib.lines import Line2D  # matplotlib is imported only to draw, as in new_figure

    colours = {label: f"C{i}" for i, label in enumerate(runs)}
    for ax, metric in zip(axes, metrics):
        infinite = False
        if all(result[metric] is None for result in runs.values()):  # e.g. I-LIF's level D at T = 1
            ax.text(0.5, 0.5, f"no {metric.upper()}: the first site searched takes SGV", ha="center",
                    transform=ax.transAxes, fontsize="small")
        for label, result in runs.items():
            if result[metric] is None:
                continue
            values = [float(v) for v in result[metric]]  # analysis.json stores inf as the string "inf"
            ax.plot(result["betas"], values, color=colours[label], label=label or None)
            ax.axvline(result["current_beta"], color=colours[label], linestyle="--")
            gaps = [b for b, v in zip(result["betas"], values) if not math.isfinite(v)]
            if gaps:
                infinite = True
                ax.plot(gaps, [1.0] * len(gaps), linestyle="none", marker="^", color=colours[label], clip_on=False,
                        transform=ax.get_xaxis_transform())
        where = "" if level is None else f"I-LIF level {level}: "
        ax.set_title(f"{where}{metric.upper()} (dashed: the current β)", fontsize="small")
        ax.set_xlabel("β")
        ax.set_ylabel(metric.upper())
        handles, labels = ax.get_legend_handles_labels()
        if infinite:
            handles.append(Line2D([], [], linestyle="none", marker="^", color="grey"))
            labels.append(f"{metric.upper()} not finite (mean |δ| = 0)")
        if not handles:  # a panel without curves (the first site's TGC)
            continue
        if crowded:
            ax.legend(handles, labels, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif len(runs) > 1 or infinite:
            ax.legend(handles, labels, fontsize="small")


def plot_search_history(metrics: Mapping[str, Any], path: StrPath) -> None:
    """One row per layer: the metric at the chosen beta (left) and the chosen beta (right) over the
    epochs, one curve per search site (timestep; I-LIF: timestep and level). ``metrics``: a
    ``search_history_metrics`` result."""
    fig, axes = new_figure(rows=len(metrics), columns=2)
    for (layer, per_t), (ax_metric, ax_beta) in zip(metrics.items(), axes):
        for label, entry in _site_series(per_t):
            ax_metric.plot(entry["epochs"], entry["metric_at_beta"], marker=".", label=label)
            ax_beta.plot(entry["epochs"], entry["beta"], marker=".", label=label)
        ax_metric.set_title(f"{layer}: metric at the chosen β")
        ax_beta.set_title(f"{layer}: chosen β")
        for ax in (ax_metric, ax_beta):
            ax.set_xlabel("epoch")
            ax.legend(fontsize="small")
    save_figure(fig, path)


def _site_series(per_t: Mapping[Any, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(label, series) of each search site of one layer's ``search_history_metrics`` entry: keyed by
    metric under t, or for I-LIF by level and then metric."""
    for t, per_site in sorted(per_t.items()):
        for key, value in per_site.items():
            if key in ("sgv", "tgc"):
                yield f"t={t} {key.upper()}", value
            else:
                yield from ((f"t={t} level={key} {metric.upper()}", entry) for metric, entry in value.items())
