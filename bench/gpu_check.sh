#!/usr/bin/env bash
# One device run (about 10 minutes on an H100): the gpu-marked tests, then the LIF and search
# benchmarks. Logs and JSONL rows land in $OUT (the device tool's folder) or bench/results/gpu-<time>.
# Pure-Python packages the GPU image lacks (spikingjelly, pytest-benchmark, tqdm, matplotlib, ...)
# travel as wheels in .whl/ (see CONTRIBUTING.md, "Running on a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

# The kernel tests on the real GPU (they use CUDA tensors when CUDA is present) and the gpu-marked ones.
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_lif.py tests/test_surrogate.py \
    tests/test_candidate_stats.py tests/test_nn.py tests/test_errors.py tests/test_controller.py 2>&1 | tee "$OUT/gpu-tests.log"
# Every provider at T = 4 (the targets' shape), then ours and SpikingJelly's over the whole grid;
# the compile provider recompiles per shape, so it runs at the target shape only.
timeout 120 python3 bench/bench_lif.py --T 4 --N 24 --dtype fp32 --out "$OUT/lif.jsonl" 2>&1 | tee "$OUT/bench_lif.log"
timeout 180 python3 bench/bench_lif.py --providers triton spikingjelly torch --out "$OUT/lif.jsonl" 2>&1 | tee -a "$OUT/bench_lif.log"
timeout 150 python3 bench/bench_search.py --out "$OUT/search.jsonl" 2>&1 | tee "$OUT/bench_search.log"
