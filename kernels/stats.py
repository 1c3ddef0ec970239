import triton
import triton.language as tl

from .neuron import local_grad
from .surrogate import surrogate_grad


@triton.jit
def _load(ptr, offs, mask, MASKED: tl.constexpr):
    """ptr[offs] as fp32; masked lanes (MASKED) read 0."""
    if MASKED:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        x = tl.load(ptr + offs)
    return x.to(tl.float32)


@triton.jit
def _store(ptr, offs, x, mask, MASKED: tl.constexpr):
    """ptr[offs] = x ([1, BLOCK]) in ptr's dtype; masked lanes (MASKED) are not written."""
    if MASKED:
        tl.store(ptr + offs[None, :], x.to(ptr.dtype.element_ty), mask=mask[None, :])
    else:
        tl.store(ptr + offs[None, :], x.to(ptr.dtype.element_ty))


@triton.jit
def _candidate_deltas(u_ptr, grad_s_ptr, carry_ptr, offs, mask, beta, th_offset, carry_scale, v_th, v_reset, h,
                      SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr,
                      HAS_CARRY: tl.constexpr, MASKED: tl.constexpr):
    """delta_k of the elements at offs ([BLOCK]) for the widths beta ([BLOCK_K, 1]) -> [BLOCK_K, BLOCK].

    Masked lanes (MASKED) load grad_s = carry = 0, so their delta is 0 for every surrogate.
    """
    d = _load(u_ptr, offs, mask, MASKED) - th_offset
    grad_s = _load(grad_s_ptr, offs, mask, MASKED)
    carry = 0.0
    if HAS_CARRY:
        carry = (carry_scale * _load(carry_ptr, offs, mask, MASKED))[None, :]
    f = surrogate_grad(d[None, :], beta, h, SURROGATE)
    return local_grad(d[None, :], grad_s[None, :], carry, f, v_th, v_reset, HARD_RESET, DETACH_RESET, HAS_CARRY)


@triton.jit
def _accumulate(u_ptr, grad_s_ptr, carry_ptr, ref_ptr, grad_x_ptr, delta_ptr, offs, mask, beta, shift,
                acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq, th_offset, carry_scale, v_th, v_reset, h, input_scale,
                SURROGATE: tl.constexpr, HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr,
                HAS_CARRY: tl.constexpr, HAS_REF: tl.constexpr, STORE_DELTA: tl.constexpr, MASKED: tl.constexpr):
    """Adds one block of elements to the [BLOCK_K, BLOCK_N] accumulators (one lane per column)."""
    delta = _candidate_deltas(u_ptr, grad_s_ptr, carry_ptr, offs, mask, beta, th_offset, carry_scale, v_th, v_reset,
                              h, SURROGATE, HARD_RESET, DETACH_RESET, HAS_CARRY, MASKED)
    shifted = delta - shift
    if MASKED:  # a masked lane's delta is 0, but delta - shift is not
        shifted = tl.where(mask[None, :], shifted, 0.0)
    acc_s1 += shifted
    acc_s2 += shifted * shifted
    acc_abs += tl.abs(delta)
    if HAS_REF:
        ref = _load(ref_ptr, offs, mask, MASKED)
        acc_dot += delta * ref[None, :]
        acc_ref_sq += ref * ref
    if STORE_DELTA:  # one candidate (BLOCK_K = 1): the chosen width's delta and grad_x = input_scale * delta
        _store(delta_ptr, offs, delta, mask, MASKED)
        _store(grad_x_ptr, offs, input_scale * delta, mask, MASKED)
    return acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq


