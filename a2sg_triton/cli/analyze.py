"""a2sg-analyze RUN_DIR: every instrument of a2sg_triton.analysis on a finished a2sg-train run.

Loads RUN_DIR's config and checkpoint, rebuilds the model and the test data, and writes to
RUN_DIR/analysis (or --out): one PNG per instrument, analysis.json with every number and
analysis.md with the tables. The instruments see the test set in a seeded class-balanced order
(``stratified_order``), each at most --max-batches batches of it (default 10: fast on large data;
0 for all), on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, Optional, Union, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .. import analysis
from .checkpoint import UnsafeCheckpoint, read_checkpoint
from .config import LEGACY_SETTINGS
from ..data.datasets import DatasetInfo, DatasetNotFoundError, build_datasets, dataset_labels, stratified_order
from ..models import build_model
from ..nn import ILIF, SearchedNeuron
from ..files import StrPath, atomic_write


class AnalyzeError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def load_run(run_dir: Path, device: Union[torch.device, str], data: Optional[StrPath] = None
             ) -> tuple[dict[str, Any], torch.nn.Module, Dataset[Any], DatasetInfo, list[dict[str, Any]]]:
    """Rebuilds a finished a2sg-train run.

    Args:
        run_dir: the run folder (config.json, checkpoint.pt).
        device: where the model goes.
        data: the dataset's folder, if not the one the run trained from.

    Returns:
        (config, model in eval mode with the checkpoint's weights and betas, test set, data info,
        the A²SG controller's history rows).

    Raises:
        AnalyzeError: not a run folder, an unreadable checkpoint or missing data.
    """
    try:
        config = {**LEGACY_SETTINGS, **json.loads((run_dir / "config.json").read_text())}
        state = read_checkpoint(run_dir / "checkpoint.pt")
    except FileNotFoundError as error:
        raise AnalyzeError(f"{run_dir} is not an a2sg-train run folder ({error.filename} is missing)")
    except UnsafeCheckpoint as error:
        raise AnalyzeError(f"{run_dir}: {error}")
    except Exception as error:  # a truncated or foreign file
        raise AnalyzeError(f"{run_dir}: cannot read the run ({type(error).__name__}: {error})")
    if data is not None:
        if not Path(data).is_dir():
            raise AnalyzeError(f"--data {data}: no such folder")
        config = dict(config, data=str(data))
    try:
        _, test_set, info = build_datasets(config["dataset"], config["data"], T=config["T"], seed=config["seed"])
    except (DatasetNotFoundError, ValueError, ImportError) as error:
        moved = isinstance(error, DatasetNotFoundError) and data is None
        hint = " (if the data moved, pass --data DIR)" if moved else ""
        raise AnalyzeError(f"{error}{hint}")
    model = build_model(config["model"], num_classes=info.num_classes, in_channels=info.in_channels, T=config["T"],
                        surrogate=config["surrogate"], tau=config["tau"], v_th=config["v_th"],
                        beta_init=config["beta_init"], h=config["h"], backend=config["backend"], neuron=config["neuron"],
                        levels=config["levels"])
    model.load_state_dict(state["model"])
    return config, model.to(device).eval(), test_set, info, state["controller"]["history"]


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: they become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def analysis_loader(test_set: Dataset[Any], batch_size: int, seed: int) -> DataLoader[Any]:
    """The test set in a seeded class-balanced order: whatever prefix an instrument takes (its first
    batches, Fisher's and t-SNE's first samples, metric-vs-β's first batch) holds every class, also
    when the set is stored class by class (CIFAR10-DVS, ImageFolder)."""
    order = stratified_order(dataset_labels(test_set), seed)
    return DataLoader(Subset(test_set, order), batch_size=batch_size, shuffle=False)


def run_all(config: Mapping[str, Any], model: torch.nn.Module, test_set: Dataset[Any], info: DatasetInfo,
            history: Sequence[Mapping[str, Any]], out: Path, device: torch.device,
            args: argparse.Namespace) -> dict[str, Any]:
    """Runs every instrument not in ``args.skip`` and writes its PNG to ``out``.

    Args:
        config: the run's settings.
        model: the trained model, on ``device``.
        test_set: the samples the instruments see (in ``analysis_loader``'s order).
        info: the dataset's info (not read).
        history: the A²SG controller's history rows.
        out: the folder the figures go to.
        device: where the batches go.
        args: a2sg-analyze's parsed flags (batch size, limits, sample counts, skip).

    Returns:
        {instrument: its results}, JSON-ready but for non-finite floats (``_finite``).
    """
    T = config["T"]
    loader = analysis_loader(test_set, args.batch_size, config["seed"])
    lifs = {name: m for name, m in model.named_modules() if isinstance(m, SearchedNeuron)}
    x0, y0 = next(iter(loader))
    x0, y0 = x0.to(device), y0.to(device)
    common: dict[str, Any] = dict(T=T, device=device, max_batches=args.max_batches or None)
    results: dict[str, Any] = {}

    def spikes() -> None:
        results["spikes"] = analysis.spike_statistics(model, loader, **common)
        analysis.plot_spike_distribution(results["spikes"], out / "spike_distribution.png")
        analysis.plot_firing_rates(results["spikes"], out / "firing_rates.png")
        results["energy"] = analysis.energy(model, results["spikes"], tuple(test_set[0][0].shape),
                                            first_layer=args.energy_first_layer)

    def membrane() -> None:
        results["membrane"] = analysis.membrane_statistics(model, loader, **common)
        analysis.plot_membrane_statistics(results["membrane"], out / "membrane.png")

    def weights() -> None:
        results["weights"] = analysis.weight_statistics(model)
        analysis.plot_weight_histograms(results["weights"], out / "weights.png")

    def deletion() -> None:
        results["spike_deletion"] = analysis.spike_deletion(model, loader, fractions=(0.0, 0.1, 0.2, 0.3),
                                                            seed=config["seed"], **common)
        analysis.plot_spike_deletion(results["spike_deletion"], out / "spike_deletion.png")

    def fisher() -> None:
        results["fisher"] = analysis.fisher_max_eigenvalue(model, loader, T, device, n_samples=args.fisher_samples)
        analysis.plot_fisher_eigenvalues(results["fisher"], out / "fisher.png")

    def landscapes() -> None:
        results["landscape_1d"] = analysis.loss_landscape_1d(model, loader, progress=True, **common)
        analysis.plot_loss_landscape_1d(results["landscape_1d"], out / "landscape_1d.png")
        results["landscape_2d"] = analysis.loss_landscape_2d(model, loader, steps=args.landscape_steps, progress=True,
                                                             **common)
        analysis.plot_loss_landscape_2d(results["landscape_2d"], out / "landscape_2d.png")

    def search() -> None:
        results["search_history"] = analysis.search_history_metrics(history)
        if history:
            analysis.plot_search_history(results["search_history"], out / "search_history.png")
        betas = torch.linspace(0.05, 1.0, 40, dtype=torch.float64)
        # the first and last timestep of every layer; of an I-LIF layer every level (D … 1, the search's order)
        sites = [(name, t, level) for name, m in lifs.items() for t in sorted({0, T - 1})
                 for level in (range(m.levels, 0, -1) if isinstance(m, ILIF) else [None])]
        curves = {f"{name} t={t}" + ("" if level is None else f" level={level}"):
                  analysis.metric_vs_beta(model, x0, y0, name, t, betas, level=level) for name, t, level in sites}
        results["metric_vs_beta"] = curves
        analysis.plot_metric_vs_beta(curves, out / "metric_vs_beta.png")

    def tsne() -> None:
        try:
            results["tsne"] = analysis.tsne_features(model, loader, T, device, list(lifs)[-1], sorted({0, T - 1}),
                                                     n_samples=args.tsne_samples, seed=config["seed"])
        except ValueError as error:  # e.g. a layer that is silent for every sample: nothing to embed
            results["tsne"] = {"skipped": str(error)}
            tqdm.write(f"a2sg-analyze: t-SNE skipped: {error}")
            return
        analysis.plot_tsne(results["tsne"], out / "tsne.png")

    steps = {"spikes": spikes, "membrane": membrane, "weights": weights, "deletion": deletion, "fisher": fisher,
             "landscapes": landscapes, "search": search, "tsne": tsne}
    for name in tqdm([s for s in steps if s not in args.skip], desc="analysis"):
        steps[name]()
    return results


def markdown(config: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """analysis.md: the tables of the spike, membrane, deletion, Fisher and landscape results."""
    lines = [f"# Analysis of {config['model']} on {config['dataset']} ({config['surrogate']} + {config['adapt']}, "
             f"T={config['T']})", ""]
    if "spikes" in results:
        stats = results["spikes"]
        lines += ["## Spikes (test set)", "",
                  "| layer | output | spikes / sample | firing rate | silent neuron-samples |", "|---|---|---|---|---|"]
        for name, layer in stats["layers"].items():
            output = "spike 0/1" if layer["levels"] == 1 else f"count 0…{layer['levels']}"
            lines.append(f"| {name} | {output} | {layer['spikes_per_sample']:.1f} | {layer['firing_rate']:.4f} | "
                         f"{100 * layer['spike_count_distribution'][0]:.2f}% |")
        if any(layer["levels"] > 1 for layer in stats["layers"].values()):
            lines += ["", "I-LIF layers: a count c is c spikes; their firing rate is the mean count per neuron and "
                          "step."]
        energy = results["energy"]
        lines += ["", f"Energy per sample: {energy['energy_mj']:.3e} mJ — {energy['convention']}", ""]
    if "membrane" in results:
        lines += ["## Membrane (Eq. A10, Theorem 2)", "", "| layer | μ_u | σ_u | θ | RMD = (θ - μ_u) / σ_u | "
                  "L·κ > σ² (mean β) |", "|---|---|---|---|---|---|"]
        for name, layer in results["membrane"].items():
            holds = "n/a" if layer["theorem2"] is None else layer["theorem2"]["holds"]
            lines.append(f"| {name} | {layer['mu_u']:.4f} | {layer['sigma_u']:.4f} | {layer['rmd_threshold']:g} | "
                         f"{layer['rmd']:.3f} | {holds} |")
        if any(layer["theorem2"] is None for layer in results["membrane"].values()):
            lines += ["", "θ is the firing threshold: v_th, for I-LIF v_th/2 (its lowest level threshold, below "
                          "which the count is 0). Theorem 2 (one window above a Gaussian u) does not apply to "
                          "I-LIF's D windows: n/a."]
        lines.append("")
    if "spike_deletion" in results:
        lines += ["## Spike deletion (Table A3)", "", "| deleted | accuracy | spikes / sample kept |", "|---|---|---|"]
        for row in results["spike_deletion"]:
            lines.append(f"| {100 * row['fraction']:.0f}% | {100 * row['accuracy']:.2f}% | "
                         f"{row['spikes_per_sample']:.1f} |")
        lines.append("")
    if "fisher" in results:
        lines += ["## Largest Fisher eigenvalue (Fig. 5c)", "", "| layer | λ_max |", "|---|---|"]
        lines += [f"| {name} | {value['lambda_max']:.4g} |" for name, value in results["fisher"]["layers"].items()]
        lines.append("")
    if "landscape_1d" in results:
        curve = results["landscape_1d"]
        lines += ["## Loss landscape (Fig. 1)", "",
                  f"1-D, filter-normalised direction: loss {min(curve['loss']):.4f} … {max(curve['loss']):.4f} "
                  f"over α ∈ [{curve['alphas'][0]}, {curve['alphas'][-1]}]", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """a2sg-analyze's command line."""
    p = argparse.ArgumentParser(prog="a2sg-analyze", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="DIR", help="default: RUN_DIR/analysis")
    p.add_argument("--data", metavar="DIR", help="the dataset's folder, if not the one the run trained from")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--max-batches", type=int, default=10,
                   help="at most this many test batches per instrument, in a class-balanced order (default 10: the "
                        "landscapes alone evaluate the model 21 + steps² times; 0: the whole test set)")
    p.add_argument("--energy-first-layer", choices=analysis.FIRST_LAYER, default="every_step",
                   help="charge the first layer's MACs at every step (default, the usual convention) or once (its "
                        "direct-encoded input repeats over T; static images only)")
    p.add_argument("--fisher-samples", type=int, default=64)
    p.add_argument("--landscape-steps", type=int, default=11, help="grid points per axis of the 2-D landscape")
    p.add_argument("--tsne-samples", type=int, default=300)
    p.add_argument("--skip", nargs="+", default=[], choices=["spikes", "membrane", "weights", "deletion", "fisher",
                                                              "landscapes", "search", "tsne"])
    return p


def resolve_device(name: str) -> torch.device:
    """--device as a torch.device: "auto" is CUDA when available, else the CPU; AnalyzeError if unusable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AnalyzeError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnalyzeError(f"--device {name}: CUDA is not available")
    return device


def main(argv: Optional[Sequence[str]] = None) -> int:
    """a2sg-analyze; returns the exit status (2 on bad input, printed as one line)."""
    args = build_parser().parse_args(argv)
    try:
        for name, minimum in (("batch_size", 1), ("max_batches", 0), ("fisher_samples", 1), ("landscape_steps", 1),
                              ("tsne_samples", 1)):
            if getattr(args, name) < minimum:
                raise AnalyzeError(f"--{name.replace('_', '-')} must be >= {minimum}, got {getattr(args, name)}")
        run_dir = Path(args.run_dir)
        device = resolve_device(args.device)
        config, model, test_set, info, history = load_run(run_dir, device, args.data)
        out = Path(args.out) if args.out else run_dir / "analysis"
        out.mkdir(parents=True, exist_ok=True)
        subset = f"at most {args.max_batches} batches of {args.batch_size}" if args.max_batches else "all"
        print(f"a2sg-analyze: on {device}; each instrument takes {subset} of the {len(cast(Sized, test_set))} test "
              f"samples, in a class-balanced order (seed {config['seed']}; --max-batches 0 for all)", flush=True)
        results = run_all(config, model, test_set, info, history, out, device, args)
    except AnalyzeError as error:
        print(f"a2sg-analyze: error: {error}", file=sys.stderr)
        return 2
    payload = json.dumps(_finite({"config": config, **results}), indent=1)
    atomic_write(out / "analysis.json", lambda f: f.write(payload), binary=False)
    text = markdown(config, results)
    atomic_write(out / "analysis.md", lambda f: f.write(text), binary=False)
    print(text)
    print(f"figures and tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
