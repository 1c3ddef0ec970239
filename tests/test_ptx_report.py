"""bench/ptx_report.py finds and counts the steady-state loop of real compiled kernels (no GPU needed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

from a2sg_triton.ops.stats import BLOCK_K, BLOCK_N

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA_BACKEND = "nvidia" in getattr(triton.backends, "backends", {})


@pytest.mark.skipif(not HAS_CUDA_BACKEND, reason="this triton has no CUDA backend")
def test_report_counts_the_loop(tmp_path):
    out = tmp_path / "ptx.jsonl"
    match = "^(fp32,box,has_carry,has_ref|fp16,has_v0)$"
    command = [sys.executable, str(ROOT / "bench" / "ptx_report.py"), "--kernels", "lif_fwd_kernel",
               "candidate_stats_kernel", "--arch", "90", "--match", match, "--jobs", "1", "--out", str(out)]
    result = subprocess.run(command,
                            env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    fwd, stats = sorted(rows, key=lambda row: row["kernel"] == "candidate_stats_kernel")
    assert len(rows) == 2 and "PTX instructions per pair" in result.stdout
    for row in rows:
        assert row["arch"] == "sm_90" and row["loop_found"] and row["nested_loops"] == 0
        assert row["loop_reads_ok"]  # the loop's global loads are exactly one block of each input
        assert row["registers"] == row["ptxas_registers"] > 0
        assert row["spill_store_bytes"] is not None and row["local_bytes"] >= 0
        assert row["loop_ptx"] < row["ptx_instructions"] and row["git_sha"] and row["triton"]
    # one chunk-loop iteration: BLOCK_N x BLOCK_K pairs on 128 threads; u fp32, grad_s bf16, carry, ref fp32
    pairs = BLOCK_N * BLOCK_K
    assert stats["unit"] == "pair" and stats["units_per_iteration"] == pairs and stats["threads"] == 128
    assert stats["loop_reads_expected"] == BLOCK_N * (4 + 2 + 4 + 4)
    assert stats["loop_ptx_per_unit"] == pytest.approx(stats["loop_ptx"] * 128 / pairs)
    # the LIF forward's loop over T: one timestep of BLOCK fp16 inputs, no cross-thread traffic
    assert fwd["unit"] == "element" and fwd["loop_reads_expected"] == 1024 * 2
    assert fwd["loop_shfl"] == fwd["loop_bar"] == 0 and fwd["loop_ptx_per_unit"] > 1


@pytest.mark.skipif(not HAS_CUDA_BACKEND, reason="this triton has no CUDA backend")
def test_a_loopless_kernel_is_counted_whole_and_passes(tmp_path):
    """pack_bits has no loop: its whole body is the one iteration, whose loads LOOP_WORK predicts."""
    out = tmp_path / "ptx.jsonl"
    command = [sys.executable, str(ROOT / "bench" / "ptx_report.py"), "--kernels", "pack_bits_kernel", "--arch", "90",
               "--match", "^fp32,", "--jobs", "1", "--out", str(out)]
    result = subprocess.run(command, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["loop_found"] and row["loop_reads_ok"] and row["loop_ptx"] == row["ptx_instructions"]
