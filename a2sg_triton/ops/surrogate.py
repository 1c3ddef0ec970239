"""Surrogate derivatives f(u; beta) = ds/du, the eager source of truth (docs/math.md).

The Triton device function ``a2sg_triton.kernels.surrogate.surrogate_grad`` computes the same
values; ``SURROGATES`` gives each name its kernel id (its index).
"""

import math
from typing import Any, Union

import torch

from .checks import check_real, check_tensor

SURROGATES = ("box", "tri", "asy", "asy_unit", "atan", "sigmoid")


def check_surrogate(surrogate: Any, h: Any) -> int:
    """Checks the name and ``h`` (h >= 0.5 for asy, so f >= 0 on the window); returns the kernel id.

    Args:
        surrogate: one of SURROGATES.
        h: the asy surrogate's offset (a real number; >= 0.5 for asy).

    Returns:
        The surrogate's kernel id, its index in SURROGATES.

    Raises:
        ValueError: an unknown name, or h < 0.5 for asy.
        TypeError: h is not a real number.
    """
    if not isinstance(surrogate, str) or surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
    check_real("h", h)
    if surrogate == "asy" and h < 0.5:
        raise ValueError(f"h must be >= 0.5 for the asy surrogate, got {h}")
    return SURROGATES.index(surrogate)


def surrogate_grad(u: torch.Tensor, beta: Union[float, torch.Tensor], surrogate: str = "box", *, v_th: float = 1.0,
                   h: float = 0.5) -> torch.Tensor:
    """Elementwise f(u; beta) of the named surrogate; ``beta`` is a float or broadcasts to u.

    Every windowed surrogate is 0 outside the strict window |u - v_th| < beta.

    Args:
        u: membrane potentials, any shape.
        beta: the width: a float or a tensor that broadcasts to u.
        surrogate: one of SURROGATES.
        v_th: the threshold the window is centred on.
        h: the asy surrogate's value at the threshold.

    Returns:
        f(u; beta), u's shape and dtype.
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
