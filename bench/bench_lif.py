"""Benchmark of the multistep LIF op: forward, backward and forward+backward, per provider.

Providers:
  triton        a2sg_triton.lif_multistep(backend="triton")                         (CUDA only; on
                the CPU only under TRITON_INTERPRET=1, the Triton interpreter, rows marked
                interpreted: a check that the path runs, not a speed)
  torch         a2sg_triton.lif_multistep(backend="torch"), eager analytic backward
  inductor      a2sg_triton.lif_multistep(backend="inductor"): the eager functions compiled into fused
                loops (C++ on the CPU) once per variant, what backend="auto" runs on CPU tensors
  nn            a2sg_triton.nn.LIF(T, "atan") with its default backend="auto": the module a model
                uses, argument checks and autograd included
  compile       torch.compile (inductor) of the eager reference loop a2sg_triton.reference.lif_multistep
  spikingjelly  SpikingJelly LIFNode(tau=2, decay_input=True, v_reset=None, step_mode="m",
                surrogate ATan()): 2.x picks its implementation by device (Triton on CUDA, torch on
                the CPU); 1.x/0.0.0.0.14 is asked for backend "triton", then "cupy", then "torch"
All compute the same neuron (decay = input_scale = 1/tau = 0.5, soft reset, v_th = 1) with the
arctan surrogate; ours at beta = 0.5 is SpikingJelly's ATan(alpha=2).

--neuron plif times PLIF instead (k = sigmoid(w) learnable, w = 0: k = 1/2, decay_input, soft reset):
a2sg_triton.plif_multistep / nn.PLIF / the compiled reference.plif_multistep against SpikingJelly's
ParametricLIFNode(init_tau=2, v_reset=None, ATan()), with w requiring grad on every side. Its
backward also reads x (for dL/dw), so it moves T*N*e bytes more.

--neuron ilif times I-LIF (integer counts 0 ... D = 4, decay 0.25, input_scale 1, v_th 1, soft
reset): a2sg_triton.ilif_multistep / nn.ILIF / the compiled reference.ilif_multistep with box windows
of beta = 1/2 at every level, against SpikingJelly's ILIFNode(step_mode="m") (tau = 4/3,
MultiLevelSpikeCount(4)), whose rectangular straight-through estimator that is. It saves u (not
u - v_th) and moves the same bytes as LIF.

Bandwidth model, the same for every provider so that GB/s compare: with e = bytes per element of x
(4 for fp32, 2 for bf16) and 4 bytes for the saved u - v_th (our op saves it in fp32),
  fwd    moves T*N*(e + e + 4)  read x, write spikes and u - v_th
  bwd    moves T*N*(e + 4 + e)  read grad_spikes and u - v_th, write grad_x
  fwdbwd moves the sum.
frac_copy_bw divides that by the device's copy bandwidth (dst.copy_(src)) measured in the same run.
peak_mem_bytes (CUDA only) is the peak allocated during one fwd+bwd, inputs x and grad_spikes included.

Timing: CUDA uses triton.testing.do_bench (medians of CUDA-event times, L2 flushed between calls);
CPU uses time.perf_counter over a loop after warm-up. Each row is appended as one JSON object to
--out (JSONL) with the machine, versions, git sha (from git, else $A2SG_GIT_SHA for a copy of the
tree without .git) and the folder a2sg_triton was imported from. Without CUDA only the CPU providers
run, at small sizes.

    python bench/bench_lif.py                  # full grid of the current device
    python bench/bench_lif.py --quick          # one small shape
    python bench/bench_lif.py --T 8 --N 22 --dtype bf16 --providers triton spikingjelly --modes fwdbwd
    python bench/bench_lif.py --neuron plif --quick
    python bench/bench_lif.py --neuron ilif --quick
"""

import argparse
import datetime
import functools
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import a2sg_triton
from a2sg_triton import reference
from a2sg_triton.ops.backend import triton_interpreting

try:
    import triton
    import triton.testing
except ImportError:  # e.g. macOS: the CPU providers still run
    triton = None

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "lif.jsonl"

