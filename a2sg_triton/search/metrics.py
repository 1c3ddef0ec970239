"""SGV and TGC straight from their definitions (docs/math.md, the paper's Eq. 8 and 9).

The search computes them from fused sums instead (``CandidateStats.sgv`` / ``.tgc``); these are
the readable definitions those are tested against.
"""

from __future__ import annotations

import torch

from ..ops.checks import check_tensor


def sgv(delta: torch.Tensor) -> torch.Tensor:
    """Spatial gradient variation Var(delta) / mean(|delta|) over all elements (population variance).

    Not scale-invariant, as the paper defines it.

    Args:
        delta: local gradients, any shape (e.g. [B, ...] of one timestep).

    Returns:
        A float64 scalar tensor on delta's device; +inf when mean(|delta|) = 0.
    """
    check_tensor("delta", delta)
    delta = delta.detach().double().flatten()
    mean_abs = delta.abs().mean()
    if mean_abs == 0:
        return torch.tensor(float("inf"), dtype=torch.float64, device=delta.device)
    return delta.var(correction=0) / mean_abs


def tgc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Temporal gradient consistency: cosine similarity <a, b> / (|a| |b|) over all elements.

    Args:
        a: local gradients of one timestep, any shape.
        b: those of another timestep, a's shape.

    Returns:
        A float64 scalar tensor on a's device; 0 when either norm is 0.
    """
    check_tensor("a", a)
    check_tensor("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    norms = a.norm() * b.norm()
    if norms == 0:
        return torch.zeros((), dtype=torch.float64, device=a.device)
    return a.dot(b) / norms
