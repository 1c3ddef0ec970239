"""a2sg-ablate: the paper's Table-6 ablation grid, over several seeds, as one table.

    a2sg-ablate --seeds 3 --out runs/ablation                 # embedded digits, on the CPU
    a2sg-ablate --preset digits-deep --seeds 3 --fisher 64 --out runs/digits-deep
    a2sg-ablate --preset paper-cifar10 --data ~/data/cifar10 --seeds 3 --out runs/c10-ablation

Each (configuration, seed) is one `a2sg-train` run in OUT/<config>-seed<k>. A folder that already
holds a run with the requested settings (machine options such as --device or --data aside) is
reused when finished and resumed when not, so an interrupted ablation continues where it stopped;
one trained with other settings is refused before anything trains, or retrained with --force.
OUT/ablation.md and OUT/ablation.json hold final and best test accuracy, training loss, spikes per sample, the search's
share of training time, the widths left at the range ends, fallbacks and flat curves (mean ± std
over seeds, and which means differ from BOX's beyond the seed spread), epoch time and its overhead
against the BOX baseline, with the machine they ran on; OUT/ablation_curves.png and
OUT/ablation_beta.png the curves over epochs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from .. import __version__
from ..analysis import fisher_max_eigenvalue
from .analyze import analysis_loader, load_run
from .config import LEGACY_SETTINGS, MACHINE_OPTIONS, PRESETS, TrainError, resolve_config
from .train import main as train_main
from ..files import atomic_write
from ..figures import new_figure, save_figure

# (name, surrogate, adapt, extra a2sg-train flags) — Table 6's rows, TRI with ST-ASG, static ASY, the unit-area
# ASY with ST-ASG, and A²SG searching a narrower range of widths (docs/results/digits-deep-ablation.md).
CONFIGS = (
    ("BOX", "box", "none", ()),
    ("BOX + S-ASG", "box", "spatial", ()),
    ("BOX + T-ASG", "box", "temporal", ()),
    ("BOX + ST-ASG", "box", "spatiotemporal", ()),
    ("A²SG (ASY + ST-ASG)", "asy", "spatiotemporal", ()),
    ("TRI + ST-ASG", "tri", "spatiotemporal", ()),
    ("ASY", "asy", "none", ()),
    ("ASY-unit", "asy_unit", "none", ()),
    ("ASY-unit + ST-ASG", "asy_unit", "spatiotemporal", ()),
    ("A²SG, β in [0.2, 1]", "asy", "spatiotemporal", ("--beta-range", "0.2", "1.0")),
)
BASELINE = "BOX"


def run_name(surrogate: str, adapt: str, seed: int, extra: Sequence[str] = ()) -> str:
    """The run folder's name, e.g. "asy-spatiotemporal-beta-0.2-1.0-seed0" for ``extra`` flags."""
    flags = "".join(f"-{a.lstrip('-').replace('beta-range', 'beta')}" for a in extra)
    return f"{surrogate}-{adapt}{flags}-seed{seed}"


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics rows, [] when there are none."""
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return []


def plan(run_dir: Path, requested: Mapping[str, Any]) -> tuple[str, Any]:
    """What to do with one run folder for the ``requested`` config: ("train", None) when it holds no
    run, ("differs", ["lr=0.005 there, 0.001 asked", ...]) when its run has other settings (machine
    options aside), ("reuse", rows) when that run finished, else ("resume", rows so far)."""
    try:
        stored = {**LEGACY_SETTINGS, **json.loads((run_dir / "config.json").read_text())}
    except (OSError, ValueError):
        return "train", None
    stored, requested = json.loads(json.dumps(stored)), json.loads(json.dumps(requested))  # tuples as lists
    differences = [f"{key}={stored.get(key)!r} there, {requested.get(key)!r} asked"
                   for key in sorted(stored.keys() | requested.keys())
                   if key not in MACHINE_OPTIONS and stored.get(key) != requested.get(key)]
    if differences:
        return "differs", differences
    rows = read_metrics(run_dir)
    if len(rows) == stored["epochs"]:
        return "reuse", rows
    return ("resume" if (run_dir / "checkpoint.pt").is_file() else "train"), rows


def summarise(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One run's numbers: final and best test accuracy, final training loss, spikes per sample, mean
    epoch and search seconds, the search's share of training time, and what its log says (rows
    written before the log existed count as none)."""
    last = rows[-1]
    log = last.get("search", {})
    return {
        "test_acc": last["test_acc"],
        "best_test_acc": max(r["test_acc"] for r in rows),
        "train_loss": last["train_loss"],
        "spikes_per_sample": sum(last["spikes_per_sample"].values()),
        "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in rows),
        "search_seconds": statistics.mean(r["search_seconds"] for r in rows),
        "search_share": sum(r["search_seconds"] for r in rows) / sum(r["epoch_seconds"] for r in rows),
        "at_range_ends": (log["at_lower_end"] + log["at_upper_end"]) / log["widths"] if log else 0.0,
        "fell_back": sum(r.get("search", {}).get("fell_back", 0) for r in rows),
        "flat": sum(r.get("search", {}).get("flat", 0) for r in rows),
        "searches": sum(r.get("search", {}).get("searches", 0) for r in rows),
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# summarised per configuration as mean and standard deviation over seeds
SPREAD_KEYS = ("test_acc", "best_test_acc", "train_loss", "spikes_per_sample", "search_share", "at_range_ends",
               "fisher_lambda_max")


def table(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """results: {config name: [per-seed summaries]} -> rows with means, stds and overhead. A mean
    differs from the baseline's beyond the seed spread when the gap exceeds the sum of the two
    standard deviations (``beyond_spread``: the keys where it does)."""
    base_time = statistics.mean(s["epoch_seconds"] for s in results[BASELINE]) if BASELINE in results else None
    rows: list[dict[str, Any]] = []
    for name, summaries in results.items():
        row: dict[str, Any] = {"config": name, "seeds": len(summaries)}
        for key in SPREAD_KEYS:
            values = [s[key] for s in summaries if s.get(key) is not None]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values) if values else (None, None)
        epoch, _ = _mean_std([s["epoch_seconds"] for s in summaries])
        row.update({
            "epoch_seconds": epoch,
            "search_seconds": statistics.mean(s["search_seconds"] for s in summaries),
            "overhead": None if base_time is None else epoch / base_time - 1,
            "fell_back": sum(s["fell_back"] for s in summaries), "flat": sum(s["flat"] for s in summaries),
            "searches": sum(s["searches"] for s in summaries),
        })
        # kept under the names earlier reports used
        row["spikes_mean"], row["spikes_std"] = row["spikes_per_sample_mean"], row["spikes_per_sample_std"]
        rows.append(row)
    base = next((r for r in rows if r["config"] == BASELINE), None)
    for row in rows:
        row["beyond_spread"] = [] if base is None or row is base else [
            key for key in SPREAD_KEYS if row[f"{key}_mean"] is not None and base[f"{key}_mean"] is not None
            and abs(row[f"{key}_mean"] - base[f"{key}_mean"]) > row[f"{key}_std"] + base[f"{key}_std"]]
    return rows


def fisher_of_middle_layer(run_dir: Path, n_samples: int, epochs: int) -> float:
    """λ_max of the empirical Fisher of the model's middle Conv/Linear layer (by order in the model),
    on the first ``n_samples`` test samples of a2sg-analyze's class-balanced order; cached in
    RUN_DIR/fisher.json for the run's config and ``epochs`` (a retrained or resumed run is another)."""
    cache = run_dir / "fisher.json"
    run = {"config": json.loads((run_dir / "config.json").read_text()), "epochs": epochs}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached["n_samples"] == n_samples and cached.get("run") == run:
            return cached["lambda_max"]
    config, model, test_set, _, _ = load_run(run_dir, "cpu")
    loader = analysis_loader(test_set, 100, config["seed"])
    layers = fisher_max_eigenvalue(model, loader, config["T"], "cpu", n_samples=n_samples)["layers"]
    name = list(layers)[len(layers) // 2]
    payload = {"n_samples": n_samples, "run": run, "layer": name, "lambda_max": layers[name]["lambda_max"]}
    atomic_write(cache, lambda f: f.write(json.dumps(payload)), binary=False)
    return payload["lambda_max"]


def plot_ablation(out: Path, curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]]) -> None:
    """OUT/ablation_curves.png: test accuracy and training loss per epoch, mean over seeds (band:
    ± one standard deviation); OUT/ablation_beta.png: the mean β over layers at t = T-1 and over
    t < T-1, per epoch and configuration (mean over seeds). ``curves``: {config: [metrics rows per seed]}."""
    colors = {name: f"C{i}" for i, name in enumerate(curves)}
    fig, axes = new_figure(columns=2, panel_size=(5, 3.5))
    for ax, key, label in zip(axes[0], ("test_acc", "train_loss"), ("test accuracy", "training loss")):
        for name, runs in curves.items():
            values = torch.tensor([[r[key] for r in rows] for rows in runs], dtype=torch.float64)
            epochs = range(1, values.shape[1] + 1)
            mean, std = values.mean(0), (values.std(0) if len(runs) > 1 else torch.zeros(values.shape[1]))
            ax.plot(epochs, mean, color=colors[name], label=name)
            ax.fill_between(epochs, mean - std, mean + std, color=colors[name], alpha=0.15)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0][1].legend(fontsize="x-small")
    save_figure(fig, out / "ablation_curves.png")
    searched = {name: runs for name, runs in curves.items() if any(
        b != runs[0][0]["beta"][n][0] for rows in runs for r in rows for n in r["beta"] for b in r["beta"][n])}
    if not searched:
        return
    fig, axes = new_figure(columns=len(searched), panel_size=(3.2, 3), sharey=True)
    for ax, (name, runs) in zip(axes[0], searched.items()):
        for part, pick, style in (("t = T-1", lambda b: b[-1:], "-"), ("t < T-1", lambda b: b[:-1], "--")):
            values = torch.tensor([[statistics.mean(v for n in r["beta"] for v in pick(r["beta"][n])) for r in rows]
                                   for rows in runs], dtype=torch.float64).mean(0)
            ax.plot(range(1, len(values) + 1), values, style, color=colors[name], label=part)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("mean β over layers")
    axes[0][0].legend(fontsize="x-small")
    save_figure(fig, out / "ablation_beta.png")


