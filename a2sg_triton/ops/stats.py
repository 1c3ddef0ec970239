"""Gradient statistics of one layer at one timestep for K candidate surrogate widths (docs/math.md).

For each candidate beta_k, delta_k is the LIF backward's local gradient dL/du[t] computed with
f(u; beta_k). One pass over u, grad_s, carry and ref yields, for all k, the count n, mean_k,
M2_k = sum((delta_k - mean_k)^2), sum |delta_k| and sum delta_k * ref, plus sum ref^2; the plain
sums S1, S2 follow (``CandidateStats.sum`` = n mean, ``.sumsq`` = M2 + n mean^2).

Every backend accumulates shifted sums, sum(delta_k - c_k) and sum((delta_k - c_k)^2) with c_k
delta_k at one element of the block of data it sums (the triton kernel: per chunk; the torch and
inductor backends: the first element, in float64), and ``_merge_chunks`` turns them into (count,
mean, M2) and merges the chunks by Chan et al.'s parallel formula in float64. SGV = M2 / n / mean|delta|
thus never subtracts two large sums (S2/N - (S1/N)^2 in fp32 lost everything once |mean| >> std).

Side by side: the readable reference (``candidate_stats_ref``, autograd through the LIF step, one
candidate at a time), the Triton launcher (``candidate_stats_triton`` around
``candidate_stats_kernel``), the eager backend (``candidate_stats_torch``), the inductor backend
(``candidate_stats_inductor``: the eager sums compiled into one fused C++ loop per variant), the
public ``candidate_stats``, and the armed backward's single step (``delta_stats_triton`` /
``delta_stats_torch``: delta[t] for the chosen width, written out, with its statistics in the
same pass).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from .lif import HeavisideSurrogate, StepParams, lif_bwd_step
from .surrogate import SURROGATES, check_surrogate
from .backend import HAS_TRITON, compiled_variant, is_compiling, math_dtype, resolve_backend
from .checks import check_flag, check_real, check_reset, check_tensor, positive_and_finite

if HAS_TRITON:
    import triton

    from ..kernels.stats import candidate_stats_finalize_kernel, candidate_stats_kernel

BLOCK_N = 128  # elements per loop iteration: one per thread of the default 4 warps
BLOCK_K = 16  # candidates per program, each thread's [BLOCK_K] column of accumulators
MAX_CHUNKS = 1024  # per-chunk partials: [MAX_CHUNKS, 5, K] fp32 at most
FINALIZE_BLOCK_K = 128  # candidates per program of the finalize kernel
# the eager backend: [4, N] deltas at a time (faster than 1, 8 or 16 at N = 2^16, 1 thread)
TORCH_CANDIDATES_PER_PASS = 4

# One block's shifted sums: shift, sum(delta - shift), sum((delta - shift)^2), sum |delta| (each [K]) and
# sum delta * ref ([K], None without a reference).
ShiftedSums = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


@dataclass
class CandidateStats:
    """Float64 statistics over the N elements of one layer-timestep, one entry per candidate beta.

    ``mean`` and ``m2`` (sum of squared deviations from the mean) rather than sum and sum of
    squares, so that the variance is exact when |mean| >> std; ``sum`` and ``sumsq`` give the plain
    sums S1 and S2 (docs/math.md).
    """

    betas: torch.Tensor  # [K]
    n: torch.Tensor  # scalar
    mean: torch.Tensor  # [K]
    m2: torch.Tensor  # [K] sum((delta_k - mean_k)^2)
    sumabs: torch.Tensor  # [K]
    dot: Optional[torch.Tensor]  # [K], None without a reference
    ref_sq: Optional[torch.Tensor]  # scalar, None without a reference
    # SGV and TGC as the triton backend's finalize kernel computed them (same formulas as sgv() and
    # tgc(), on the device, no further op); None: computed on demand.
    sgv_values: Optional[torch.Tensor] = None  # [K]
    tgc_values: Optional[torch.Tensor] = None  # [K], None without a reference

    @property
    def sum(self) -> torch.Tensor:
        """[K] sum(delta_k)."""
        return self.n * self.mean

    @property
    def sumsq(self) -> torch.Tensor:
        """[K] sum(delta_k^2)."""
        return self.m2 + self.n * self.mean * self.mean

    def sgv(self) -> torch.Tensor:
        """[K] Var(delta_k) / mean|delta_k|; +inf where mean|delta_k| = 0."""
        if self.sgv_values is not None:
            return self.sgv_values
        var = self.m2 / self.n
        mean_abs = self.sumabs / self.n
        return torch.where(mean_abs > 0, var / mean_abs, torch.full_like(var, math.inf))

    def tgc(self) -> torch.Tensor:
        """[K] cosine similarity of delta_k with the reference; 0 where a norm is 0.

        Raises:
            ValueError: the statistics were computed without a reference.
        """
        if self.dot is None:
            raise ValueError("tgc() needs statistics computed with ref=")
        if self.tgc_values is not None:
            return self.tgc_values
        assert self.ref_sq is not None  # computed together with dot
        norms = torch.sqrt(self.sumsq * self.ref_sq)
        return torch.where(norms > 0, self.dot / norms, torch.zeros_like(norms))

    def all_reduce(self, group: Optional[torch.distributed.ProcessGroup] = None) -> CandidateStats:
        """Merges the statistics of the ranks of ``group`` (torch.distributed), in place.

        Two SUM all-reduces: first the plain sums (n, n mean, sum |delta|, dot, ref_sq), which give
        the global mean; then each rank's M2 + n (mean_rank - mean)^2, whose sum is the global M2
        (Chan et al.'s formula). Every rank ends with the same values, so all choose the same beta.

        Args:
            group: the torch.distributed process group (None: the default group).

        Returns:
            self, merged.
        """
        import torch.distributed as dist

        plain = [self.n.reshape(1), self.n * self.mean, self.sumabs]
        if self.dot is not None:
            assert self.ref_sq is not None  # computed together with dot
            plain += [self.dot, self.ref_sq.reshape(1)]
        flat = torch.cat(plain)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        K = self.mean.numel()
        n, total, sumabs = flat[0], flat[1:1 + K], flat[1 + K:1 + 2 * K]
        mean = total / n
        m2 = self.m2 + self.n * (self.mean - mean) ** 2
        dist.all_reduce(m2, op=dist.ReduceOp.SUM, group=group)
        self.n, self.mean, self.m2, self.sumabs = n, mean, m2, sumabs
        self.sgv_values = self.tgc_values = None  # this rank's: computed anew from the merged sums
        if self.dot is not None:
            self.dot, self.ref_sq = flat[1 + 2 * K:1 + 3 * K], flat[1 + 3 * K]
        return self


def _merge_chunks(betas: torch.Tensor, counts: torch.Tensor, shift: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor,
                  sumabs: torch.Tensor, dot: Optional[torch.Tensor], ref_sq: Optional[torch.Tensor]) -> CandidateStats:
    """Shifted sums of C chunks -> CandidateStats, in float64.

    counts [C]; shift, s1 = sum(delta - shift), s2 = sum((delta - shift)^2), sumabs, dot: [C, K]
    (dot None without a reference); ref_sq: scalar or None. Each chunk gives mean = shift + s1 / n
    and M2 = s2 - s1^2 / n (no cancellation: the shift is one of the chunk's own values); the
    chunks merge by Chan et al.'s formula M2 = sum M2_c + sum n_c (mean_c - mean)^2.
    """
    counts = counts.to(torch.float64)[:, None]
    s1 = s1.to(torch.float64)
    chunk_mean = shift.to(torch.float64) + s1 / counts
    chunk_m2 = (s2.to(torch.float64) - s1 * s1 / counts).clamp_min(0)  # rounding can dip below 0
    n = counts.sum()
    mean = (counts * chunk_mean).sum(0) / n
    m2 = chunk_m2.sum(0) + (counts * (chunk_mean - mean) ** 2).sum(0)
    return CandidateStats(betas=betas, n=n, mean=mean, m2=m2, sumabs=sumabs.to(torch.float64).sum(0),
                          dot=None if dot is None else dot.to(torch.float64).sum(0), ref_sq=ref_sq)


def _check_args(u: torch.Tensor, grad_s: torch.Tensor, betas: Union[torch.Tensor, Sequence[float]], *, surrogate: str,
                carry: Optional[torch.Tensor], ref: Optional[torch.Tensor], v_th: float, h: float, reset: str,
                v_reset: float, detach_reset: bool) -> tuple[torch.Tensor, StepParams]:
    """Validates everything before any kernel runs; returns (betas [K] float64, the step's constants)."""
    check_tensor("u", u)
    if u.numel() == 0:
        raise ValueError("u must have at least one element")
    for name, tensor in (("grad_s", grad_s), ("carry", carry), ("ref", ref)):
        if tensor is None and name != "grad_s":
            continue
        check_tensor(name, tensor, device=u.device)
        assert tensor is not None  # check_tensor raised otherwise
        if tensor.shape != u.shape:
            raise ValueError(f"{name} must have u's shape {list(u.shape)}, got {list(tensor.shape)}")
    surrogate_id = check_surrogate(surrogate, h)
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
    if betas.device.type == "cpu" and not is_compiling() and not positive_and_finite(betas):
        raise ValueError(f"betas must be finite and > 0, got {betas.tolist()}")
    step = StepParams(surrogate_id, float(v_th), hard_reset, float(v_reset), detach_reset, float(h))
    return betas.detach().to(torch.float64), step


def _stats_from_deltas(betas: torch.Tensor, deltas: torch.Tensor, ref: Optional[torch.Tensor]) -> CandidateStats:
    """Reference statistics of deltas [K, N] (any float dtype), two-pass in float64."""
    deltas = deltas.double()
    n = torch.full((), float(deltas.shape[1]), dtype=torch.float64, device=deltas.device)  # no host copy
    mean = deltas.mean(1)
    ref = None if ref is None else ref.double()
    return CandidateStats(
        betas=betas, n=n, mean=mean, m2=((deltas - mean[:, None]) ** 2).sum(1), sumabs=deltas.abs().sum(1),
        dot=None if ref is None else deltas @ ref, ref_sq=None if ref is None else ref.dot(ref),
    )


def reference_deltas(u: torch.Tensor, grad_s: torch.Tensor, betas: torch.Tensor, carry: Optional[torch.Tensor],
                     step: StepParams) -> torch.Tensor:
    """[K, N] float64: for each candidate, delta_k = dL/du by autograd through one LIF step.

    Args:
        u: membrane potentials, any shape (N elements).
        grad_s: dL/ds, u's shape.
        betas: the candidate widths [K].
        carry: dL/dv, u's shape, or None.
        step: the step's constants.

    Returns:
        deltas [K, N] float64.
    """
    u, grad_s = (t.detach().double().flatten() for t in (u, grad_s))
    carry = None if carry is None else carry.detach().double().flatten()
    deltas: list[torch.Tensor] = []
    for beta in betas.to(device=u.device, dtype=torch.float64):
        uu = u.clone().requires_grad_()
        s = HeavisideSurrogate.apply(uu, beta, SURROGATES[step.surrogate_id], step.v_th, step.h)
        s_reset = s.detach() if step.detach_reset else s
        v = (1 - s_reset) * uu + s_reset * step.v_reset if step.hard_reset else uu - step.v_th * s_reset
        loss = (grad_s * s).sum() + (0 if carry is None else (carry * v).sum())
        deltas.append(torch.autograd.grad(loss, uu)[0])
    return torch.stack(deltas)


def candidate_stats_ref(u: torch.Tensor, grad_s: torch.Tensor, betas: Union[torch.Tensor, Sequence[float]],
                        surrogate: str = "box", *, carry: Optional[torch.Tensor] = None,
                        ref: Optional[torch.Tensor] = None, v_th: float = 1.0, h: float = 0.5, reset: str = "soft",
                        v_reset: float = 0.0, detach_reset: bool = False, backend: str = "auto") -> CandidateStats:
    """Reference: for each candidate, delta_k by autograd through one LIF step, in float64.

    Args: as ``candidate_stats``'s (``backend`` is not used).

    Returns:
        float64 ``CandidateStats`` over the K candidates.
    """
    betas, step = _check_args(u, grad_s, betas, surrogate=surrogate, carry=carry, ref=ref, v_th=v_th, h=h,
                              reset=reset, v_reset=v_reset, detach_reset=detach_reset)
    deltas = reference_deltas(u, grad_s, betas, carry, step)
    return _stats_from_deltas(betas, deltas, None if ref is None else ref.detach().flatten())


# ---------------------------------------------------------------------------------------------
# Triton: candidate_stats_kernel, for K candidates or for the chosen width with delta written out.
# ---------------------------------------------------------------------------------------------


def _stats_kernel(u: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor], ref: Optional[torch.Tensor],
                  betas: torch.Tensor, step: StepParams, *, th_offset: float, carry_scale: float,
                  grad_x: Optional[torch.Tensor] = None, delta: Optional[torch.Tensor] = None,
                  input_scale: float = 1.0) -> CandidateStats:
    """Two launches over flat contiguous [N] inputs -> CandidateStats, with no host sync:
    candidate_stats_kernel's per-chunk shifted sums (fp32), then candidate_stats_finalize_kernel's
    merge, SGV and TGC (float64), all on u's device. With grad_x and delta ([N] outputs) the first
    runs the one-candidate variant that also writes them. One candidate runs one lane per element
    (BLOCK_K = 1), more candidates BLOCK_K at a time."""
    N, K = u.numel(), betas.numel()
    has_ref = ref is not None
    n_blocks = triton.cdiv(N, BLOCK_N)
    blocks_per_chunk = triton.cdiv(n_blocks, MAX_CHUNKS)
    n_chunks = triton.cdiv(n_blocks, blocks_per_chunk)
    block_k = 1 if K == 1 else BLOCK_K
    # one workspace: [n_chunks, 5, K] partial sums, then [n_chunks] partial sums of ref^2
    workspace = torch.empty((n_chunks * (5 * K + 1),), dtype=torch.float32, device=u.device)
    partial, ref_sq_partial = workspace[:n_chunks * 5 * K], workspace[n_chunks * 5 * K:]
    out = torch.empty((8, K), dtype=torch.float64, device=u.device)
    candidate_stats_kernel[(n_chunks * triton.cdiv(K, block_k),)](
        u, grad_s, carry if carry is not None else u, ref if ref is not None else u,
        betas.to(device=u.device, dtype=torch.float32, non_blocking=True), partial, ref_sq_partial,
        grad_x if delta is not None else u, delta if delta is not None else u,
        N, K, blocks_per_chunk, th_offset, carry_scale, step.v_th, step.v_reset, step.h, input_scale,
        SURROGATE=step.surrogate_id, HARD_RESET=step.hard_reset, DETACH_RESET=step.detach_reset,
        HAS_CARRY=carry is not None, HAS_REF=has_ref, STORE_DELTA=delta is not None,
        BLOCK_N=BLOCK_N, BLOCK_K=block_k,
    )
    candidate_stats_finalize_kernel[(triton.cdiv(K, FINALIZE_BLOCK_K),)](
        partial, ref_sq_partial, out, N, K, n_chunks, blocks_per_chunk * BLOCK_N,
        HAS_REF=has_ref, BLOCK_K=FINALIZE_BLOCK_K,
    )
    n, mean, m2, sumabs, dot, ref_sq, sgv, tgc = out.unbind(0)
    return CandidateStats(betas=betas, n=n[0], mean=mean, m2=m2, sumabs=sumabs, dot=dot if has_ref else None,
                          ref_sq=ref_sq[0] if has_ref else None, sgv_values=sgv, tgc_values=tgc if has_ref else None)


def candidate_stats_triton(u: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                           ref: Optional[torch.Tensor], betas: torch.Tensor, step: StepParams, *,
                           th_offset: float = 0.0, carry_scale: float = 1.0) -> CandidateStats:
    """Flat contiguous [N] inputs -> CandidateStats (fp32 per-chunk shifted sums, float64 merge).
    The window is centred at u = th_offset (d = u - th_offset); the carry is carry_scale * carry."""
    return _stats_kernel(u, grad_s, carry, ref, betas, step, th_offset=th_offset, carry_scale=carry_scale)


def delta_stats_triton(d: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                       ref: Optional[torch.Tensor], beta: torch.Tensor, step: StepParams, grad_x: torch.Tensor, *,
                       carry_scale: float = 1.0, th_offset: float = 0.0,
                       input_scale: float = 1.0) -> tuple[torch.Tensor, CandidateStats]:
    """delta[t] of one width in one pass: d = u - v_th (d - th_offset the window's centre offset:
    an I-LIF level), grad_s, carry (times carry_scale), ref: flat [N]; beta: [1] on d's device.
    Writes input_scale * delta into grad_x ([N], contiguous) and returns (delta [N] fp32, its
    CandidateStats against ref)."""
    delta = torch.empty(d.shape, dtype=torch.float32, device=d.device)
    stats = _stats_kernel(d, grad_s, carry, ref, beta, step, th_offset=th_offset, carry_scale=carry_scale,
                          grad_x=grad_x, delta=delta, input_scale=input_scale)
    return delta, stats


# ---------------------------------------------------------------------------------------------
# Eager and inductor backends: one function of plain torch ops, run as it is or compiled.
# ---------------------------------------------------------------------------------------------


def _shifted_sums(deltas: torch.Tensor, shift: torch.Tensor, ref: Optional[torch.Tensor]) -> ShiftedSums:
    """deltas [K, N], shift [K, 1] -> float64 [K]: shift, sum(delta - shift), sum((delta - shift)^2),
    sum |delta|, sum delta * ref (None without ref), all in float64 (exact differences and products
    of fp32 values)."""
    deltas, shift = deltas.double(), shift.double()
    shifted = deltas - shift
    dot = None if ref is None else (deltas * ref.double()[None, :]).sum(1)
    return shift[:, 0], shifted.sum(1), (shifted * shifted).sum(1), deltas.abs().sum(1), dot


def candidate_sums_torch(u: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                         ref: Optional[torch.Tensor], betas: torch.Tensor, step: StepParams, *, th_offset: float,
                         carry_scale: float) -> ShiftedSums:
    """The shifted sums of ``_shifted_sums`` for K candidates, shifted by delta_k at element 0, in the
    math dtype (fp32; float64 for float64 u). Written so that inductor fuses it into one loop over
    [K, N] that never materialises the deltas (``candidate_stats_inductor``)."""
    dtype = math_dtype(u.dtype)
    d = u.to(dtype) - th_offset
    grad_s = grad_s.to(dtype)
    carry = None if carry is None else carry_scale * carry.to(dtype)
    ref = None if ref is None else ref.to(dtype)
    betas = betas.to(dtype)[:, None]

    # delta_k of the elements i (a slice): lif_bwd_step on [1, n] rows against [K, 1] widths
    def deltas(i: slice) -> torch.Tensor:
        return lif_bwd_step(d[None, i], grad_s[None, i], None if carry is None else carry[None, i], betas, step)

    # The shift is computed apart (not as a slice of the [K, N] deltas), so inductor need not store them.
    return _shifted_sums(deltas(slice(None)), deltas(slice(0, 1)), ref)


def candidate_stats_torch(u: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                          ref: Optional[torch.Tensor], betas: torch.Tensor, step: StepParams, *,
                          th_offset: float = 0.0, carry_scale: float = 1.0) -> CandidateStats:
    """The eager backend: ``candidate_sums_torch`` over TORCH_CANDIDATES_PER_PASS candidates at a time."""
    parts = [candidate_sums_torch(u, grad_s, carry, ref, chunk.to(u.device), step, th_offset=th_offset,
                                  carry_scale=carry_scale)
             for chunk in betas.split(TORCH_CANDIDATES_PER_PASS)]
    return _sums_to_stats(betas, u, ref, [None if p[0] is None else torch.cat(p) for p in zip(*parts)])


def candidate_stats_inductor(u: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                             ref: Optional[torch.Tensor], betas: torch.Tensor, step: StepParams, *,
                             th_offset: float = 0.0, carry_scale: float = 1.0) -> CandidateStats:
    """The inductor backend: ``candidate_sums_torch`` compiled once per variant (utils.compiled_variant)
    into a fused loop over all K candidates."""
    sums = compiled_variant(candidate_sums_torch, u.dtype, carry is None, ref is None, step, th_offset, carry_scale,
                            numel=u.numel() * betas.numel())
    return _sums_to_stats(betas, u, ref, sums(u, grad_s, carry, ref, betas.to(u.device), step, th_offset=th_offset,
                                              carry_scale=carry_scale))


def _sums_to_stats(betas: torch.Tensor, u: torch.Tensor, ref: Optional[torch.Tensor],
                   sums: Sequence[Any]) -> CandidateStats:
    """One chunk's shifted sums (all N elements) -> CandidateStats."""
    shift, s1, s2, sumabs, dot = sums
    ref_sq = None if ref is None else ref.double().dot(ref.double())
    counts = torch.full((1,), float(u.numel()), dtype=torch.float64, device=u.device)
    return _merge_chunks(betas, counts, shift[None], s1[None], s2[None], sumabs[None],
                         None if dot is None else dot[None], ref_sq)


def delta_stats_torch(d: torch.Tensor, grad_s: torch.Tensor, carry: Optional[torch.Tensor],
                      ref: Optional[torch.Tensor], beta: torch.Tensor, step: StepParams, grad_x: torch.Tensor, *,
                      carry_scale: float = 1.0, th_offset: float = 0.0,
                      input_scale: float = 1.0) -> tuple[torch.Tensor, CandidateStats]:
    """``delta_stats_triton`` in torch ops: lif_bwd_step with the width beta ([1]), then the
    statistics of that very delta."""
    dtype = math_dtype(d.dtype)
    carry = None if carry is None else carry_scale * carry.to(dtype)
    delta = lif_bwd_step(d.to(dtype) - th_offset, grad_s.to(dtype), carry, beta.to(dtype), step)
    grad_x.copy_(input_scale * delta)
    ref = None if ref is None else ref.to(dtype)
    return delta, _sums_to_stats(beta, d, ref, _shifted_sums(delta[None, :], delta[None, :1], ref))


CANDIDATE_STATS: dict[str, Callable[..., CandidateStats]] = {
    "triton": candidate_stats_triton, "torch": candidate_stats_torch, "inductor": candidate_stats_inductor}
DELTA_STATS: dict[str, Callable[..., tuple[torch.Tensor, CandidateStats]]] = {
    "triton": delta_stats_triton, "torch": delta_stats_torch, "inductor": delta_stats_torch}


def candidate_stats(u: torch.Tensor, grad_s: torch.Tensor, betas: Union[torch.Tensor, Sequence[float]],
                    surrogate: str = "box", *, carry: Optional[torch.Tensor] = None,
                    ref: Optional[torch.Tensor] = None, v_th: float = 1.0, h: float = 0.5, reset: str = "soft",
                    v_reset: float = 0.0, detach_reset: bool = False, backend: str = "auto") -> CandidateStats:
    """SGV/TGC statistics of the LIF local gradient for K candidate widths, in one pass.

    u, grad_s (and the optional carry = dL/dv[t], ref = delta[t+1]) have one shape: one layer at one
    timestep. betas: [K] widths (tensor or sequence). Returns float64 ``CandidateStats``.

    Args:
        u: the membrane potentials u[t] (any shape, N elements).
        grad_s: dL/ds[t], u's shape.
        betas: the candidate widths [K] (a tensor or a sequence of numbers), each finite and > 0.
        surrogate: one of SURROGATES.
        carry: dL/dv[t], u's shape, or None.
        ref: the reference delta[t+1] for TGC, u's shape, or None.
        v_th, h, reset, v_reset, detach_reset: the LIF step's constants.
        backend: "auto", "triton", "torch" or "inductor".

    Returns:
        float64 ``CandidateStats`` over the K candidates.
    """
    betas, step = _check_args(u, grad_s, betas, surrogate=surrogate, carry=carry, ref=ref, v_th=v_th, h=h,
                              reset=reset, v_reset=v_reset, detach_reset=detach_reset)
    backend = resolve_backend(backend, u)
    flat = [None if t is None else t.detach().reshape(-1).contiguous() for t in (u, grad_s, carry, ref)]
    return CANDIDATE_STATS[backend](*flat, betas, step, th_offset=step.v_th)
