#!/usr/bin/env bash
# The prepared GPU run, for any machine with one CUDA GPU (sized for an H100/H200: at most 9 minutes,
# the step limits below add up to <= 540 s): the kernel tests on the GPU and the gpu-marked tests,
# then the LIF, search and memory benchmarks, and PLIF's and I-LIF's gpu tests and benchmark.
#
#   bash bench/gpu_check.sh             # on the GPU machine
#   bash bench/gpu_check.sh --dry-run   # the same steps on a CPU at tiny sizes: the kernels under the
#                                       # Triton interpreter, CPU providers, a short search bench
#
# It runs from a plain copy of the tree where nothing of the project is installed, only torch,
# triton, botorch, gpytorch and pytest. kernels/ becomes a2sg_triton.kernels only through
# pyproject.toml's package-dir mapping, so the package is first assembled as pip would install it
# (bench/stage_package.py) in a temporary folder; that folder is the working directory and the
# PYTHONPATH of every step, so the repository root (whose a2sg_triton/ lacks kernels/) is never on
# sys.path. Pure-Python packages the GPU machine may lack (spikingjelly, pytest-benchmark, tqdm, ...)
# can travel as wheels in .whl/ at the repository root (CONTRIBUTING.md, "Running on a GPU").
#
# Output, all under $OUT (default bench/results/gpu-<time>, or dry-<time> for --dry-run):
#   setup.log         wheels, the staged package and where it imports from, the machine, versions, git sha
#   tests.log         pytest
#   bench_lif.log     lif.jsonl        the LIF benchmark (a triton row per shape and mode)
#   bench_search.log  search.jsonl     candidate statistics and the search's cost
#   bench_memory.log  memory-cuda.jsonl  peak memory and step time, memory saving on/off, vs SpikingJelly
#   bench_neurons.log neurons.jsonl    PLIF's and I-LIF's gpu tests, then each against SpikingJelly's node
#   summary.txt       one line per step with its exit code, seconds and limit; the last line counts
#                     the failed steps. The script exits with that count (0: every step passed).
# Without .git in the copy, pass the commit as A2SG_GIT_SHA=<sha> so the rows record it.
set -uo pipefail

