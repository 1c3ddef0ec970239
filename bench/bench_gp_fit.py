"""Cost and choices of the β search's GP fit options (a2sg_triton.search, docs/search-gp-cost.md).

Every option runs the same searches (same curves, same generator seeds, so the same n_obs draws);
only the GP step differs. Options: "fit", "warm", "fixed" (SearchConfig.gp_fit), "warm@K" (a warm
fit limited to K L-BFGS iterations instead of search.WARM_MAXITER), "fixed@L/N" (fixed with
lengthscale L and noise N in a GPState instead of its defaults), "fixed@first-fit" (a site's first
search is "fit", the later ones "fixed" with the hyperparameters it found), and "grid"
(strategy="grid", no GP) for reference.

Curves, all on beta in [0.05, 1]: a smooth curve with one optimum plus a deterministic rough
"jitter" (a sum of high-frequency sines with random phases, so evaluating a beta twice gives the
same value, as the real metrics do), at three jitter levels relative to the smooth curve's range:
  sgv    minimise  a/beta + b*beta (convex), optimum sqrt(a/b); a third of them +inf below some beta
  tgc    maximise  c*exp(-(log beta - log beta0)^2 / (2 w^2)) (cosine-similarity-like, concave top)
  edge   maximise  the tgc shape with beta0 outside the range: the optimum is a range edge
  bumpy  maximise  tgc plus a second, lower bump
Each search site is a sequence of --steps searches whose curve drifts a little between steps (the
same (layer, t) over epochs), with one GPState per site, so "warm" is measured as it is used.

Per search: wall seconds of search_beta (evaluate is negligible here), the beta chosen, whether it
is within --agree of the "fit" option's beta, and the regret: smooth-curve value at the chosen beta
vs. the smooth curve's optimum (dense grid), as a fraction of the smooth curve's range. The table
gives per option (and per jitter level, per family): median and p90 seconds, the share agreeing
with "fit", the share that fell back to the best draw, mean / p90 / max regret, and vs_fit, the
mean of (regret - fit's regret on the same search).

    python bench/bench_gp_fit.py                       # the table in docs/search-gp-cost.md
    python bench/bench_gp_fit.py --sites 2 --steps 3   # quick
"""

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import time

import torch

from a2sg_triton.search import bo as search

LO, HI = 0.05, 1.0
FAMILIES = ("sgv", "tgc", "edge", "bumpy")
JITTERS = (0.0, 0.003, 0.03)  # relative to the smooth curve's range
DENSE = torch.linspace(LO, HI, 20001, dtype=torch.float64)


def make_site(family, rng):
    """Random parameters of one site's smooth curve: a dict read by ``smooth``."""
    u = lambda a, b: a + (b - a) * torch.rand((), generator=rng, dtype=torch.float64).item()  # noqa: E731
    if family == "sgv":
        opt = math.exp(u(math.log(0.08), math.log(0.95)))
        p = {"a": u(0.5, 2.0) * opt**2, "dead": u(0.05, 0.15) if u(0, 1) < 1 / 3 else 0.0}
        p["b"] = p["a"] / opt**2
        return p
    p = {"c": u(0.3, 0.9), "w": u(0.3, 1.0), "beta0": math.exp(u(math.log(0.08), math.log(0.95)))}
    if family == "edge":
        p.update(w=u(0.5, 1.2), beta0=u(0.02, 0.045) if u(0, 1) < 0.5 else u(1.1, 2.0))
    if family == "bumpy":
        p.update(c2=p["c"] * u(0.3, 0.8), beta2=math.exp(u(math.log(0.08), math.log(0.95))), w2=u(0.1, 0.3))
    return p


def drift(family, p, rng):
    """The site's curve one epoch later: optimum positions move by a few percent."""
    q = dict(p)
    for key in ("beta0", "beta2"):
        if key in q:
            q[key] *= math.exp(0.05 * torch.randn((), generator=rng, dtype=torch.float64).item())
    if family == "sgv":
        q["a"] *= math.exp(0.1 * torch.randn((), generator=rng, dtype=torch.float64).item())
    return q