PROVIDERS = ("triton", "torch", "inductor", "nn", "compile", "spikingjelly")
OURS = ("triton", "inductor", "nn", "torch")  # compared against spikingjelly in the summary
CUDA_ONLY_PROVIDERS = ("triton",)
MODES = ("fwd", "bwd", "fwdbwd")
NEURONS = ("lif", "plif", "ilif")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# Default grids; --T / --N (log2) / --dtype override them.
CUDA_GRID = {"T": (4, 8, 32), "log2_N": (20, 22, 24), "dtype": ("fp32", "bf16")}
CPU_GRID = {"T": (4,), "log2_N": (8, 14, 20), "dtype": ("fp32",)}  # 2^8: launch-bound, 2^20: bandwidth
QUICK_T, QUICK_DTYPE = 4, "fp32"  # --quick: this T and dtype, and the grid's smallest N

SURROGATE, BETA = "atan", 0.5  # equals SpikingJelly's ATan(alpha=2)
# --neuron ilif: box windows of beta = v_th / 2 at D levels equal SpikingJelly's MultiLevelSpikeCount(D)
ILIF_SURROGATE, ILIF_D = "box", 4
SAVED_BYTES = 4  # our op saves u - v_th in fp32 (save_dtype=None)
COPY_BYTES = {"cuda": 2**28, "cpu": 2**24}
CPU_DEFAULT_REPS = 20  # CPU: timed calls per row
CUDA_DEFAULT_REP_MS = 100  # CUDA: do_bench's `rep`, its timing budget in ms


def synchronized(step):
    """For pytest-benchmark: CUDA launches are asynchronous, so the timed call waits for the kernels."""
    if not torch.cuda.is_available():
        return step

    def run():
        step()
        torch.cuda.synchronize()

    return run


class ProviderUnavailable(Exception):
    """The provider cannot run here; the message says why."""


# ---------------------------------------------------------------------------------------------
# Providers and the timed steps.
# ---------------------------------------------------------------------------------------------


def provider_skip_reason(provider, device):
    """Why ``provider`` cannot run on ``device`` (cheap checks only), or None."""
    if provider == "triton" and triton is None:
        return "triton is not installed"
    if provider == "triton" and device.type == "cpu" and triton_interpreting():
        return None  # the Triton interpreter runs the kernels on CPU tensors (slowly)
    if provider in CUDA_ONLY_PROVIDERS and device.type != "cuda":
        return f"{provider} needs CUDA, which is not available"
    if provider == "spikingjelly" and package_version("spikingjelly") is None:
        return "spikingjelly is not installed"
    return None


def make_lif(provider, device, dtype, T, neuron="lif"):
    """-> (lif, impl): lif maps x [T, N] (requires_grad) to spikes; impl describes it for the record."""
    probe = torch.empty(0, device=device, dtype=dtype)
    reason = provider_skip_reason(provider, device)
    if reason:
        raise ProviderUnavailable(reason)
    if neuron == "plif":
        return make_plif(provider, device, probe, T)
    if neuron == "ilif":
        return make_ilif(provider, device, probe, T)
    if provider == "nn":
        module = a2sg_triton.nn.LIF(T, SURROGATE, beta_init=BETA).to(device)
        return module, f"a2sg_triton.nn.LIF(backend='auto' -> {a2sg_triton.ops.backend.resolve_backend('auto', probe)!r})"
    if provider in ("triton", "torch", "inductor"):
        lif = functools.partial(a2sg_triton.lif_multistep, beta=BETA, surrogate=SURROGATE, backend=provider)
        interpreted = " under the Triton interpreter" if provider == "triton" and device.type == "cpu" else ""
        return lif, f"a2sg_triton.lif_multistep(backend={provider!r}){interpreted}"
    if provider == "compile":
        # A fresh dynamo cache per shape: the grid has more shapes than dynamo's recompile limit,
        # past which it would silently fall back to eager.
        torch._dynamo.reset()
        lif = torch.compile(functools.partial(reference.lif_multistep, beta=BETA, surrogate=SURROGATE), dynamic=False)
        return lif, "torch.compile(a2sg_triton.reference.lif_multistep)"
    if provider == "spikingjelly":
        return make_spikingjelly_lif(device, dtype)
    raise ValueError(f"unknown provider {provider!r}")