@triton.jit
def candidate_stats_kernel(
    u_ptr,  # [N] membrane (or u - v_th with th_offset = 0)
    grad_s_ptr,  # [N] dL/ds
    carry_ptr,  # [N] dL/dv[t] / carry_scale (read only when HAS_CARRY)
    ref_ptr,  # [N] reference delta[t + 1] (read only when HAS_REF)
    betas_ptr,  # [K] fp32 candidate widths
    partial_ptr,  # [n_chunks, 5, K] fp32 out, per chunk: shift c_k, sum(delta - c_k), sum((delta - c_k)^2),
    #               sum |delta|, sum delta * ref (the last written only when HAS_REF)
    ref_sq_partial_ptr,  # [n_chunks] fp32 out: per-chunk sum of ref^2 (written only when HAS_REF)
    grad_x_ptr,  # [N] out, input_scale * delta (written only when STORE_DELTA)
    delta_ptr,  # [N] fp32 out, delta (written only when STORE_DELTA)
    N,
    K,
    blocks_per_chunk,
    th_offset,  # d = u - th_offset
    carry_scale,  # the carry is carry_scale * carry_ptr[i] (the controller passes delta[t + 1] and decay)
    v_th,
    v_reset,
    h,
    input_scale,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    HAS_REF: tl.constexpr,
    STORE_DELTA: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Candidate tiles of one chunk get neighbouring program ids, so they run together and share
    # the chunk through L2: DRAM sees the data about once whatever K is.
    pid = tl.program_id(0).to(tl.int64)
    n_k_tiles = tl.cdiv(K, BLOCK_K)
    chunk = pid // n_k_tiles
    ks = (pid % n_k_tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    beta = tl.load(betas_ptr + ks, mask=k_mask, other=1.0)[:, None]  # [BLOCK_K, 1]
    chunk_start = chunk * blocks_per_chunk * BLOCK_N
    chunk_len = tl.minimum(blocks_per_chunk * BLOCK_N, N - chunk_start)

    # Shifted sums: each candidate's sums are of delta - c_k with c_k its delta at the chunk's first
    # element, so an fp32 sum of squares does not cancel when |mean| >> std (the host merges the
    # chunks' (count, mean, M2) in float64 by Chan's formula).
    first = chunk_start + tl.arange(0, 1)
    shift = _candidate_deltas(u_ptr, grad_s_ptr, carry_ptr, first, None, beta, th_offset, carry_scale, v_th,
                              v_reset, h, SURROGATE, HARD_RESET, DETACH_RESET, HAS_CARRY, False)  # [BLOCK_K, 1]

    # Per-lane accumulators, reduced across lanes once after the loop.
    acc_s1 = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    acc_s2 = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    acc_abs = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    acc_dot = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    acc_ref_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    offs = chunk_start + tl.arange(0, BLOCK_N)
    for _ in range(chunk_len // BLOCK_N):  # full blocks: no masks
        acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq = _accumulate(
            u_ptr, grad_s_ptr, carry_ptr, ref_ptr, grad_x_ptr, delta_ptr, offs, None, beta, shift,
            acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq, th_offset, carry_scale, v_th, v_reset, h, input_scale,
            SURROGATE, HARD_RESET, DETACH_RESET, HAS_CARRY, HAS_REF, STORE_DELTA, False)
        offs += BLOCK_N
    if chunk_len % BLOCK_N != 0:  # the last, partial block of the last chunk
        acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq = _accumulate(
            u_ptr, grad_s_ptr, carry_ptr, ref_ptr, grad_x_ptr, delta_ptr, offs, offs < N, beta, shift,
            acc_s1, acc_s2, acc_abs, acc_dot, acc_ref_sq, th_offset, carry_scale, v_th, v_reset, h, input_scale,
            SURROGATE, HARD_RESET, DETACH_RESET, HAS_CARRY, HAS_REF, STORE_DELTA, True)

    out = partial_ptr + chunk * 5 * K + ks
    tl.store(out, tl.sum(shift, axis=1), mask=k_mask)
    tl.store(out + K, tl.sum(acc_s1, axis=1), mask=k_mask)
    tl.store(out + 2 * K, tl.sum(acc_s2, axis=1), mask=k_mask)
    tl.store(out + 3 * K, tl.sum(acc_abs, axis=1), mask=k_mask)
    if HAS_REF:
        tl.store(out + 4 * K, tl.sum(acc_dot, axis=1), mask=k_mask)
        if pid % n_k_tiles == 0:
            tl.store(ref_sq_partial_ptr + chunk, tl.sum(acc_ref_sq, axis=0))


@triton.jit
def _chunk_moments(partial_ptr, c, ks, k_mask, K, N, chunk_len):
    """Chunk c's element count, the address of its row of shifted sums, and per candidate its mean
    shift + s1 / n and its shifted sum s1, in float64."""
    n_c = tl.minimum(chunk_len, N - c * chunk_len).to(tl.float64)
    row = partial_ptr + c * 5 * K + ks
    shift = tl.load(row, mask=k_mask, other=0.0).to(tl.float64)
    s1 = tl.load(row + K, mask=k_mask, other=0.0).to(tl.float64)
    return n_c, row, shift + s1 / n_c, s1


@triton.jit
def candidate_stats_finalize_kernel(
    partial_ptr,  # [n_chunks, 5, K] fp32: candidate_stats_kernel's per-chunk shifted sums
    ref_sq_partial_ptr,  # [n_chunks] fp32: per-chunk sum of ref^2 (read only when HAS_REF)
    out_ptr,  # [8, K] float64 out: n, mean, M2, sum |delta|, sum delta * ref, sum ref^2, SGV, TGC
    #           (the rows of the reference and TGC written only when HAS_REF; n and sum ref^2 in every column)
    N,
    K,
    n_chunks,
    chunk_len,  # elements per chunk; the last chunk holds the rest
    HAS_REF: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # The second stage of the statistics, on the device: each chunk's (count, mean, M2) from its shifted
    # sums, merged in float64 by Chan et al.'s formula in chunk order (deterministic), then SGV and TGC.
    ks = tl.program_id(0).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = ks < K
    n = N.to(tl.float64)
    total = tl.zeros([BLOCK_K], dtype=tl.float64)  # sum of delta_k = sum over chunks of n_c mean_c
    sumabs = tl.zeros([BLOCK_K], dtype=tl.float64)
    dot = tl.zeros([BLOCK_K], dtype=tl.float64)
    ref_sq = tl.zeros([BLOCK_K], dtype=tl.float64)
    for c in range(n_chunks):
        n_c, row, chunk_mean, s1 = _chunk_moments(partial_ptr, c, ks, k_mask, K, N, chunk_len)
        total += n_c * chunk_mean
        sumabs += tl.load(row + 3 * K, mask=k_mask, other=0.0).to(tl.float64)
        if HAS_REF:
            dot += tl.load(row + 4 * K, mask=k_mask, other=0.0).to(tl.float64)
            ref_sq += tl.load(ref_sq_partial_ptr + c).to(tl.float64)
    mean = total / n
    m2 = tl.zeros([BLOCK_K], dtype=tl.float64)
    for c in range(n_chunks):
        n_c, row, chunk_mean, s1 = _chunk_moments(partial_ptr, c, ks, k_mask, K, N, chunk_len)
        s2 = tl.load(row + 2 * K, mask=k_mask, other=0.0).to(tl.float64)
        chunk_m2 = tl.maximum(s2 - s1 * s1 / n_c, 0.0)  # rounding can dip below 0
        m2 += chunk_m2 + n_c * (chunk_mean - mean) * (chunk_mean - mean)
    mean_abs = sumabs / n
    # where a denominator is 0 the other branch is taken: divide by 1 there, not by 0
    sgv = tl.where(mean_abs > 0, (m2 / n) / tl.where(mean_abs > 0, mean_abs, 1.0), float("inf"))
    out = out_ptr + ks
    tl.store(out, tl.zeros([BLOCK_K], dtype=tl.float64) + n, mask=k_mask)
    tl.store(out + K, mean, mask=k_mask)
    tl.store(out + 2 * K, m2, mask=k_mask)
    tl.store(out + 3 * K, sumabs, mask=k_mask)
    tl.store(out + 6 * K, sgv, mask=k_mask)
    if HAS_REF:
        norms = tl.sqrt((m2 + n * mean * mean) * ref_sq)
        tl.store(out + 4 * K, dot, mask=k_mask)
        tl.store(out + 5 * K, ref_sq, mask=k_mask)
        tl.store(out + 7 * K, tl.where(norms > 0, dot / tl.where(norms > 0, norms, 1.0), 0.0), mask=k_mask)
