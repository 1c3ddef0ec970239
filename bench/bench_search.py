"""Cost of the A²SG β search: the fused candidate statistics, and the search inside training.

Part ``stats`` (the candidate statistics of docs/math.md): one layer-timestep of N fp32 elements
with carry and reference given (the heaviest case: u, grad_s, carry and ref, 4 tensors of N fp32,
are read), K candidate widths of the asy surrogate. Providers:
  fused       a2sg_triton.candidate_stats(..., backend=B): all K candidates in one call; B is
              "triton" on CUDA and "inductor" on the CPU where a C++ compiler exists ("auto";
              --stats-backend takes one or more, e.g. auto torch: one fused row per backend;
              triton on the CPU runs under TRITON_INTERPRET=1, the interpreter: a check, not a speed)
  eager_loop  K separate eager evaluations: a Python loop over the candidates, each one call of
              a2sg_triton.ops.stats.candidate_stats_torch (the eager backend) with a 1-element betas tensor
              (surrogate_grad, the delta formula and the float64 sums in plain torch ops)
  naive_loop  the obvious float64 code: u, grad_s, carry, ref converted to float64, then a Python
              loop over the K widths, each delta = lif_bwd_step(...) (surrogate and delta formula)
              followed by delta.sum(), (delta * delta).sum(), delta.abs().sum(), delta.dot(ref)
  plain_read  one plain read of the same bytes: u, grad_s, carry and ref are the 4 rows of one
              contiguous [4, N] fp32 buffer, and this provider times ``buffer.sum()``, a single
              reduction that reads each of the 4*N*4 bytes once and writes one scalar
Every row reports median / p20 / p80 ms, x_plain = median / plain_read's median at the same N,
x_naive = naive_loop's median / this median at the same (N, K) (how many times faster than the
naive loop), and the effective read bandwidth GB/s = 4*N*4 bytes / median (and as a fraction of the
copy bandwidth dst.copy_(src) measured in the same run). On the CPU the providers of one (N, K) are
timed interleaved, one call of each in turn per round, so that a neighbour's load on a shared
machine slows them alike and the ratios stay comparable. The fused row also records how far its
SGV / TGC are from the eager loop's (a sanity check, not a test). Targets: on an H100 fused at
K = 100 <= 5x plain_read; on the CPU fused at K = 100, N = 2^16 >= 5x faster than naive_loop.

Part ``search``: a spiking VGG-11 (conv3x3-BN-LIF blocks with channels 64,128,256,256,512,512,512,512
and 5 max-pools, then a linear classifier over 10 classes; every spiking layer an
``a2sg_triton.nn.LIF(T, "asy")``). The image [B, 3, 32, 32] is repeated over T (direct encoding);
``SeqToANN`` folds [T, B, C, H, W] to [T*B, C, H, W] for conv / BN / pool / linear, the LIF layers
see [T, B, C, H, W]; the logits are averaged over T. Trained with AdamW and cross-entropy on RANDOM
data (a fixed random batch and random labels: only the cost is measured, not learning).
For each strategy ("bo", "grid") a fresh model (same seed) and an ``a2sg_triton.A2SG`` controller
(adapt="spatiotemporal"; --gp-fit picks the GP fit option, recorded as gp_fit); after warm-up,
each repetition times one normal iteration (zero_grad, forward, backward, AdamW step) and, after
``a2.begin_epoch(e)`` with e = 0, 1, 2, ..., one armed iteration (every LIF layer searches its T
betas in that backward). Epoch 0 is the first search of every site (full GP fits where the fit
option does them, kernel compilation) and is reported apart as first_armed_ms; the steady state is
the median armed iteration of epochs >= 1. Its overhead over the median normal iteration is split
with that iteration's ``a2.history`` rows into
  gp_ms           sum of gp_seconds (GP fit + LogEI acquisition)
  kernel_sync_ms  sum of (seconds - gp_seconds): candidate-statistics calls, their device->host
                  syncs, the step pass (delta at the chosen beta and its statistics) and
                  search_beta's host-side bookkeeping
  other_ms        the rest: the step passes of the timesteps that keep their beta, the GP
                  worker-thread hand-offs, beta write-back (it can come out
                  slightly negative: the normal iteration's time is a median of other iterations)
host_syncs counts the syncs of the searches: 1 per "bo" search (evaluate of n_obs candidates; the
metric at the chosen beta comes from the step pass and travels with the next transfer), 2 per
"grid" search (1 when nothing finite was observed). On CUDA
sync_warnings_{normal,armed} additionally count torch.cuda.set_sync_debug_mode("warn") warnings of
one extra, untimed normal / armed iteration (best effort; None where that fails).
epoch_share = overhead_ms / (epoch_iters * normal_ms) with epoch_iters = 500: the share of one
epoch of 500 iterations that one search per epoch costs (first_epoch_share likewise for epoch 0).

Without CUDA everything is scaled down (--help lists the defaults): stats at N = 2^14, 2^16 and
K = 1, 16, 100; the VGG at channels / 8, batch 8, n_obs 32 / n_eval 48 (each row records them).
Rows are appended as JSON objects to --out (JSONL) with bench_lif's metadata (device, versions,
git sha and dirty flag, hostname) and a timestamp.

    python bench/bench_search.py                       # both parts, the current device's defaults
    python bench/bench_search.py --quick               # one small shape, a tiny network
    python bench/bench_search.py --parts stats --N 20 22 --K 100 300
    python bench/bench_search.py --parts search --strategies bo --batch 100 --width-div 1
"""

