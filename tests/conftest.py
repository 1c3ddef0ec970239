import os

import pytest
import torch

# Without CUDA the Triton kernels run under the interpreter on CPU tensors; this must be set before
# triton.jit wraps the kernels, i.e. before a2sg_triton is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# backend="auto" on CPU tensors runs the eager backend here: compiling each of the hundreds of variants
# the suite tries with inductor would take too long. The inductor backend has tests of its own.
os.environ.setdefault("A2SG_CPU_BACKEND", "torch")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def nan_outputs(monkeypatch):
    """Every torch.empty / empty_like float buffer starts as NaN, so an unwritten output fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poisoned(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poisoned(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poisoned(empty_like(*a, **k)))
    assert torch.empty(3).isnan().all() and torch.empty_like(torch.zeros(2)).isnan().all()