def smooth(family, p, beta):
    if family == "sgv":
        value = p["a"] / beta + p["b"] * beta
        return torch.where(beta < p["dead"], math.inf, value)
    value = p["c"] * torch.exp(-((beta.log() - math.log(p["beta0"])) ** 2) / (2 * p["w"] ** 2))
    if family == "bumpy":
        value = value + p["c2"] * torch.exp(-((beta.log() - math.log(p["beta2"])) ** 2) / (2 * p["w2"] ** 2))
    return value


def make_curve(family, p, jitter, rng):
    """-> (evaluate, regret): the jittered metric and the regret of a beta on the smooth curve."""
    dense = smooth(family, p, DENSE)
    finite = dense[dense.isfinite()]
    span = (finite.max() - finite.min()).item()
    best = finite.min().item() if family == "sgv" else finite.max().item()
    omega = 100 + 300 * torch.rand(8, generator=rng, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(8, generator=rng, dtype=torch.float64)

    def evaluate(beta):
        rough = (omega * beta.unsqueeze(-1) + phase).sin().sum(-1) / math.sqrt(8)
        return smooth(family, p, beta) + jitter * span * rough

    def regret(beta):
        value = smooth(family, p, torch.tensor([beta], dtype=torch.float64)).item()
        return abs(value - best) / span

    return evaluate, regret


DEFAULT_OPTIONS = ("fit", "warm", "warm@1", "warm@3", "fixed", "fixed@first-fit", "fixed@0.205/0.0067", "grid")


def option(name):
    """-> (SearchConfig of a site's first search, of its later ones, warm iteration limit or None,
    GPState factory) of an option name."""
    base = {"strategy": "bo", "n_obs": 100, "n_eval": 150, "radius": 0.05, "beta_range": (LO, HI)}
    kind, _, arg = name.partition("@")
    if kind == "grid" and not arg:
        config = search.SearchConfig(**{**base, "strategy": "grid"})
        return config, config, None, search.GPState
    if kind in search.GP_FITS and not arg:
        config = search.SearchConfig(**base, gp_fit=kind)
        return config, config, None, search.GPState
    if kind == "warm":
        config = search.SearchConfig(**base, gp_fit="warm")
        return config, config, int(arg), search.GPState
    if kind == "fixed":
        fixed = search.SearchConfig(**base, gp_fit="fixed")
        if arg == "first-fit":  # the site's first search fits, later ones keep its hyperparameters
            return search.SearchConfig(**base, gp_fit="fit"), fixed, None, search.GPState
        lengthscale, noise = map(float, arg.split("/"))
        return fixed, fixed, None, lambda: search.GPState(lengthscale, noise)
    raise ValueError(f"unknown option {name!r}")


def run(args):
    """-> list of per-search records (dicts)."""
    records = []
    rng = torch.Generator().manual_seed(args.seed)
    evaluate, _ = make_curve("tgc", make_site("tgc", rng), 0.0, rng)
    for name in args.options:  # warm-up: first calls pay for lazy imports and allocations
        search.search_beta(evaluate, maximize=True, config=option(name)[1], generator=torch.Generator(), current=0.5)
    sites = [(f, j, make_site(f, rng)) for f in FAMILIES for j in JITTERS for _ in range(args.sites)]
    for site_id, (family, jitter, p) in enumerate(sites):
        curves = []
        for step in range(args.steps):
            curves.append(make_curve(family, p, jitter, rng))
            p = drift(family, p, rng)
        for name in args.options:
            first_config, config, maxiter, make_state = option(name)
            state = make_state()
            for step, (evaluate, regret) in enumerate(curves):
                saved = search.WARM_MAXITER
                search.WARM_MAXITER = saved if maxiter is None else maxiter
                try:
                    start = time.perf_counter()
                    result = search.search_beta(evaluate, maximize=family != "sgv",
                                                config=first_config if step == 0 else config,
                                                generator=torch.Generator().manual_seed(1000 * site_id + step),
                                                current=0.5, gp_state=state)
                    seconds = time.perf_counter() - start
                finally:
                    search.WARM_MAXITER = saved
                records.append({"option": name, "family": family, "jitter": jitter, "site": site_id,
                                "step": step, "seconds": seconds, "gp_seconds": result.gp_seconds,
                                "beta": result.beta, "fell_back": result.fell_back, "regret": regret(result.beta),
                                "lengthscale": state.lengthscale, "noise": state.noise})
        print(f"site {site_id + 1}/{len(sites)} done", flush=True)
    fit = {(r["site"], r["step"]): r for r in records if r["option"] == "fit"}
    for r in records:
        r["agrees"] = abs(r["beta"] - fit[r["site"], r["step"]]["beta"]) <= args.agree
        r["excess_regret"] = r["regret"] - fit[r["site"], r["step"]]["regret"]
    return records


def quantile(values, q):
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarise(records, option, family="all", jitter="all"):
    rows = [r for r in records if r["option"] == option and family in ("all", r["family"])
            and jitter in ("all", r["jitter"])]
    regret = [r["regret"] for r in rows]
    return {"option": option, "family": family, "jitter": jitter, "n": len(rows),
            "median_s": statistics.median(r["seconds"] for r in rows),
            "p90_s": quantile([r["seconds"] for r in rows], 90),
            "agree_fit": sum(r["agrees"] for r in rows) / len(rows),
            "fell_back": sum(r["fell_back"] for r in rows) / len(rows),
            "mean_regret": statistics.fmean(regret), "p90_regret": quantile(regret, 90), "max_regret": max(regret),
            "mean_excess_regret": statistics.fmean(r["excess_regret"] for r in rows),
            "median_lengthscale": statistics.median(r["lengthscale"] for r in rows),
            "median_noise": statistics.median(r["noise"] for r in rows)}


def machine():
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or "unknown"
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "botorch": importlib.metadata.version("botorch"),
            "gpytorch": importlib.metadata.version("gpytorch")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=4, help="sites per (family, jitter level)")
    parser.add_argument("--steps", type=int, default=5, help="searches per site (drifting curve)")
    parser.add_argument("--options", nargs="+", default=DEFAULT_OPTIONS,
                        help="fit | warm | warm@K (K L-BFGS iterations) | fixed | fixed@LENGTHSCALE/NOISE | "
                             "fixed@first-fit | grid; fit is always run (the reference)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (the GP itself always runs on one; this is for the synthetic curves)")
    parser.add_argument("--agree", type=float, default=0.01, help="|beta - beta_fit| counted as agreeing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/gp_fit.jsonl")
    args = parser.parse_args(argv)
    args.options = ["fit", *(name for name in args.options if name != "fit")]
    torch.set_num_threads(args.threads)
    for name in args.options:
        option(name)  # fail on a bad name before running anything

    load_start = os.getloadavg()[0]
    records = run(args)
    info = {**machine(), "loadavg_1min": [load_start, os.getloadavg()[0]]}
    names = list(dict.fromkeys(r["option"] for r in records))
    table = [summarise(records, name) for name in names]
    table += [summarise(records, name, jitter=j) for j in JITTERS for name in names]
    table += [summarise(records, name, family=f) for f in FAMILIES for name in names]

    header = (f"{'option':>18} {'family':>6} {'jitter':>6} {'n':>4} {'median_s':>9} {'p90_s':>7} {'agree':>6} "
              f"{'fellbk':>6} {'regret':>8} {'p90_reg':>8} {'max_reg':>8} {'vs_fit':>9}")
    print(f"\n{info}\nargs: {vars(args)}\n{header}")
    with open(args.out, "w") as out:
        for row in table:
            print(f"{row['option']:>18} {row['family']:>6} {row['jitter']!s:>6} {row['n']:>4} {row['median_s']:>9.4f} "
                  f"{row['p90_s']:>7.4f} {row['agree_fit']:>6.1%} {row['fell_back']:>6.1%} {row['mean_regret']:>8.5f} "
                  f"{row['p90_regret']:>8.5f} {row['max_regret']:>8.5f} {row['mean_excess_regret']:>+9.5f}")
            out.write(json.dumps({**row, **info, "args": vars(args)}) + "\n")
    fit = next(row for row in table if row["option"] == "fit")
    print(f"fitted hyperparameters (fit option), medians: lengthscale {fit['median_lengthscale']:.3f}, "
          f"noise {fit['median_noise']:.2e}\nwrote {args.out}")


if __name__ == "__main__":
    main()