import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gpytorch.utils.warnings import NumericalWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is plain scripts, not a package
from bench_lif import (  # noqa: E402
    BENCH_DIR,
    CPU_DEFAULT_REPS,
    CUDA_DEFAULT_REP_MS,
    copy_bandwidth_gbps,
    package_version,
    run_metadata,
    time_ms,
)

import a2sg_triton  # noqa: E402
from a2sg_triton.ops.lif import StepParams, lif_bwd_step  # noqa: E402
from a2sg_triton.nn import LIF  # noqa: E402
from a2sg_triton.search import GP_FITS  # noqa: E402
from a2sg_triton.ops.surrogate import SURROGATES  # noqa: E402
from a2sg_triton.ops.backend import resolve_backend  # noqa: E402

# The eager backend of one candidate-statistics call, from the module defining the public function
# (a2sg_triton.ops.stats; the module was named candidate_stats before).
candidate_stats_torch = sys.modules[a2sg_triton.candidate_stats.__module__].candidate_stats_torch

DEFAULT_OUT = BENCH_DIR / "results" / "search.jsonl"
PARTS = ("stats", "search")
STATS_PROVIDERS = ("plain_read", "fused", "eager_loop", "naive_loop")
STRATEGIES = ("bo", "grid")

SURROGATE, V_TH, H = "asy", 1.0, 0.5  # A²SG's surrogate; soft reset, reset not detached
BETA_RANGE = (0.05, 1.0)
N_TENSORS = 4  # u, grad_s, carry, ref

# Stats grids (log2 N); --N / --K override, --quick keeps the smallest N and QUICK_K.
CUDA_STATS_GRID = {"log2_N": (20, 22), "K": (1, 16, 100, 300)}
CPU_STATS_GRID = {"log2_N": (14, 16), "K": (1, 16, 100)}
QUICK_K = {"cuda": (1, 100), "cpu": (1, 16)}

# Search part: the VGG-11 feature configuration ("M" = 2x2 max-pool); per-device defaults.
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
NUM_CLASSES, IMAGE = 10, 32
SEARCH_DEFAULTS = {
    "cuda": {"T": 4, "batch": 100, "width_div": 1, "n_obs": 100, "n_eval": 150, "reps": 5},
    "cpu": {"T": 4, "batch": 8, "width_div": 8, "n_obs": 32, "n_eval": 48, "reps": 5},
}
QUICK_SEARCH = {"batch": 4, "width_div": 16, "n_obs": 16, "n_eval": 24, "reps": 1}
WARMUP_ITERS = 2
EPOCH_ITERS = 500


def timestamp():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# Part "stats": the fused candidate statistics vs K eager evaluations vs one plain read.
# ---------------------------------------------------------------------------------------------


def make_stats_inputs(N, device, seed=0):
    """-> [4, N] fp32 buffer whose rows are u (around v_th, so many lie in the windows), grad_s,
    carry (smaller, as decay * delta is) and ref."""
    generator = torch.Generator(device=device).manual_seed(seed)
    data = torch.randn(N_TENSORS, N, generator=generator, device=device)
    data[0].mul_(0.5).add_(V_TH)
    data[2].mul_(0.5)
    return data


