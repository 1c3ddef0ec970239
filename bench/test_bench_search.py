"""pytest-benchmark view of bench_search.py: ``pytest bench --benchmark-only``.

The stats part's providers (fused candidate statistics, K eager evaluations, the naive float64
loop, one plain read) at the script's CPU sizes without CUDA and its GPU sizes with it, and one
armed training iteration of a tiny spiking VGG (channels / 16, batch 2, n_obs 8 / n_eval 8) per
search strategy. The default ``pytest`` run (testpaths = tests) does not collect this directory.

On the CPU the module runs with one intra-op thread: on a small machine whose cores other processes
share, an OpenMP region waiting for a descheduled thread stretched calls by whole scheduler quanta
(~8 ms), and the stats timings with them. Stats tests are capped at 0.5 s of rounds (at least 3).
"""

import itertools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is plain scripts, not a package
import bench_lif  # noqa: E402
import bench_search  # noqa: E402

import a2sg_triton  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::gpytorch.utils.warnings.NumericalWarning")
QUICK_ROUNDS = pytest.mark.benchmark(max_time=0.5, min_rounds=3)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
GRID = bench_search.CUDA_STATS_GRID if DEVICE.type == "cuda" else bench_search.CPU_STATS_GRID
NS = [2**log2_N for log2_N in GRID["log2_N"]]
TINY = {"T": 4, "batch": 2, "width_div": 16, "n_obs": 8, "n_eval": 8}
ARMED_ROUNDS = 2


def n_id(N):
    return f"N2^{N.bit_length() - 1}"


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    if DEVICE.type == "cuda":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=NS, ids=n_id)
def stats_data(request):
    return bench_search.make_stats_inputs(request.param, DEVICE)


@QUICK_ROUNDS
def test_stats_plain_read(benchmark, stats_data):
    step, impl = bench_search.make_stats_step("plain_read", stats_data, 1)
    benchmark.extra_info.update(impl=impl, read_bytes=stats_data.numel() * stats_data.element_size())
    benchmark(bench_lif.synchronized(step))


@QUICK_ROUNDS
@pytest.mark.parametrize("provider", ["fused", "eager_loop", "naive_loop"])
@pytest.mark.parametrize("K", GRID["K"], ids=lambda K: f"K{K}")
def test_stats(benchmark, stats_data, K, provider):
    step, impl = bench_search.make_stats_step(provider, stats_data, K)
    step()  # warm-up (first call compiles / allocates)
    benchmark.extra_info.update(impl=impl, K=K, read_bytes=stats_data.numel() * stats_data.element_size())
    benchmark(bench_lif.synchronized(step))


@pytest.mark.parametrize("strategy", bench_search.STRATEGIES)
def test_armed_search_iteration(benchmark, strategy):
    model, _, step = bench_search.make_training(TINY["T"], TINY["batch"], TINY["width_div"], DEVICE)
    a2 = a2sg_triton.A2SG(model, strategy=strategy, n_obs=TINY["n_obs"], n_eval=TINY["n_eval"],
                          beta_range=bench_search.BETA_RANGE)
    epochs = itertools.count()
    step()  # warm-up, not armed
    a2.begin_epoch(next(epochs))
    step()  # the first search of every site (full GP fits): kept out of the timing
    benchmark.extra_info.update(strategy=strategy, **TINY)
    armed = []  # one entry per armed round benchmark ran (one only with --benchmark-disable)

    def arm():
        armed.append(next(epochs))
        a2.begin_epoch(armed[-1])

    benchmark.pedantic(bench_lif.synchronized(step), setup=arm, rounds=ARMED_ROUNDS, iterations=1)
    assert armed and len(a2.history) == (1 + len(armed)) * len(a2.layers) * TINY["T"]