def make_plif(provider, device, probe, T):
    """make_lif for --neuron plif: w = 0 (k = 1/2), requiring grad, so every backward computes dL/dw."""
    if provider == "nn":
        module = a2sg_triton.nn.PLIF(T, SURROGATE, beta_init=BETA).to(device)
        return module, f"a2sg_triton.nn.PLIF(backend='auto' -> {a2sg_triton.ops.backend.resolve_backend('auto', probe)!r})"
    w = torch.zeros((), device=device, requires_grad=True)
    if provider in ("triton", "torch", "inductor"):
        interpreted = " under the Triton interpreter" if provider == "triton" and device.type == "cpu" else ""
        return (lambda x: a2sg_triton.plif_multistep(x, w, BETA, SURROGATE, backend=provider),
                f"a2sg_triton.plif_multistep(backend={provider!r}){interpreted}")
    if provider == "compile":
        torch._dynamo.reset()  # as for LIF: a fresh dynamo cache per shape
        return (torch.compile(lambda x: reference.plif_multistep(x, w, BETA, SURROGATE), dynamic=False),
                "torch.compile(a2sg_triton.reference.plif_multistep)")
    if provider == "spikingjelly":
        try:
            from spikingjelly.activation_based import neuron, surrogate
        except Exception as error:
            raise ProviderUnavailable(f"cannot import spikingjelly.activation_based: {error}") from error
        node = neuron.ParametricLIFNode(init_tau=2.0, decay_input=True, v_reset=None, step_mode="m",
                                        surrogate_function=surrogate.ATan()).to(device)

        def plif(x):
            node.reset()  # every call starts from v = 0 like ours
            return node(x)

        version = package_version("spikingjelly")
        return plif, f"spikingjelly {version} ParametricLIFNode(surrogate=ATan()) on {device.type}"
    raise ValueError(f"unknown provider {provider!r}")


def make_ilif(provider, device, probe, T):
    """make_lif for --neuron ilif: D = 4 levels, box windows of beta = 1/2 (SpikingJelly's STE)."""
    ilif = dict(levels=ILIF_D, decay=0.25, input_scale=1.0, v_th=1.0)
    if provider == "nn":
        module = a2sg_triton.nn.ILIF(T, ILIF_SURROGATE, levels=ILIF_D, beta_init=BETA).to(device)
        return module, f"a2sg_triton.nn.ILIF(backend='auto' -> {a2sg_triton.ops.backend.resolve_backend('auto', probe)!r})"
    if provider in ("triton", "torch", "inductor"):
        interpreted = " under the Triton interpreter" if provider == "triton" and device.type == "cpu" else ""
        return (functools.partial(a2sg_triton.ilif_multistep, beta=BETA, surrogate=ILIF_SURROGATE, backend=provider,
                                  **ilif),
                f"a2sg_triton.ilif_multistep(backend={provider!r}){interpreted}")
    if provider == "compile":
        torch._dynamo.reset()  # as for LIF: a fresh dynamo cache per shape
        return (torch.compile(functools.partial(reference.ilif_multistep, beta=BETA, surrogate=ILIF_SURROGATE, **ilif),
                              dynamic=False), "torch.compile(a2sg_triton.reference.ilif_multistep)")
    if provider == "spikingjelly":
        try:
            from spikingjelly.activation_based import neuron, surrogate
        except Exception as error:
            raise ProviderUnavailable(f"cannot import spikingjelly.activation_based: {error}") from error
        node = neuron.ILIFNode(tau=4.0 / 3.0, surrogate_function=surrogate.MultiLevelSpikeCount(ILIF_D),
                               step_mode="m").to(device)

        def ilif_node(x):
            node.reset()  # every call starts from v = 0 like ours
            return node(x)

        version = package_version("spikingjelly")
        return ilif_node, f"spikingjelly {version} ILIFNode(MultiLevelSpikeCount({ILIF_D})) on {device.type}"
    raise ValueError(f"unknown provider {provider!r}")