DRY=0
case "${1:-}" in
    "") ;;
    --dry-run) DRY=1 ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT=${OUT:-bench/results/$([ "$DRY" = 1 ] && echo dry || echo gpu)-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1

# Step limits in seconds; KILL_AFTER more each for a step that ignores SIGTERM. Their sum is checked
# against BUDGET below, so a longer step must take its time from another.
BUDGET=540
KILL_AFTER=2
LIMIT_SETUP=20
LIMIT_TESTS=300
LIMIT_LIF_TARGET=35
LIMIT_LIF_GRID=50
LIMIT_SEARCH=40
LIMIT_MEMORY=30
LIMIT_NEURONS=51
if [ "$DRY" = 1 ]; then
    # on a (possibly shared) CPU the tiny test selection is quick, while imports (setup) and the
    # search step's first GP fit and inductor compiles take most of a minute each
    LIMIT_SETUP=60
    LIMIT_TESTS=120
    LIMIT_SEARCH=130
    LIMIT_NEURONS=101
fi

TEST_FILES=(tests/test_gpu.py tests/test_lif.py tests/test_surrogate.py tests/test_candidate_stats.py
            tests/test_nn.py tests/test_errors.py tests/test_controller.py tests/test_bitpack.py tests/test_memory.py)
if [ "$DRY" = 1 ]; then
    # The CPU: the Triton interpreter runs the kernels on CPU tensors; tiny sizes; no GPU even if present.
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    # A few tests of each file (the whole list takes minutes under the interpreter); gpu ones skip.
    PICK=(asy-soft-attached-4-per_step-fp32-triton asy-soft-False-carry-ref-triton
          test_device_function_matches_eager test_sgv_tgc_match_the_definitions test_outputs_fully_written
          test_triton_backend_needs_a_kernel_device test_paper_neuron_and_beta_buffer
          test_grid_strategy_and_history_export test_bf16_matches_reference test_pack_round_trip_matches_reference
          test_lif_spikes_saved_by_the_next_layer_are_bits)
    TEST_SELECT=(-k "$(printf ' or %s' "${PICK[@]}" | cut -c5-)")
    # the compile provider is left out: inductor's first CPU compile alone takes most of a minute
    LIF_TARGET=(--T 4 --N 10 --dtype fp32 --reps 2 --providers triton torch spikingjelly)
    LIF_GRID=(--T 2 --N 10 --reps 2 --providers triton spikingjelly torch)
    SEARCH=(--quick --N 10 --K 1 4 --reps 2 --T 2 --batch 2 --width-div 32 --search-reps 1 --n-obs 8 --n-eval 8)
    MEMORY=(--models digits_cnn --batch 2)
    NEURON_BENCH=(--T 2 --N 10 --dtype fp32 --reps 2 --providers triton spikingjelly)
else
    TEST_SELECT=()
    # Every GPU provider at T = 4 (the targets' shape; inductor, a CPU path, is left out), then ours and
    # SpikingJelly's over the whole grid;
    # the compile provider recompiles per shape, so it runs at the target shape only.
    LIF_TARGET=(--T 4 --N 24 --dtype fp32 --providers triton nn torch compile spikingjelly)
    LIF_GRID=(--providers triton spikingjelly torch)
    SEARCH=()
    MEMORY=(--models vgg16 vggsnn --no-cpu)
    # PLIF and I-LIF at the LIF target's shape, ours against SpikingJelly's
    NEURON_BENCH=(--T 4 --N 24 --dtype fp32 --providers triton nn spikingjelly)
fi

FAILED=0
# step NAME LIMIT LOG COMMAND...: runs COMMAND under `timeout`, appends its output to $OUT/LOG (and
# shows it), and records its exit code in the summary (124: it ran past LIMIT seconds).
step() {
    local name=$1 limit=$2 log=$3 start rc
    shift 3
    start=$(date +%s)
    echo "=== $name: $* (limit ${limit}s)" | tee -a "$OUT/$log"
    timeout -k "$KILL_AFTER" "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
    rc=${PIPESTATUS[0]}
    printf 'step %-10s rc=%-3s seconds=%-4s limit=%-4s log=%s\n' "$name" "$rc" "$(($(date +%s) - start))" \
        "$limit" "$log" >> "$SUMMARY"
    [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
    return "$rc"
}
finish() {
    echo "failed steps: $FAILED" >> "$SUMMARY"
    echo; cat "$SUMMARY"
    exit "$FAILED"
}

WORST=$((LIMIT_SETUP + LIMIT_TESTS + LIMIT_LIF_TARGET + LIMIT_LIF_GRID + LIMIT_SEARCH + LIMIT_MEMORY + LIMIT_NEURONS
        + 7 * KILL_AFTER))
GIT_SHA=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "${A2SG_GIT_SHA:-unknown}")
export A2SG_GIT_SHA=$GIT_SHA
{
    echo "mode $([ "$DRY" = 1 ] && echo dry-run || echo gpu)"
    echo "git_sha $GIT_SHA"
    echo "worst_case_seconds $WORST budget_seconds $BUDGET"
} >> "$SUMMARY"
if [ "$WORST" -gt "$BUDGET" ]; then
    echo "step limits add up to ${WORST}s, over the ${BUDGET}s budget" | tee -a "$OUT/setup.log"
    FAILED=1
    finish
fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/a2sg-gpu-check.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/pkg" "$STAGE/wheels"

setup() {
    set -e
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$STAGE/wheels" .whl/*.whl
        echo "installed .whl/: $(cd .whl && ls *.whl | tr '\n' ' ')"
    fi
    python3 bench/stage_package.py "$STAGE/pkg"
    cd "$STAGE/pkg"
    # the same working directory and PYTHONPATH as every later step: the staged copy must be the one
    python3 - "$STAGE/pkg" "$DRY" <<'EOF'
import importlib.metadata, os, platform, sys
stage, dry = os.path.realpath(sys.argv[1]), sys.argv[2] == "1"
import torch, triton, botorch, gpytorch, pytest
import a2sg_triton, a2sg_triton.kernels.lif
for module in (a2sg_triton, a2sg_triton.kernels.lif):
    path = os.path.realpath(module.__file__)
    assert path.startswith(stage + os.sep), f"{module.__name__} imported from {path}, not from {stage}"
    print(f"{module.__name__} from {path}")
print(f"python {platform.python_version()} torch {torch.__version__} triton {triton.__version__} "
      f"botorch {botorch.__version__} gpytorch {gpytorch.__version__} pytest {pytest.__version__}")
for dist in importlib.metadata.distributions(path=[os.path.join(os.path.dirname(stage), "wheels")]):
    name = dist.metadata["Name"]
    print(f"from .whl/: {name} {importlib.metadata.version(name)}")  # found on the search path
for name in ("spikingjelly", "pytest-benchmark"):
    try:
        print(f"{name} {importlib.metadata.version(name)}")
    except importlib.metadata.PackageNotFoundError:
        print(f"{name}: not installed (its benchmark rows are skipped)")
if dry:
    print(f"dry run on the CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
          f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")
elif not torch.cuda.is_available():
    sys.exit("CUDA is not available: use --dry-run on a machine without a GPU")
EOF
    if [ "$DRY" = 0 ]; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    fi
}
export -f setup
export STAGE DRY
export PYTHONPATH="$STAGE/pkg:$STAGE/wheels${PYTHONPATH:+:$PYTHONPATH}"

if ! step setup "$LIMIT_SETUP" setup.log bash -c setup; then
    echo "setup failed: see $OUT/setup.log" | tee -a "$OUT/setup.log"
    finish
fi

# From here on, every step runs in the staged package's folder.
cd "$STAGE/pkg"
step tests "$LIMIT_TESTS" tests.log python3 -m pytest -q -p no:cacheprovider -rs "${TEST_SELECT[@]}" \
    "${TEST_FILES[@]/#/$REPO/}"
step lif-target "$LIMIT_LIF_TARGET" bench_lif.log python3 "$REPO/bench/bench_lif.py" "${LIF_TARGET[@]}" \
    --out "$OUT/lif.jsonl"
step lif-grid "$LIMIT_LIF_GRID" bench_lif.log python3 "$REPO/bench/bench_lif.py" "${LIF_GRID[@]}" \
    --out "$OUT/lif.jsonl"
step search "$LIMIT_SEARCH" bench_search.log python3 "$REPO/bench/bench_search.py" --stats-backend triton \
    "${SEARCH[@]}" --out "$OUT/search.jsonl"
step memory "$LIMIT_MEMORY" bench_memory.log python3 "$REPO/bench/bench_memory.py" "${MEMORY[@]}" \
    --out "$OUT/memory-cpu.jsonl" --gpu-out "$OUT/memory-cuda.jsonl"
# PLIF and I-LIF: their gpu-marked tests (bf16), then each against SpikingJelly's node (bench_lif's
# arguments follow the function name)
neurons() {
    local rc=0
    python3 -m pytest -q -p no:cacheprovider -rs -m gpu "$REPO/tests/test_plif.py" "$REPO/tests/test_ilif.py"
    case $? in 0|5) ;; *) rc=1 ;; esac  # 5: nothing collected, as on a CPU where every gpu test is deselected
    for neuron in plif ilif; do
        python3 "$REPO/bench/bench_lif.py" --neuron "$neuron" "$@" --out "$OUT/neurons.jsonl" || rc=1
    done
    return $rc
}
export -f neurons
export REPO OUT
step neurons "$LIMIT_NEURONS" bench_neurons.log bash -c 'neurons "$@"' neurons "${NEURON_BENCH[@]}"
finish
