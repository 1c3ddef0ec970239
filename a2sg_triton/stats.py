"""Gradient statistics of one layer at one timestep for K candidate surrogate widths (DESIGN.md 3.5).

For each candidate beta_k, delta_k is the LIF backward's local gradient dL/du[t] computed with
f(u; beta_k). One pass over u, grad_s, carry and ref yields, for all k, the plain sums

    sum = sum(delta_k)   sumsq = sum(delta_k^2)   sumabs = sum(|delta_k|)   dot = sum(delta_k * ref)

plus ref_sq = sum(ref^2) and n. Side by side: the readable reference (``candidate_stats_ref``,
autograd through the LIF step, one candidate at a time), the Triton launcher
(``candidate_stats_triton`` around ``candidate_stats_kernel``), the eager backend
(``candidate_stats_torch``) and the public ``candidate_stats``.
"""

import math
from dataclasses import dataclass, fields
from typing import Optional

import torch

from .lif import HeavisideSurrogate, lif_local_grad
from .surrogate import SURROGATES, check_surrogate, surrogate_grad
from .utils import (
    HAS_TRITON,
    check_flag,
    check_real,
    check_reset,
    check_tensor,
    is_compiling,
    math_dtype,
    resolve_backend,
)

if HAS_TRITON:
    import triton

    from .kernels.stats import candidate_stats_kernel

BLOCK_N = 256
BLOCK_K = 16
MAX_CHUNKS = 1024  # per-chunk partials: [MAX_CHUNKS, 4, K] fp32 at most
TORCH_CANDIDATES_PER_PASS = 16  # the eager backend materialises [16, N] deltas at a time


@dataclass
class CandidateStats:
    """Float64 sums over the N elements of one layer-timestep, one entry per candidate beta."""

    betas: torch.Tensor  # [K]
    sum: torch.Tensor  # [K]
    sumsq: torch.Tensor  # [K]
    sumabs: torch.Tensor  # [K]
    dot: Optional[torch.Tensor]  # [K], None without a reference
    ref_sq: Optional[torch.Tensor]  # scalar, None without a reference
    n: torch.Tensor  # scalar

    def sgv(self):
        """[K] Var(delta_k) / mean|delta_k|; +inf where mean|delta_k| = 0."""
        mean = self.sum / self.n
        var = (self.sumsq / self.n - mean * mean).clamp_min(0)  # rounding can dip below 0
        mean_abs = self.sumabs / self.n
        return torch.where(mean_abs > 0, var / mean_abs, torch.full_like(var, math.inf))

    def tgc(self):
        """[K] cosine similarity of delta_k with the reference; 0 where a norm is 0."""
        if self.dot is None:
            raise ValueError("tgc() needs statistics computed with ref=")
        norms = torch.sqrt(self.sumsq * self.ref_sq)
        return torch.where(norms > 0, self.dot / norms, torch.zeros_like(norms))

    def all_reduce(self, group=None):
        """Sums the statistics over the ranks of ``group`` (torch.distributed, SUM), in place."""
        import torch.distributed as dist

        names = [f.name for f in fields(self) if f.name != "betas" and getattr(self, f.name) is not None]
        flat = torch.cat([getattr(self, name).reshape(-1) for name in names])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        for name, part in zip(names, flat.split([getattr(self, name).numel() for name in names])):
            setattr(self, name, part.reshape(getattr(self, name).shape))
        return self


def _check_args(u, grad_s, betas, surrogate, carry, ref, v_th, h, reset, v_reset, detach_reset):
    """Validates everything before any kernel runs; returns (betas [K] float64, hard_reset)."""
    check_tensor("u", u)
    for name, tensor in (("grad_s", grad_s), ("carry", carry), ("ref", ref)):
        if tensor is None and name != "grad_s":
            continue
        check_tensor(name, tensor, device=u.device)
        if tensor.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {list(u.shape)}, got {list(tensor.shape)}")
    check_surrogate(surrogate, h)
    check_real("v_th", v_th)
    check_real("v_reset", v_reset)
    hard_reset = check_reset(reset)
    check_flag("detach_reset", detach_reset)
    if not isinstance(betas, torch.Tensor):
        if not isinstance(betas, (list, tuple)):
            raise TypeError(f"betas must be a 1-D tensor or a sequence of numbers, got {type(betas).__name__}")
        betas = torch.tensor([check_real("betas", b) for b in betas], dtype=torch.float64)
    check_tensor("betas", betas)
    if betas.dim() != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {list(betas.shape)}")
    if betas.device.type == "cpu" and not is_compiling():
        if not bool(torch.isfinite(betas).all()) or bool((betas <= 0).any()):
            raise ValueError(f"betas must be finite and > 0, got {betas.tolist()}")
    return betas.detach().to(torch.float64), hard_reset


def _stats_from_deltas(betas, deltas, ref):
    """deltas [K, N] (any float dtype) -> CandidateStats with float64 sums."""
    deltas = deltas.double()
    n = torch.full((), float(deltas.shape[1]), dtype=torch.float64, device=deltas.device)  # no host copy
    ref = None if ref is None else ref.double()
    return CandidateStats(
        betas=betas, sum=deltas.sum(1), sumsq=(deltas * deltas).sum(1), sumabs=deltas.abs().sum(1),
        dot=None if ref is None else deltas @ ref, ref_sq=None if ref is None else ref.dot(ref), n=n,
    )


