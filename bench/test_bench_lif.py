"""pytest-benchmark view of bench_lif.py: ``pytest bench --benchmark-only``.

Same providers, modes and timed steps as the script; small CPU shapes without CUDA, a few GPU
shapes with it. The default ``pytest`` run (testpaths = tests) does not collect this directory.
"""

import functools
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is plain scripts, not a package
import bench_lif  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cuda":
    SHAPES = [(4, 2**20, "fp32"), (32, 2**24, "fp32"), (32, 2**24, "bf16")]
else:
    SHAPES = [(T, 2**log2_N, "fp32") for T in bench_lif.CPU_GRID["T"] for log2_N in bench_lif.CPU_GRID["log2_N"]]


@functools.lru_cache(maxsize=1)
def cached_lif(provider, shape):
    """The modes of one provider and shape run back to back and share one build (one compile).

    Keyed by shape as the compiled function specializes on it; one entry only, as building a
    compile provider resets dynamo, which would invalidate older entries.
    """
    return bench_lif.make_lif(provider, DEVICE, bench_lif.DTYPES[shape[2]], shape[0])


@pytest.mark.parametrize("mode", bench_lif.MODES)
@pytest.mark.parametrize("provider", bench_lif.PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"T{shape[0]}-N2^{shape[1].bit_length() - 1}-{shape[2]}")
def test_lif(benchmark, shape, provider, mode):
    T, N, dtype = shape
    try:
        lif, impl = cached_lif(provider, shape)
    except bench_lif.ProviderUnavailable as reason:
        pytest.skip(str(reason))
    x, grad_spikes = bench_lif.make_inputs(T, N, bench_lif.DTYPES[dtype], DEVICE)
    bench_lif.warm_up_and_peak_memory(lif, x, grad_spikes)  # keeps compilation out of the timings
    benchmark.extra_info.update(impl=impl, bytes=bench_lif.moved_bytes(mode, T, N, dtype))
    benchmark(bench_lif.synchronized(bench_lif.make_step(lif, mode, x, grad_spikes)))
