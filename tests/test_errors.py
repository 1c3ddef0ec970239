"""Bad input: a clear ValueError/TypeError naming the argument, raised before any kernel runs."""

import pytest
import torch

import a2sg_triton
from a2sg_triton.reference import lif_multistep as lif_ref

X = torch.ones(4, 3, 5)

CASES = [
    # (args, kwargs, exception, message fragment)
    ((torch.ones(4, 3, dtype=torch.int32), 0.5), {}, TypeError, "x must be a floating"),
    (([1.0, 2.0], 0.5), {}, TypeError, "x must be a torch.Tensor"),
    ((torch.ones(0, 3), 0.5), {}, ValueError, "T >= 1"),
    ((torch.tensor(1.0), 0.5), {}, ValueError, "T >= 1"),
    ((X, 0.0), {}, ValueError, "beta must be > 0"),
    ((X, -0.1), {}, ValueError, "beta must be > 0"),
    ((X, float("nan")), {}, ValueError, "beta must be finite"),
    ((X, float("inf")), {}, ValueError, "beta must be finite"),
    ((X, torch.tensor([0.5, 0.5, 0.0, 0.5])), {}, ValueError, "beta must be finite and > 0"),
    ((X, torch.tensor([0.5, float("nan"), 0.5, 0.5])), {}, ValueError, "beta must be finite and > 0"),
    ((X, torch.full((5,), 0.5)), {}, ValueError, r"beta must be a float or a tensor of shape \[T\]"),
    ((X, torch.full((4, 1), 0.5)), {}, ValueError, r"beta must be a float or a tensor of shape \[T\]"),
    ((X, torch.ones(4, dtype=torch.int64)), {}, TypeError, "beta must be a floating"),
    ((X, "0.5"), {}, TypeError, "beta must be a real number"),
    ((X, torch.full((4,), 0.5, requires_grad=True)), {}, ValueError, "beta must not require grad"),
    ((X, True), {}, TypeError, "beta must be a real number"),
    ((X, 0.5, "gauss"), {}, ValueError, "surrogate must be one of"),
    ((X, 0.5), {"reset": "zero"}, ValueError, "reset must be one of"),
    ((X, 0.5, "asy"), {"h": 0.3}, ValueError, "h must be >= 0.5"),
    ((X, 0.5), {"v0": torch.zeros(3)}, ValueError, r"v0 must have shape \[3, 5\]"),
    ((X, 0.5), {"v0": torch.zeros(4, 3, 5)}, ValueError, "v0 must have shape"),
    ((X, 0.5), {"v0": torch.zeros(3, 5, dtype=torch.int64)}, TypeError, "v0 must be a floating"),
    ((X, 0.5), {"decay": float("nan")}, ValueError, "decay must be finite"),
    ((X, 0.5), {"input_scale": "1"}, TypeError, "input_scale must be a real number"),
    ((X, 0.5), {"v_th": None}, TypeError, "v_th must be a real number"),
    ((X, 0.5), {"detach_reset": 1}, TypeError, "detach_reset must be a bool"),
    ((X, 0.5), {"return_v": "yes"}, TypeError, "return_v must be a bool"),
    ((X, 0.5), {"save_dtype": torch.float16}, ValueError, "save_dtype must be"),
    ((X, 0.5), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ((X.double(), 0.5), {"backend": "triton"}, TypeError, "backend='triton' takes x in float32"),
]


@pytest.mark.parametrize("args, kwargs, exc, match", CASES)
def test_bad_input_raises_before_any_kernel(args, kwargs, exc, match, monkeypatch):
    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran before the argument check")

    monkeypatch.setattr(a2sg_triton.ops.lif, "lif_fwd", no_kernel)
    monkeypatch.setattr(a2sg_triton.ops.lif, "lif_fwd_torch", no_kernel)
    with pytest.raises(exc, match=match):
        a2sg_triton.lif_multistep(*args, **kwargs)
    if not {"backend", "save_dtype"} & kwargs.keys():  # the reference takes the math's arguments alike
        with pytest.raises(exc, match=match):
            lif_ref(*args, **kwargs)


@pytest.mark.parametrize("option", [dict(backend="torch"), dict(save_dtype=torch.bfloat16)])
def test_reference_takes_no_execution_options(option):
    with pytest.raises(TypeError, match="unexpected keyword"):
        lif_ref(X, 0.5, **option)


def test_triton_backend_needs_a_kernel_device(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if torch.cuda.is_available():
        pytest.skip("CPU tensors are rejected only when not interpreting")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        a2sg_triton.lif_multistep(X, 0.5, backend="triton")


@pytest.mark.gpu
def test_mismatched_devices():
    x = X.cuda()
    with pytest.raises(ValueError, match="beta is on cpu but x is on cuda"):
        a2sg_triton.lif_multistep(x, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="v0 is on cpu but x is on cuda"):
        a2sg_triton.lif_multistep(x, 0.5, v0=torch.zeros(3, 5))


def test_mismatched_devices_on_cpu_meta():
    """Without a GPU, the meta device stands in for a second device."""
    with pytest.raises(ValueError, match="beta is on meta but x is on cpu"):
        a2sg_triton.lif_multistep(X, torch.full((4,), 0.5, device="meta"))
    with pytest.raises(ValueError, match="v0 is on meta but x is on cpu"):
        a2sg_triton.lif_multistep(X, 0.5, v0=torch.zeros(3, 5, device="meta"))
