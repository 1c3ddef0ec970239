"""The eager surrogates (source of truth) against docs/math.md and against the Triton device function."""

import math

import pytest
import torch
import triton
import triton.language as tl

from a2sg_triton import SURROGATES, surrogate_grad
from a2sg_triton.kernels.surrogate import surrogate_grad as surrogate_grad_device
from helpers import KERNEL_DEVICE


@triton.jit
def _surrogate_kernel(d_ptr, out_ptr, beta, h, N, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    d = tl.load(d_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, surrogate_grad_device(d, beta, h, SURROGATE), mask=mask)


def device_surrogate(d, beta, surrogate, h):
    out = torch.full_like(d, float("nan"))
    _surrogate_kernel[(triton.cdiv(d.numel(), 256),)](d, out, beta, h, d.numel(),
                                                      SURROGATE=SURROGATES.index(surrogate), BLOCK=256)
    return out


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_device_function_matches_eager(surrogate, beta):
    d = torch.linspace(-2.5, 2.5, 1001, dtype=torch.float32, device=KERNEL_DEVICE)  # 1001: partial last block
    h = 0.6
    got = device_surrogate(d, beta, surrogate, h).double()
    want = surrogate_grad(d.double() + 1.0, beta, surrogate, v_th=1.0, h=h)
    # identical formulas in fp32 vs float64; the window test sees the same fp32 d on both sides
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-6 / beta)


@pytest.mark.parametrize("beta", [0.25, 0.5])  # dyadic: the edges are exact
def test_closed_forms(beta):
    v_th = 0.75
    u = torch.tensor([v_th - 2 * beta, v_th - beta, v_th - beta / 2, v_th, v_th + beta / 2, v_th + beta,
                      v_th + 2 * beta], dtype=torch.float64)
    inside = torch.tensor([0, 0, 1, 1, 1, 0, 0], dtype=torch.float64)
    d = u - v_th
    expect = {
        "box": inside / (2 * beta),
        "tri": inside * (beta - d.abs()) / beta**2,
        "asy": inside * (d / (2 * beta) + 0.5),
        "asy_unit": inside * (d + beta) / (2 * beta**2),
        "atan": (1 / (2 * beta)) / (1 + (math.pi * d / (2 * beta)) ** 2),
        "sigmoid": (2 / beta) * torch.sigmoid(2 * d / beta) * (1 - torch.sigmoid(2 * d / beta)),
    }
    for name, want in expect.items():
        torch.testing.assert_close(surrogate_grad(u, beta, name, v_th=v_th), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("surrogate, area", [("box", 1.0), ("tri", 1.0), ("asy_unit", 1.0), ("asy", None),
                                             ("atan", 1.0), ("sigmoid", 1.0)])
def test_areas(surrogate, area, beta):
    """Area over u: 1 for the unit-area shapes, 2 beta h for asy (Eq. 10). Trapezoid rule on a fine grid."""
    h = 0.75
    span = 4000 * beta if surrogate == "atan" else 40 * beta  # atan's tails decay like 1/d^2
    u = torch.linspace(1 - span, 1 + span, 4_000_001, dtype=torch.float64)
    got = torch.trapezoid(surrogate_grad(u, beta, surrogate, h=h), u).item()
    want = 2 * beta * h if area is None else area
    tail = 1 - 2 / math.pi * math.atan(math.pi * span / (2 * beta)) if surrogate == "atan" else 0.0
    assert abs(got - (want - tail)) < 1e-5


def test_per_element_beta_broadcasts():
    u = torch.tensor([[0.9, 1.2], [0.9, 1.2]], dtype=torch.float64)
    beta = torch.tensor([[0.05], [0.5]], dtype=torch.float64)
    torch.testing.assert_close(surrogate_grad(u, beta, "box"), torch.tensor([[0.0, 0.0], [1.0, 1.0]],
                                                                               dtype=torch.float64))


def test_bad_arguments():
    u = torch.zeros(3)
    with pytest.raises(ValueError, match="surrogate"):
        surrogate_grad(u, 0.5, "gauss")
    with pytest.raises(ValueError, match="h must be >= 0.5"):
        surrogate_grad(u, 0.5, "asy", h=0.4)
    with pytest.raises(TypeError, match="u must be"):
        surrogate_grad([1.0], 0.5, "box")
    with pytest.raises(TypeError, match="u must be a floating"):
        surrogate_grad(torch.zeros(3, dtype=torch.int64), 0.5, "box")
