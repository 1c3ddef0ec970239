"""Every kernel variant compiles for sm_80 and sm_90 with the real Triton compiler, on the CPU.

The interpreter runs kernels as NumPy and accepts code the compiler would reject; Triton's CUDA
backend, with its own ptxas, ships in the wheel and lowers to a cubin without a GPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

import compile_kernels

HAS_CUDA_BACKEND = "nvidia" in getattr(triton.backends, "backends", {})


@pytest.mark.skipif(not HAS_CUDA_BACKEND, reason="this triton has no CUDA backend")
def test_every_kernel_variant_compiles():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("compile_kernels.py"))], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    expected = len(compile_kernels.CAPABILITIES) * sum(1 for _ in compile_kernels.variants())
    assert f"compiled {expected} kernel variants" in result.stdout