def make_spikingjelly_lif(device, dtype):
    """SpikingJelly's LIFNode, multi-step: the first configuration that runs a small fwd+bwd here."""
    try:
        from spikingjelly.activation_based import neuron, surrogate
    except Exception as error:  # installed but broken (e.g. an incompatible torch)
        raise ProviderUnavailable(f"cannot import spikingjelly.activation_based: {error}") from error
    errors = []
    # 2.x chooses by device and has no backend argument; older releases take one.
    for backend in (None, "triton", "cupy", "torch"):
        impl = f"spikingjelly {package_version('spikingjelly')} LIFNode(surrogate=ATan()" + (
            f", backend={backend!r})" if backend else f") on {device.type}")
        try:
            node = neuron.LIFNode(tau=2.0, decay_input=True, v_reset=None, step_mode="m",
                                  surrogate_function=surrogate.ATan(),
                                  **({"backend": backend} if backend else {})).to(device)

            def lif(x, node=node):
                node.reset()  # the node keeps v between calls; every call starts from v = 0 like ours
                return node(x)

            warn_if_spikes_differ(lif, impl, device, dtype)
            return lif, impl
        except Exception as error:  # any failure means: try the next candidate
            errors.append(f"{impl}: {type(error).__name__}: {error}")
    raise ProviderUnavailable("; ".join(errors))


def warn_if_spikes_differ(lif, impl, device, dtype):
    """Runs fwd+bwd of ``lif`` once on a small input and warns if its spikes are not ours."""
    x = 2 * torch.randn(8, 4096, device=device, dtype=dtype, requires_grad=True)
    spikes = lif(x)
    torch.autograd.grad(spikes, x, torch.ones_like(spikes))
    ours = a2sg_triton.lif_multistep(x.detach(), BETA, SURROGATE, backend="torch")
    mismatch = (spikes != ours).float().mean().item()
    if mismatch > 1e-3:  # a few flips at u == v_th are rounding; more means another neuron
        print(f"  warning: {impl} spikes differ from ours in {mismatch:.2%} of entries")


def make_inputs(T, N, dtype, device):
    """x [T, N] (requires grad; scaled so a fair share of neurons spike) and grad_spikes [T, N]."""
    x = (2 * torch.randn(T, N, device=device)).to(dtype).requires_grad_()
    grad_spikes = torch.randn(T, N, device=device).to(dtype)
    return x, grad_spikes


def make_step(lif, mode, x, grad_spikes):
    """The callable that one timing call runs.

    torch.autograd.grad returns grad_x instead of accumulating into x.grad, so repeated backward
    calls do the same work every time. bwd runs on one graph built here (retain_graph keeps its
    saved tensors); fwd runs with x requiring grad, so it saves for backward as in training.
    """
    if mode == "fwd":
        return lambda: lif(x)
    if mode == "bwd":
        spikes = lif(x)
        return lambda: torch.autograd.grad(spikes, x, grad_spikes, retain_graph=True)
    if mode == "fwdbwd":
        return lambda: torch.autograd.grad(lif(x), x, grad_spikes)
    raise ValueError(f"unknown mode {mode!r}")


def moved_bytes(mode, T, N, dtype, neuron="lif"):
    """Bytes that must move (module docstring), the same for every provider."""
    e = DTYPES[dtype].itemsize
    fwd = T * N * (e + e + SAVED_BYTES)
    bwd = T * N * (e + SAVED_BYTES + e + (e if neuron == "plif" else 0))
    return {"fwd": fwd, "bwd": bwd, "fwdbwd": fwd + bwd}[mode]


# ---------------------------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------------------------


def time_ms(step, device, reps):
    """-> (median, p20, p80) in ms of ``step``; ``reps`` is do_bench's rep (ms) on CUDA, calls on CPU."""
    if device.type == "cuda":
        median, p20, p80 = triton.testing.do_bench(step, rep=reps, quantiles=[0.5, 0.2, 0.8])
        return median, p20, p80
    for _ in range(3):  # warm-up: first calls compile or allocate
        step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    median, p20, p80 = np.percentile(times, [50, 20, 80])
    return float(median), float(p20), float(p80)