def candidate_betas(K):
    """K widths spread over the search range, float64 on the CPU as search_beta passes them."""
    return torch.linspace(*BETA_RANGE, K, dtype=torch.float64)


def make_stats_step(provider, data, K, backend="auto"):
    """-> (step, impl): the callable one timing call runs, and a description for the record."""
    u, grad_s, carry, ref = data.unbind(0)
    if provider == "plain_read":
        return data.sum, "[4, N] fp32 buffer holding u, grad_s, carry, ref: buffer.sum()"
    betas = candidate_betas(K)
    if provider == "fused":
        backend = resolve_backend(backend, u)

        def fused():
            return a2sg_triton.candidate_stats(u, grad_s, betas, SURROGATE, carry=carry, ref=ref, v_th=V_TH, h=H,
                                               backend=backend)

        return fused, f"a2sg_triton.candidate_stats(backend={backend!r})"
    if provider == "eager_loop":
        singles = [beta.reshape(1).to(device=data.device, dtype=torch.float32) for beta in betas]
        step = StepParams(SURROGATES.index(SURROGATE), V_TH, False, 0.0, False, H)

        def eager_loop():
            return [candidate_stats_torch(u, grad_s, carry, ref, beta, step, th_offset=V_TH) for beta in singles]

        return eager_loop, "K x candidate_stats_torch(1 candidate)"
    if provider == "naive_loop":
        widths = betas.tolist()
        step = StepParams(SURROGATES.index(SURROGATE), V_TH, False, 0.0, False, H)

        def naive_loop():
            d, g, c, r = (t.double() for t in (u - V_TH, grad_s, carry, ref))
            sums = []
            for beta in widths:
                delta = lif_bwd_step(d, g, c, beta, step)
                sums.append(torch.stack([delta.sum(), (delta * delta).sum(), delta.abs().sum(), delta.dot(r)]))
            return torch.stack(sums)

        return naive_loop, "float64 inputs, K x (lif_bwd_step, 4 sums)"
    raise ValueError(f"unknown stats provider {provider!r}")


def stats_disagreement(data, K, backend):
    """-> (max relative SGV difference, max absolute TGC difference) of fused vs the eager loop."""
    fused = make_stats_step("fused", data, K, backend)[0]()
    loop = make_stats_step("eager_loop", data, K, backend)[0]()
    sgv_loop = torch.cat([s.sgv() for s in loop]).cpu()
    tgc_loop = torch.cat([s.tgc() for s in loop]).cpu()
    sgv_fused, tgc_fused = fused.sgv().cpu(), fused.tgc().cpu()
    finite = sgv_loop.isfinite()
    sgv_rel = ((sgv_fused - sgv_loop).abs() / sgv_loop.abs().clamp_min(1e-30))[finite]
    return (float(sgv_rel.max()) if sgv_rel.numel() else 0.0), float((tgc_fused - tgc_loop).abs().max())


def time_interleaved_ms(steps, device, reps):
    """{name: (median, p20, p80)} in ms. CPU: after a warm-up call of each, ``reps`` rounds of one
    call of each step in turn, so that load from other processes hits every step alike. CUDA:
    time_ms (do_bench) one step after the other."""
    if device.type == "cuda":
        return {name: time_ms(step, device, reps) for name, step in steps.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    times = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: tuple(float(v) for v in np.percentile(t, [50, 20, 80])) for name, t in times.items()}


STATS_HEADER = (f"{'N':>5} {'K':>4} {'provider':<17} {'median_ms':>10} {'p20_ms':>9} {'p80_ms':>9} {'x_plain':>8} "
                f"{'x_naive':>8} {'GB/s':>8} {'%copy':>6} {'ms/cand':>8}")


def provider_label(row):
    return row["provider"] + (f":{row['backend']}" if row.get("backend") else "")


def format_stats_row(row):
    K = "-" if row["K"] is None else str(row["K"])
    per = "-" if row["K"] is None else f"{row['median_ms'] / row['K']:.4f}"
    x_naive = "-" if row.get("x_naive") is None else f"{row['x_naive']:.2f}"
    return (f"{'2^' + str(row['N'].bit_length() - 1):>5} {K:>4} {provider_label(row):<17} {row['median_ms']:>10.4f} "
            f"{row['p20_ms']:>9.4f} {row['p80_ms']:>9.4f} {row['x_plain'] or float('nan'):>8.2f} {x_naive:>8} "
            f"{row['gbps']:>8.2f} {100 * row['frac_copy_bw']:>5.1f}% {per:>8}")


