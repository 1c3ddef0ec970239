"""Surrogate derivatives f(u; beta) = ds/du, the eager source of truth (docs/math.md).

The Triton device function ``a2sg_triton.kernels.surrogate.surrogate_grad`` computes the same
values; ``SURROGATES`` gives each name its kernel id (its index).
"""

import math

import torch

from .checks import check_real, check_tensor

SURROGATES = ("box", "tri", "asy", "asy_unit", "atan", "sigmoid")


def check_surrogate(surrogate, h) -> int:
    """Checks the name and ``h`` (h >= 0.5 for asy, so f >= 0 on the window); returns the kernel id."""
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    check_real("h", h)
    if surrogate == "asy" and h < 0.5:
        raise ValueError(f"h must be >= 0.5 for the asy surrogate, got {h}")
    return SURROGATES.index(surrogate)


def surrogate_grad(u, beta, surrogate="box", v_th=1.0, h=0.5):
    """Elementwise f(u; beta) of the named surrogate; ``beta`` is a float or broadcasts to u.

    Every windowed surrogate is 0 outside the strict window |u - v_th| < beta.
    """
    check_surrogate(surrogate, h)
    check_tensor("u", u)
    beta = torch.as_tensor(beta, dtype=u.dtype, device=u.device)
    d = u - v_th
    in_window = d.abs() < beta
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    if surrogate == "box":
        return torch.where(in_window, 1 / (2 * beta), zero)
    if surrogate == "tri":
        return torch.where(in_window, (beta - d.abs()) / beta**2, zero)
    if surrogate == "asy":
        return torch.where(in_window, d / (2 * beta) + h, zero)
    if surrogate == "asy_unit":
        return torch.where(in_window, (d + beta) / (2 * beta**2), zero)
    if surrogate == "atan":
        return (1 / (2 * beta)) / (1 + (math.pi * d / (2 * beta)) ** 2)
    alpha = 2 / beta  # sigmoid
    sg = torch.sigmoid(alpha * d)
    return alpha * sg * (1 - sg)