def copy_bandwidth_gbps(device, reps):
    """Bandwidth of dst.copy_(src): 2 * bytes (read + write) per copy time."""
    n_bytes = COPY_BYTES[device.type]
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    median_ms, _, _ = time_ms(lambda: dst.copy_(src), device, reps)
    return 2 * n_bytes / median_ms / 1e6


def warm_up_and_peak_memory(lif, x, grad_spikes):
    """Runs fwd+bwd twice (compile / autotune on the first); CUDA: peak bytes allocated by the second."""
    torch.autograd.grad(lif(x), x, grad_spikes)
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    torch.autograd.grad(lif(x), x, grad_spikes)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


# ---------------------------------------------------------------------------------------------
# Run metadata.
# ---------------------------------------------------------------------------------------------


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_output(*args):
    """stdout of a git command in the repo holding this file, or None if it fails (no git, no commits)."""
    try:
        return subprocess.run(["git", "-C", str(BENCH_DIR), *args], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or "cpu"


def run_metadata(device):
    status = git_output("status", "--porcelain")
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__ if triton is not None else None,
        "spikingjelly": package_version("spikingjelly"),
        "git_sha": git_output("rev-parse", "HEAD") or os.environ.get("A2SG_GIT_SHA") or "unknown",
        "git_dirty": None if status is None else bool(status),
        "hostname": socket.gethostname(),
        "triton_interpret": triton_interpreting(),
        "package_dir": str(Path(a2sg_triton.__file__).resolve().parent),
    }


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------

TABLE_HEADER = (f"{'provider':<13} {'mode':<6} {'T':>3} {'N':>5} {'dtype':<5} {'median_ms':>10} {'p20_ms':>9} "
                f"{'p80_ms':>9} {'GB/s':>8} {'%copy':>6} {'peak_MiB':>9}")


def format_row(row):
    peak = "-" if row["peak_mem_bytes"] is None else f"{row['peak_mem_bytes'] / 2**20:.0f}"
    return (f"{row['provider']:<13} {row['mode']:<6} {row['T']:>3} {'2^' + str(row['N'].bit_length() - 1):>5} "
            f"{row['dtype']:<5} {row['median_ms']:>10.4f} {row['p20_ms']:>9.4f} {row['p80_ms']:>9.4f} "
            f"{row['gbps']:>8.1f} {100 * row['frac_copy_bw']:>5.1f}% {peak:>9}")


def bench_provider(provider, shape, modes, device, reps, context):
    """Times every mode of one provider at one shape; -> rows (possibly fewer: failures are printed)."""
    T, N, dtype = shape
    try:
        lif, impl = make_lif(provider, device, DTYPES[dtype], T, context["neuron"])
        x, grad_spikes = make_inputs(T, N, DTYPES[dtype], device)
        peak = warm_up_and_peak_memory(lif, x, grad_spikes)
    except Exception as error:  # one provider failing must not stop the others
        print(f"skip {provider} at T={T} N={N} {dtype}: {type(error).__name__}: {error}")
        return []
    rows = []
    for mode in modes:
        try:
            median, p20, p80 = time_ms(make_step(lif, mode, x, grad_spikes), device, reps)
        except Exception as error:
            print(f"skip {provider} {mode} at T={T} N={N} {dtype}: {type(error).__name__}: {error}")
            continue
        n_bytes = moved_bytes(mode, T, N, dtype, context["neuron"])
        gbps = n_bytes / median / 1e6
        rows.append({
            "provider": provider, "impl": impl, "mode": mode, "T": T, "N": N, "dtype": dtype,
            "surrogate": ILIF_SURROGATE if context["neuron"] == "ilif" else SURROGATE, "median_ms": median,
            "p20_ms": p20, "p80_ms": p80, "bytes": n_bytes,
            "gbps": gbps, "frac_copy_bw": gbps / context["copy_gbps"], "peak_mem_bytes": peak, **context,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        })
        print(format_row(rows[-1]), flush=True)
    return rows