def bench_stats_rows(N, K, data, device, reps, backends, plain_ms, context):
    """Times the providers of one (N, K) together (interleaved on the CPU); -> rows (a provider that
    fails is printed and left out). K None: plain_read alone."""
    providers = [("plain_read", None)] if K is None else (
        [("fused", backend) for backend in backends] + [("eager_loop", None), ("naive_loop", None)])
    steps, prepared = {}, []
    for provider, backend in providers:
        label = f"stats {provider}{'' if backend is None else ':' + backend} N=2^{N.bit_length() - 1}" + (
            "" if K is None else f" K={K}")
        try:
            step, impl = make_stats_step(provider, data, K or 1, backend or "auto")
            extra = {} if backend is None else {"backend": resolve_backend(backend, data)}
            if provider == "fused":
                sgv_rel, tgc_abs = stats_disagreement(data, K, backend)
                extra.update(sgv_max_rel_diff_vs_eager=sgv_rel, tgc_max_abs_diff_vs_eager=tgc_abs)
                if sgv_rel > 1e-3 or tgc_abs > 1e-4:
                    print(f"  warning: {label}: fused differs from the eager loop (SGV rel {sgv_rel:.2e}, "
                          f"TGC abs {tgc_abs:.2e})")
            step()  # a provider that cannot run fails here, alone
        except Exception as error:  # one provider failing must not stop the others
            print(f"skip {label}: {type(error).__name__}: {error}")
            continue
        steps[label] = step
        prepared.append((label, provider, impl, extra))
    timings = time_interleaved_ms(steps, device, reps)
    read_bytes = N_TENSORS * N * data.element_size()
    rows = []
    for label, provider, impl, extra in prepared:
        median, p20, p80 = timings[label]
        gbps = read_bytes / median / 1e6
        rows.append({
            "part": "stats", "provider": provider, "impl": impl, "N": N, "K": K, "surrogate": SURROGATE,
            "carry": True, "ref": True, "dtype": "fp32", "median_ms": median, "p20_ms": p20, "p80_ms": p80,
            "x_plain": None if plain_ms is None else median / plain_ms, "read_bytes": read_bytes, "gbps": gbps,
            "frac_copy_bw": gbps / context["copy_gbps"], "timing": "interleaved" if device.type != "cuda" else "do_bench",
            **extra, **context, "timestamp": timestamp(),
        })
    naive = [r for r in rows if r["provider"] == "naive_loop"]
    for row in rows:
        row["x_naive"] = naive[0]["median_ms"] / row["median_ms"] if naive and K is not None else None
    return rows


def cpu_backend_name(backend):
    """How the fused provider's backend runs on the CPU, for the printed plan."""
    try:
        backend = resolve_backend(backend, torch.empty(0))
    except ValueError as error:
        return f"{backend} backend (its rows will be skipped: {error})"
    if backend == "triton":
        return "triton backend under the Triton interpreter (a check that it runs, not a speed)"
    return f"{backend} backend"


def run_stats(args, device, reps, context, write):
    grid = CUDA_STATS_GRID if device.type == "cuda" else CPU_STATS_GRID
    log2_Ns = args.N or ((min(grid["log2_N"]),) if args.quick else grid["log2_N"])
    Ks = args.K or (QUICK_K[device.type] if args.quick else grid["K"])
    if device.type != "cuda":
        print(f"CUDA is not available: skipping the GPU stats rows (backend triton at N = "
              f"{', '.join(f'2^{n}' for n in CUDA_STATS_GRID['log2_N'])}, K = "
              f"{', '.join(map(str, CUDA_STATS_GRID['K']))}); running the "
              f"{', '.join(cpu_backend_name(b) for b in args.stats_backend)} on the CPU at N = "
              f"{', '.join(f'2^{n}' for n in log2_Ns)}, K = {', '.join(map(str, Ks))}, providers interleaved")
    print(f"\n[stats] surrogate {SURROGATE}, carry and ref given, fp32; x_plain = median / plain_read median; "
          f"x_naive = naive_loop median / median")
    print(STATS_HEADER)
    rows = []
    for log2_N in log2_Ns:
        N = 2**log2_N
        try:
            data = make_stats_inputs(N, device)
        except Exception as error:
            print(f"skip stats N=2^{log2_N}: {type(error).__name__}: {error}")
            continue
        plain = bench_stats_rows(N, None, data, device, reps, args.stats_backend, None, context)
        plain_ms = plain[0]["median_ms"] if plain else None
        for row in plain:
            row["x_plain"] = 1.0
        for K in (None, *Ks):
            batch = plain if K is None else bench_stats_rows(N, K, data, device, reps, args.stats_backend, plain_ms,
                                                             context)
            for row in batch:
                rows.append(write(row))
                print(format_stats_row(row), flush=True)
        del data
    fused = [r for r in rows if r["provider"] == "fused"]
    if any(r["x_plain"] is not None for r in fused):
        print("fused / plain read: " + ", ".join(f"N=2^{r['N'].bit_length() - 1} K={r['K']} {r['backend']}: "
                                                 f"{r['x_plain']:.2f}x" for r in fused if r["x_plain"] is not None))
    if any(r["x_naive"] is not None for r in fused):
        print("fused faster than the naive float64 loop: " + ", ".join(
            f"N=2^{r['N'].bit_length() - 1} K={r['K']} {r['backend']}: {r['x_naive']:.1f}x"
            for r in fused if r["x_naive"] is not None))
    return rows