def candidate_stats_ref(u, grad_s, betas, surrogate="box", *, carry=None, ref=None, v_th=1.0, h=0.5,
                        reset="soft", v_reset=0.0, detach_reset=False, backend="auto"):
    """Reference: for each candidate, delta_k by autograd through one LIF step, in float64."""
    betas, hard_reset = _check_args(u, grad_s, betas, surrogate, carry, ref, v_th, h, reset, v_reset, detach_reset)
    flat = [None if t is None else t.detach().double().flatten() for t in (u, grad_s, carry, ref)]
    u, grad_s, carry, ref = flat
    deltas = []
    for beta in betas.to(u.device):
        uu = u.clone().requires_grad_()
        s = HeavisideSurrogate.apply(uu, beta, surrogate, v_th, h)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * uu + s_reset * v_reset if hard_reset else uu - v_th * s_reset
        loss = (grad_s * s).sum() + (0 if carry is None else (carry * v).sum())
        deltas.append(torch.autograd.grad(loss, uu)[0])
    return _stats_from_deltas(betas, torch.stack(deltas), ref)


def candidate_stats_triton(u, grad_s, carry, ref, betas, surrogate_id, th_offset, v_th, hard_reset, v_reset,
                           detach_reset, h):
    """Flat contiguous [N] inputs -> CandidateStats (fp32 per-chunk partials, float64 final sums)."""
    N, K = u.numel(), betas.numel()
    n_blocks = max(triton.cdiv(N, BLOCK_N), 1)
    blocks_per_chunk = triton.cdiv(n_blocks, MAX_CHUNKS)
    n_chunks = triton.cdiv(n_blocks, blocks_per_chunk)
    partial = torch.empty((n_chunks, 4, K), dtype=torch.float32, device=u.device)
    ref_sq_partial = torch.empty((n_chunks,), dtype=torch.float32, device=u.device)
    candidate_stats_kernel[(n_chunks * triton.cdiv(K, BLOCK_K),)](
        u, grad_s, carry if carry is not None else u, ref if ref is not None else u,
        betas.to(device=u.device, dtype=torch.float32, non_blocking=True), partial, ref_sq_partial,
        N, K, blocks_per_chunk, th_offset, v_th, v_reset, h,
        SURROGATE=surrogate_id, HARD_RESET=hard_reset, DETACH_RESET=detach_reset,
        HAS_CARRY=carry is not None, HAS_REF=ref is not None, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )
    sums = partial.double().sum(0)  # fixed-order reduction over chunks: deterministic
    has_ref = ref is not None
    return CandidateStats(
        betas=betas, sum=sums[0], sumsq=sums[1], sumabs=sums[2], dot=sums[3] if has_ref else None,
        ref_sq=ref_sq_partial.double().sum() if has_ref else None,
        n=torch.full((), float(N), dtype=torch.float64, device=u.device),
    )


def candidate_stats_torch(u, grad_s, carry, ref, betas, surrogate_id, th_offset, v_th, hard_reset, v_reset,
                          detach_reset, h):
    """The same as the kernel in eager PyTorch: fp32 deltas (float64 for float64 input), float64 sums."""
    dtype = math_dtype(u.dtype)
    d = (u.to(dtype) - th_offset)[None, :]
    grad_s = grad_s.to(dtype)[None, :]
    carry = None if carry is None else carry.to(dtype)[None, :]
    parts = []
    for chunk in betas.to(device=u.device, dtype=dtype).split(TORCH_CANDIDATES_PER_PASS):
        f = surrogate_grad(d, chunk[:, None], SURROGATES[surrogate_id], v_th=0.0, h=h)
        parts.append(_stats_from_deltas(chunk, lif_local_grad(d, grad_s, carry, f, v_th, hard_reset, v_reset,
                                                              detach_reset), ref))
    return CandidateStats(
        betas=betas, sum=torch.cat([p.sum for p in parts]), sumsq=torch.cat([p.sumsq for p in parts]),
        sumabs=torch.cat([p.sumabs for p in parts]),
        dot=None if ref is None else torch.cat([p.dot for p in parts]),
        ref_sq=parts[0].ref_sq, n=parts[0].n,
    )


def candidate_stats(u, grad_s, betas, surrogate="box", *, carry=None, ref=None, v_th=1.0, h=0.5, reset="soft",
                    v_reset=0.0, detach_reset=False, backend="auto"):
    """SGV/TGC statistics of the LIF local gradient for K candidate widths, in one pass.

    u, grad_s (and the optional carry = dL/dv[t], ref = delta[t+1]) have one shape: one layer at one
    timestep. betas: [K] widths (tensor or sequence). Returns float64 ``CandidateStats``.
    """
    betas, hard_reset = _check_args(u, grad_s, betas, surrogate, carry, ref, v_th, h, reset, v_reset, detach_reset)
    backend = resolve_backend(backend, u)
    run = candidate_stats_triton if backend == "triton" else candidate_stats_torch
    flat = [None if t is None else t.detach().reshape(-1).contiguous() for t in (u, grad_s, carry, ref)]
    return run(*flat, betas, SURROGATES.index(surrogate), float(v_th), float(v_th), hard_reset, float(v_reset),
               detach_reset, float(h))
