"""The candidate-statistics kernel's instruction budget (issue 13): compiled for sm_90 by the real
compiler (bench/ptx_report.py, no GPU needed), its steady-state loop executes at most 16 PTX
instructions per (element, candidate) pair, with no shuffle or barrier in the loop and no spill."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA_BACKEND = "nvidia" in getattr(triton.backends, "backends", {})
MAX_PTX_PER_PAIR = 16


@pytest.mark.skipif(not HAS_CUDA_BACKEND, reason="this triton has no CUDA backend")
def test_statistics_loop_within_budget(tmp_path):
    out = tmp_path / "ptx.jsonl"
    # the variant (box, carry + ref), A²SG's (asy) and the costliest surrogate (sigmoid)
    match = "^fp32,(box|asy|sigmoid),hard_reset,has_carry,has_ref$"
    command = [sys.executable, str(ROOT / "bench" / "ptx_report.py"), "--kernels", "candidate_stats_kernel",
               "--arch", "90", "--match", match, "--jobs", "1", "--out", str(out)]
    result = subprocess.run(command, env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["unit"] == "pair" and row["loop_reads_ok"], row["variant"]
        assert row["loop_ptx_per_unit"] <= MAX_PTX_PER_PAIR, (row["variant"], row["loop_ptx_per_unit"])
        assert row["loop_shfl"] == row["loop_bar"] == 0, row["variant"]
        assert row["spill_store_bytes"] == row["spill_load_bytes"] == row["sass_local_ops"] == 0, row["variant"]