# ---------------------------------------------------------------------------------------------
# Part "search": armed vs normal training iterations of a spiking VGG-11.
# ---------------------------------------------------------------------------------------------


class SeqToANN(torch.nn.Module):
    """Runs stateless modules on [T, B, ...] input with time folded into the batch: [T*B, ...]."""

    def __init__(self, *modules):
        super().__init__()
        self.module = modules[0] if len(modules) == 1 else torch.nn.Sequential(*modules)

    def forward(self, x):
        y = self.module(x.flatten(0, 1))
        return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])


class SpikingVGG(torch.nn.Module):
    """VGG-style SNN: [B, 3, H, W] images, repeated over T, -> [B, num_classes] logits (mean over T)."""

    def __init__(self, T=4, cfg=VGG11, width_div=1, num_classes=NUM_CLASSES, surrogate=SURROGATE):
        """Images of IMAGE x IMAGE pixels; channels = cfg's // width_div."""
        super().__init__()
        self.T = T
        layers, c_in = [], 3
        for item in cfg:
            if item == "M":
                layers.append(SeqToANN(torch.nn.MaxPool2d(2)))
                continue
            c_out = max(item // width_div, 1)
            layers += [SeqToANN(torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out)),
                       LIF(T, surrogate)]
            c_in = c_out
        self.features = torch.nn.Sequential(*layers)
        side = IMAGE // 2 ** cfg.count("M")
        self.classifier = SeqToANN(torch.nn.Flatten(), torch.nn.Linear(c_in * side * side, num_classes))
        self.channels = [max(item // width_div, 1) for item in cfg if item != "M"]

    def forward(self, x):
        x = x.unsqueeze(0).expand(self.T, *x.shape)  # direct encoding: the same image at every step
        return self.classifier(self.features(x)).mean(0)


def make_training(T, batch, width_div, device, seed=0):
    """-> (model, optimizer, step): step() runs one iteration on a fixed RANDOM batch."""
    torch.manual_seed(seed)
    model = SpikingVGG(T, width_div=width_div).to(device)
    x = torch.randn(batch, 3, IMAGE, IMAGE, device=device)
    y = torch.randint(NUM_CLASSES, (batch,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return model, optimizer, step


def timed_ms(step, device):
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def search_syncs(strategy, history_row):
    """Device->host syncs of one search (module docstring)."""
    if strategy == "grid" and not (history_row["fell_back"] and history_row["predicted"] is None
                                   and history_row["best_value"] != history_row["best_value"]):
        return 2  # n_obs, n_eval (a grid search with nothing finite stops after n_obs)
    return 1


def count_sync_warnings(step, device):
    """Synchronizing CUDA operations in one call of step, by sync debug mode warnings (CUDA only)."""
    if device.type != "cuda":
        return None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
                torch.cuda.synchronize(device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    except Exception as error:
        print(f"  sync counting failed: {type(error).__name__}: {error}")
        return None


def iteration_split(times_ms, histories, strategy, normal_ms):
    """Overhead of the armed iteration with the median time, split by its history rows."""
    order = sorted(range(len(times_ms)), key=times_ms.__getitem__)
    i = order[len(order) // 2]
    history = histories[i]
    gp_ms = 1e3 * sum(r["gp_seconds"] for r in history)
    search_ms = 1e3 * sum(r["seconds"] for r in history)
    overhead = times_ms[i] - normal_ms
    return {
        "armed_ms": times_ms[i], "overhead_ms": overhead, "gp_ms": gp_ms, "kernel_sync_ms": search_ms - gp_ms,
        "other_ms": overhead - search_ms, "n_searches": len(history),
        "host_syncs": sum(search_syncs(strategy, r) for r in history),
        "fell_back": sum(bool(r["fell_back"]) for r in history),
    }


def bench_strategy(strategy, cfg, device, context):
    """Normal vs armed iterations for one strategy; -> row or None (the failure is printed)."""
    try:
        model, _, step = make_training(cfg["T"], cfg["batch"], cfg["width_div"], device)
        a2 = a2sg_triton.A2SG(model, adapt="spatiotemporal", strategy=strategy, n_obs=cfg["n_obs"],
                              n_eval=cfg["n_eval"], beta_range=BETA_RANGE, seed=0, gp_fit=cfg["gp_fit"])
        for _ in range(WARMUP_ITERS):
            timed_ms(step, device)
        normal, armed, histories = [], [], []
        for epoch in range(cfg["reps"] + 1):  # epoch 0: every site's first search
            normal.append(timed_ms(step, device))
            a2.begin_epoch(epoch)
            seen = len(a2.history)
            armed.append(timed_ms(step, device))
            histories.append(a2.history[seen:])
        expected = len(a2.layers) * cfg["T"]
        if any(len(h) != expected for h in histories):
            print(f"  warning: search {strategy}: {[len(h) for h in histories]} searches per armed iteration, "
                  f"expected {expected}")
        sync_normal = count_sync_warnings(step, device)
        a2.begin_epoch(cfg["reps"] + 1)
        sync_armed = count_sync_warnings(step, device)
    except Exception as error:
        print(f"skip search {strategy}: {type(error).__name__}: {error}")
        return None
    normal_ms, normal_p20, normal_p80 = (float(v) for v in np.percentile(normal, [50, 20, 80]))
    first = iteration_split(armed[:1], histories[:1], strategy, normal_ms)
    steady = iteration_split(armed[1:], histories[1:], strategy, normal_ms) if len(armed) > 1 else first
    return {
        "part": "search", "strategy": strategy, "adapt": "spatiotemporal", "gp_fit": a2.config.gp_fit,
        "model": "SpikingVGG-11", "channels": model.channels, "n_lif_layers": len(a2.layers), "T": cfg["T"],
        "batch": cfg["batch"], "width_div": cfg["width_div"], "image": [3, IMAGE, IMAGE], "data": "random",
        "surrogate": SURROGATE, "n_obs": cfg["n_obs"], "n_eval": cfg["n_eval"], "reps": cfg["reps"],
        "normal_ms": normal_ms, "normal_p20_ms": normal_p20, "normal_p80_ms": normal_p80, **steady,
        "epoch_iters": EPOCH_ITERS, "epoch_share": steady["overhead_ms"] / (EPOCH_ITERS * normal_ms),
        "first_armed_ms": first["armed_ms"], "first_gp_ms": first["gp_ms"],
        "first_epoch_share": first["overhead_ms"] / (EPOCH_ITERS * normal_ms),
        "normal_times_ms": normal, "armed_times_ms": armed,
        "sync_warnings_normal": sync_normal, "sync_warnings_armed": sync_armed,
        **context, "timestamp": timestamp(),
    }


SEARCH_HEADER = (f"{'strategy':<8} {'n_obs':>5} {'srch':>4} {'normal_ms':>10} {'armed_ms':>10} {'overhead':>10} "
                 f"{'gp_ms':>9} {'krn+sync':>9} {'other':>9} {'syncs':>5} {'fb':>3} {'epoch%':>7} "
                 f"{'1st_ms':>9} {'1st_ep%':>7}")


def format_search_row(row):
    return (f"{row['strategy']:<8} {row['n_obs']:>5} {row['n_searches']:>4} {row['normal_ms']:>10.2f} "
            f"{row['armed_ms']:>10.2f} {row['overhead_ms']:>10.2f} {row['gp_ms']:>9.2f} "
            f"{row['kernel_sync_ms']:>9.2f} {row['other_ms']:>9.2f} {row['host_syncs']:>5} {row['fell_back']:>3} "
            f"{100 * row['epoch_share']:>6.3f}% {row['first_armed_ms']:>9.1f} {100 * row['first_epoch_share']:>6.3f}%")


def search_config(args, device):
    cfg = dict(SEARCH_DEFAULTS[device.type])
    if args.quick:
        cfg.update({k: v for k, v in QUICK_SEARCH.items() if device.type == "cpu" or k == "reps"})
    for key in ("T", "batch", "width_div", "n_obs", "n_eval"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.search_reps is not None:
        cfg["reps"] = args.search_reps
    cfg["gp_fit"] = args.gp_fit
    return cfg


def run_search(args, device, context, write):
    cfg = search_config(args, device)
    if device.type != "cuda":
        gpu = SEARCH_DEFAULTS["cuda"]
        print(f"\nCUDA is not available: skipping the GPU search rows (full-width VGG-11, batch {gpu['batch']}, "
              f"n_obs {gpu['n_obs']} / n_eval {gpu['n_eval']}, triton kernels); running on the CPU at channels / "
              f"{cfg['width_div']}, batch {cfg['batch']}, n_obs {cfg['n_obs']} / n_eval {cfg['n_eval']}")
    print(f"\n[search] SpikingVGG-11 T={cfg['T']} batch={cfg['batch']} channels/{cfg['width_div']}, random data, "
          f"AdamW; {cfg['reps']} steady armed iteration(s) + the first; ms per iteration; "
          f"epoch% = overhead / ({EPOCH_ITERS} x normal)")
    print(SEARCH_HEADER)
    rows = []
    for strategy in args.strategies:
        row = bench_strategy(strategy, cfg, device, context)
        if row is not None:
            rows.append(write(row))
            print(format_search_row(row), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSONL file the rows are appended to (default: bench/results/search.jsonl)")
    parser.add_argument("--quick", action="store_true", help="smallest N, two K, a tiny network, 1 repetition")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--reps", type=int, help=f"stats timing: CUDA do_bench rep in ms (default "
                        f"{CUDA_DEFAULT_REP_MS}), CPU timed calls (default {CPU_DEFAULT_REPS})")
    parser.add_argument("--N", type=int, nargs="+", help="stats: log2 of N (default: 20 22 on CUDA, 14 16 on CPU)")
    parser.add_argument("--K", type=int, nargs="+", help="stats: candidates (default: 1 16 100 300 / 1 16 100)")
    parser.add_argument("--stats-backend", nargs="+", default=["auto"],
                        choices=("auto", "triton", "torch", "inductor"),
                        help="backend(s) of the fused provider, one row each (auto: triton on CUDA, inductor on "
                             "the CPU where a C++ compiler exists, else torch)")
    parser.add_argument("--threads", type=int,
                        help="CPU intra-op threads (default: torch's; the GP uses 1 anyway); recorded as cpu_threads")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES)
    parser.add_argument("--T", type=int, help="search: timesteps (default 4)")
    parser.add_argument("--batch", type=int, help="search: batch (default 100 on CUDA, 8 on CPU)")
    parser.add_argument("--width-div", type=int, help="search: VGG channels divided by this (default 1 / 8)")
    parser.add_argument("--n-obs", type=int, help="search: n_obs (default 100 on CUDA, 32 on CPU)")
    parser.add_argument("--n-eval", type=int, help="search: n_eval (default 150 on CUDA, 48 on CPU)")
    parser.add_argument("--gp-fit", choices=GP_FITS,
                        help="search: the bo strategy's GP fit option (default: the controller's default)")
    parser.add_argument("--search-reps", type=int, help="search: steady armed iterations (default 5)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # GPyTorch warns when it rounds tiny negative posterior variances up: not our subject here
    warnings.filterwarnings("ignore", category=NumericalWarning)
    reps = args.reps or (CUDA_DEFAULT_REP_MS if device.type == "cuda" else CPU_DEFAULT_REPS)
    context = run_metadata(device)
    context.update(bench="search", cpu_threads=torch.get_num_threads(), botorch=package_version("botorch"),
                   gpytorch=package_version("gpytorch"), copy_gbps=copy_bandwidth_gbps(device, reps))
    print(f"device {context['device']}: copy bandwidth {context['copy_gbps']:.1f} GB/s; rows -> {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write(row):
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        return row

    if "stats" in args.parts:
        run_stats(args, device, reps, context, write)
    if "search" in args.parts:
        run_search(args, device, context, write)


if __name__ == "__main__":
    main()