def print_speedups(rows):
    """Per shape and mode: spikingjelly's median time / each of ours (> 1: ours is faster)."""
    medians = {}
    for row in rows:
        medians.setdefault((row["dtype"], row["T"], row["N"], row["mode"]), {})[row["provider"]] = row["median_ms"]
    lines = []
    for (dtype, T, N, mode), by_provider in medians.items():
        ours = [p for p in OURS if p in by_provider]
        if "spikingjelly" in by_provider and ours:
            speedups = ", ".join(f"{p} {by_provider['spikingjelly'] / by_provider[p]:.2f}x" for p in ours)
            lines.append(f"{dtype} T={T} N=2^{N.bit_length() - 1} {mode}: {speedups}")
    print("\nspeedup over spikingjelly (its median / ours):")
    print("\n".join(lines) if lines else "  none: no spikingjelly rows")


def resolve_grid(args, device):
    """-> (shapes [(T, N, dtype)], providers) from the flags and the device's defaults."""
    grid = CUDA_GRID if device.type == "cuda" else CPU_GRID
    if args.quick:
        grid = {"T": (QUICK_T,), "log2_N": (min(grid["log2_N"]),), "dtype": (QUICK_DTYPE,)}
    Ts, log2_Ns, dtypes = args.T or grid["T"], args.N or grid["log2_N"], args.dtype or grid["dtype"]
    shapes = [(T, 2**log2_N, dtype) for dtype in dtypes for T in Ts for log2_N in log2_Ns]
    providers = args.providers or PROVIDERS
    runnable = []
    for provider in providers:
        reason = provider_skip_reason(provider, device)
        if reason:
            print(f"skip provider {provider}: {reason}")
        else:
            runnable.append(provider)
    if device.type != "cuda":
        interpreted = " (triton under the Triton interpreter)" if "triton" in runnable else ""
        print("CUDA is not available: skipping the GPU rows (triton, spikingjelly; by default bf16 and N >= 2^20); "
              f"running {' '.join(runnable)} on the CPU{interpreted} at T = {' '.join(map(str, Ts))}, "
              f"N = {' '.join(f'2^{n}' for n in log2_Ns)}, {' '.join(dtypes)}")
    return shapes, runnable


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSONL file the rows are appended to (default: bench/results/lif.jsonl)")
    parser.add_argument("--T", type=int, nargs="+", help="timesteps (default: the device's grid)")
    parser.add_argument("--N", type=int, nargs="+", help="log2 of neurons per step (default: the device's grid)")
    parser.add_argument("--dtype", nargs="+", choices=DTYPES, help="default: fp32 bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, help="default: all that can run here")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=MODES)
    parser.add_argument("--neuron", choices=NEURONS, default="lif", help="lif (default), plif or ilif")
    parser.add_argument("--quick", action="store_true", help="one small shape (T=4, smallest N, fp32)")
    parser.add_argument("--reps", type=int, help=f"CUDA: do_bench's rep in ms (default {CUDA_DEFAULT_REP_MS}); "
                                                 f"CPU: timed calls per row (default {CPU_DEFAULT_REPS})")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reps = args.reps or (CUDA_DEFAULT_REP_MS if device.type == "cuda" else CPU_DEFAULT_REPS)
    shapes, providers = resolve_grid(args, device)
    context = run_metadata(device)
    context["neuron"] = args.neuron
    context["copy_gbps"] = copy_bandwidth_gbps(device, reps)
    print(f"device {context['device']}: copy bandwidth {context['copy_gbps']:.1f} GB/s; rows -> {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(TABLE_HEADER)
    rows = []
    for shape in shapes:
        for provider in providers:
            new_rows = bench_provider(provider, shape, args.modes, device, reps, context)
            with args.out.open("a") as out:
                out.writelines(json.dumps(row) + "\n" for row in new_rows)
            rows += new_rows
    print_speedups(rows)


if __name__ == "__main__":
    main()