def machine() -> dict[str, Any]:
    """The machine and code a table was made with: CPU, threads, GPU, versions, git commit, date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {"cpu": cpu, "cpu_count": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__,
            "a2sg_triton": __version__, "git_sha": sha, "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _cell(row: Mapping[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None:
        return "—"
    mark = " *" if key in row["beyond_spread"] else ""
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{mark}"


def markdown(rows: Sequence[Mapping[str, Any]], info: Mapping[str, Any], command: str) -> str:
    """ablation.md: the ``table`` rows as a Markdown table, the spread note, the machine and the command."""
    with_fisher = any(r["fisher_lambda_max_mean"] is not None for r in rows)
    lines = [
        "| configuration | seeds | test accuracy (%) | best test accuracy (%) | training loss | spikes / sample | "
        "epoch time (s) | search share (%) | β at range ends (%) | fallbacks / flat of searches | "
        + ("Fisher λ_max (middle layer) | " if with_fisher else "") + "overhead vs BOX |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_fisher else "") + "---|",
    ]
    for r in rows:
        overhead = "—" if r["overhead"] is None else f"{100 * r['overhead']:+.1f}%"
        lines.append(
            f"| {r['config']} | {r['seeds']} | {_cell(r, 'test_acc', 100)} | {_cell(r, 'best_test_acc', 100)} "
            f"| {_cell(r, 'train_loss', 1, 3)} | {_cell(r, 'spikes_per_sample', 1, 1)} | {r['epoch_seconds']:.2f} "
            f"| {_cell(r, 'search_share', 100, 1)} | {_cell(r, 'at_range_ends', 100, 1)} "
            f"| {r['fell_back']} / {r['flat']} of {r['searches']} | "
            + (f"{_cell(r, 'fisher_lambda_max', 1, 3)} | " if with_fisher else "") + f"{overhead} |")
    machine_line = (f"{info['cpu']} ({info['cpu_count']} threads)" + (f", {info['gpu']}" if info["gpu"] else "")
                    + f"; torch {info['torch']}, a2sg_triton {info['a2sg_triton']} ({info['git_sha']}), "
                    f"{info['date']}")
    return "\n".join([*lines, "", "Means ± standard deviations over seeds; * marks a mean that differs from "
                      f"{BASELINE}'s by more than the sum of the two standard deviations.", "",
                      f"Machine: {machine_line}.", "", f"Command: `{command}`", ""])


def build_parser() -> argparse.ArgumentParser:
    """a2sg-ablate's own flags; the others go to every a2sg-train run."""
    p = argparse.ArgumentParser(prog="a2sg-ablate", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every configuration")
    p.add_argument("--out", default="runs/ablation", metavar="DIR")
    p.add_argument("--configs", nargs="+", choices=[c[0] for c in CONFIGS], metavar="NAME",
                   help="a subset of the configurations (default: all)")
    p.add_argument("--fisher", type=int, default=0, metavar="N",
                   help="also the Fisher λ_max of each run's middle layer on N test samples (default: 0, off)")
    p.add_argument("--force", action="store_true",
                   help="retrain a run folder that holds a run with other settings (default: refuse)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """a2sg-ablate; returns the exit status (2 on bad input, else a failed run's)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Flags after the known ones go to every a2sg-train run (e.g. --epochs 5 --data DIR).
    args, train_args = build_parser().parse_known_args(argv)
    if args.seeds < 1:
        print("a2sg-ablate: error: --seeds must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.fisher < 0:
        print("a2sg-ablate: error: --fisher must be >= 0", file=sys.stderr)
        return 2
    runs = []  # (config name, seed, run folder, the run's own a2sg-train flags, what to do)
    for name, surrogate, adapt, extra in CONFIGS:
        if args.configs and name not in args.configs:
            continue
        for seed in range(args.seeds):
            run_dir = out / run_name(surrogate, adapt, seed, extra)
            flags = [*train_args, *extra, "--surrogate", surrogate, "--adapt", adapt, "--seed", str(seed)]
            try:
                requested = resolve_config(["--preset", args.preset, *flags, "--out", str(run_dir)])[0]
            except TrainError as error:
                print(f"a2sg-ablate: error: {error}", file=sys.stderr)
                return 2
            runs.append((name, seed, run_dir, flags, plan(run_dir, requested)))
    # before anything trains: never print a table of old rows under a command that asked for other settings
    differing = [(run_dir, detail) for _, _, run_dir, _, (action, detail) in runs if action == "differs"]
    if differing and not args.force:
        run_dir, detail = differing[0]
        more = f" (and {len(differing) - 1} more folders)" if len(differing) > 1 else ""
        print(f"a2sg-ablate: error: {run_dir} holds a run with other settings ({'; '.join(detail)}){more}; use "
              "another --out, or --force to retrain it", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for name, seed, run_dir, flags, (action, detail) in runs:
        if action == "reuse":
            print(f"[a2sg-ablate] {name}, seed {seed}: reusing the finished run in {run_dir}", flush=True)
        else:
            if action == "resume":
                print(f"[a2sg-ablate] {name}, seed {seed}: resuming {run_dir} at epoch {len(detail) + 1}", flush=True)
                # the run's own settings, equal to these flags; --resume accepts them (and machine options)
                train_argv = ["--resume", str(run_dir), *flags]
            else:
                why = f" (it held other settings: {'; '.join(detail)})" if action == "differs" else ""
                print(f"[a2sg-ablate] {name}, seed {seed} -> {run_dir}{why}", flush=True)
                train_argv = ["--preset", args.preset, *flags, "--out", str(run_dir), "--force"]
            code = train_main(train_argv)
            if code != 0:
                return code
        rows = read_metrics(run_dir)
        summary = summarise(rows)
        summary["fisher_lambda_max"] = fisher_of_middle_layer(run_dir, args.fisher, len(rows)) if args.fisher else None
        results.setdefault(name, []).append(summary)
        curves.setdefault(name, []).append(rows)
    rows = table(results)
    plot_ablation(out, curves)
    info = machine()
    command = " ".join(["a2sg-ablate", *argv])
    text = markdown(rows, info, command)
    atomic_write(out / "ablation.md", lambda f: f.write(text), binary=False)
    payload = json.dumps({"rows": rows, "machine": info, "command": command, "preset": args.preset}, indent=1)
    atomic_write(out / "ablation.json", lambda f: f.write(payload), binary=False)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
