"""a2sg-ablate: the paper's Table-6 ablation grid, over several seeds, as one table.

    a2sg-ablate --seeds 3 --out runs/ablation                 # embedded digits, on the CPU
    a2sg-ablate --preset paper-cifar10 --data ~/data/cifar10 --seeds 3 --out runs/c10-ablation

Each (configuration, seed) is one `a2sg-train` run in OUT/<config>-seed<k>; a run that already
finished is reused, so an interrupted ablation continues where it stopped. OUT/ablation.md and
OUT/ablation.json hold accuracy (mean ± std over seeds), spikes per sample, epoch time and its
overhead against the BOX baseline, with the machine they ran on.
"""

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from .config import PRESETS
from .train import main as train_main
from .utils import atomic_write

# (name, surrogate, adapt, extra a2sg-train flags) — Table 6's rows, TRI with ST-ASG, the unit-area
# ASY with ST-ASG, and A²SG searching a narrower range of widths (docs/results/digits-deep-ablation.md).
CONFIGS = (
    ("BOX", "box", "none", ()),
    ("BOX + S-ASG", "box", "spatial", ()),
    ("BOX + T-ASG", "box", "temporal", ()),
    ("BOX + ST-ASG", "box", "spatiotemporal", ()),
    ("A²SG (ASY + ST-ASG)", "asy", "spatiotemporal", ()),
    ("TRI + ST-ASG", "tri", "spatiotemporal", ()),
    ("ASY-unit + ST-ASG", "asy_unit", "spatiotemporal", ()),
    ("A²SG, β in [0.2, 1]", "asy", "spatiotemporal", ("--beta-range", "0.2", "1.0")),
)
BASELINE = "BOX"


def run_name(surrogate, adapt, seed, extra=()):
    flags = "".join(f"-{a.lstrip('-').replace('beta-range', 'beta')}" for a in extra)
    return f"{surrogate}-{adapt}{flags}-seed{seed}"


def finished_metrics(run_dir):
    """The run's metrics rows if it completed all its epochs, else None."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError):
        return None
    return rows if len(rows) == config["epochs"] else None


def summarise(rows):
    """One run's numbers: final test accuracy, spikes per sample, mean epoch and search seconds."""
    last = rows[-1]
    return {
        "test_acc": last["test_acc"],
        "spikes_per_sample": sum(last["spikes_per_sample"].values()),
        "epoch_seconds": statistics.mean(r["epoch_seconds"] for r in rows),
        "search_seconds": statistics.mean(r["search_seconds"] for r in rows),
    }


def _mean_std(values):
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results):
    """results: {config name: [per-seed summaries]} -> rows with means, stds and overhead."""
    base_time = statistics.mean(s["epoch_seconds"] for s in results[BASELINE]) if BASELINE in results else None
    rows = []
    for name, summaries in results.items():
        acc, acc_std = _mean_std([s["test_acc"] for s in summaries])
        spikes, spikes_std = _mean_std([s["spikes_per_sample"] for s in summaries])
        epoch, _ = _mean_std([s["epoch_seconds"] for s in summaries])
        rows.append({
            "config": name, "seeds": len(summaries), "test_acc_mean": acc, "test_acc_std": acc_std,
            "spikes_mean": spikes, "spikes_std": spikes_std, "epoch_seconds": epoch,
            "search_seconds": statistics.mean(s["search_seconds"] for s in summaries),
            "overhead": None if base_time is None else epoch / base_time - 1,
        })
    return rows


def machine():
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


def markdown(rows, info, command):
    lines = [
        "| configuration | seeds | test accuracy (%) | spikes / sample | epoch time (s) | search (s / epoch) | "
        "overhead vs BOX |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        overhead = "—" if r["overhead"] is None else f"{100 * r['overhead']:+.1f}%"
        lines.append(f"| {r['config']} | {r['seeds']} | {100 * r['test_acc_mean']:.2f} ± {100 * r['test_acc_std']:.2f} "
                     f"| {r['spikes_mean']:.1f} ± {r['spikes_std']:.1f} | {r['epoch_seconds']:.2f} "
                     f"| {r['search_seconds']:.2f} | {overhead} |")
    machine_line = (f"{info['cpu']} ({info['cpu_count']} threads)" + (f", {info['gpu']}" if info["gpu"] else "")
                    + f"; torch {info['torch']}, a2sg_triton {info['a2sg_triton']} ({info['git_sha']}), "
                    f"{info['date']}")
    return "\n".join([*lines, "", f"Machine: {machine_line}.", "", f"Command: `{command}`", ""])


def build_parser():
    p = argparse.ArgumentParser(prog="a2sg-ablate", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="digits", choices=sorted(PRESETS))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 for every configuration")
    p.add_argument("--out", default="runs/ablation", metavar="DIR")
    p.add_argument("--configs", nargs="+", choices=[c[0] for c in CONFIGS], metavar="NAME",
                   help="a subset of the configurations (default: all)")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # Flags after the known ones go to every a2sg-train run (e.g. --epochs 5 --data DIR).
    args, train_args = build_parser().parse_known_args(argv)
    if args.seeds < 1:
        print("a2sg-ablate: error: --seeds must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, surrogate, adapt, extra in CONFIGS:
        if args.configs and name not in args.configs:
            continue
        results[name] = []
        for seed in range(args.seeds):
            run_dir = out / run_name(surrogate, adapt, seed, extra)
            rows = finished_metrics(run_dir)
            if rows is None:
                print(f"[a2sg-ablate] {name}, seed {seed} -> {run_dir}", flush=True)
                code = train_main(["--preset", args.preset, *train_args, *extra, "--surrogate", surrogate,
                                   "--adapt", adapt, "--seed", str(seed), "--out", str(run_dir), "--force"])
                if code != 0:
                    return code
                rows = finished_metrics(run_dir)
            results[name].append(summarise(rows))
    rows = table(results)
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
