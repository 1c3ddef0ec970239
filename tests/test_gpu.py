"""CUDA-only checks of the compiled (not interpreted) kernels: bf16, large N, bf16-saved state."""

import pytest
import torch

import a2sg_triton
from a2sg_triton import SURROGATES
from helpers import compare_to_reference

pytestmark = pytest.mark.gpu


def cuda_input(T, N, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return 1.5 + 1.5 * torch.randn((T, N), generator=g, device="cuda")


@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_bf16_matches_reference(surrogate, reset):
    x = cuda_input(4, 3 * 1024 + 17)
    v0 = 0.5 * torch.randn(x.shape[1], device="cuda")
    compare_to_reference(x, torch.tensor([0.3, 0.5, 0.8, 0.45], device="cuda"), surrogate, v0=v0,
                         dtype=torch.bfloat16, reset=reset)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_large_n(dtype):
    """2^22 + 3 neurons: many blocks and a ragged tail, against the float64 reference on the GPU."""
    compare_to_reference(cuda_input(4, 2**22 + 3), 0.5, "asy", v0=None, dtype=dtype)


def test_large_t_times_n_offsets():
    """T * N > 2^31 elements: pointer offsets must not wrap around in 32 bits (fp16 keeps it at 8.6 GB)."""
    T, N = 2, 2**30 + 1
    free, _ = torch.cuda.mem_get_info()
    if free < 6 * T * N * 2 + (1 << 30):
        pytest.skip("not enough GPU memory")
    x = torch.full((T, N), 2.5, dtype=torch.float16, device="cuda").requires_grad_()
    s = a2sg_triton.lif_multistep(x, 0.5, "box", backend="triton")
    assert s[:, -1].tolist() == [1.0, 1.0] and bool((s == 1).all())
    s.sum().backward()
    assert torch.isfinite(x.grad[:, -1]).all()


def test_bf16_saved_state_is_close():
    x = cuda_input(4, 1 << 16)
    grads = []
    for save_dtype in (None, torch.bfloat16):
        xx = x.clone().requires_grad_()
        s = a2sg_triton.lif_multistep(xx, 0.5, "tri", backend="triton", save_dtype=save_dtype)
        s.sum().backward()
        grads.append(xx.grad)
    # bf16 keeps 8 bits of u - v_th, so TRI's slope term moves by about 2^-8 of f
    assert (grads[0] - grads[1]).abs().max() <= 2**-6 * grads[0].abs().max()
