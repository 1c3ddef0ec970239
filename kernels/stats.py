import triton
import triton.language as tl

from .neuron import local_grad
from .surrogate import surrogate_grad


@triton.jit
def candidate_stats_kernel(
    u_ptr,  # [N] membrane (or u - v_th with th_offset = 0)
    grad_s_ptr,  # [N] dL/ds
    carry_ptr,  # [N] dL/dv[t] from step t + 1 (read only when HAS_CARRY)
    ref_ptr,  # [N] reference delta[t + 1] (read only when HAS_REF)
    betas_ptr,  # [K] fp32 candidate widths
    partial_ptr,  # [n_chunks, 4, K] fp32 out: per-chunk sum, sum of squares, sum of |.|, dot with ref
    ref_sq_partial_ptr,  # [n_chunks] fp32 out: per-chunk sum of ref^2 (written only when HAS_REF)
    N,
    K,
    blocks_per_chunk,
    th_offset,  # d = u - th_offset
    v_th,
    v_reset,
    h,
    SURROGATE: tl.constexpr,
    HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    HAS_CARRY: tl.constexpr,
    HAS_REF: tl.constexpr,
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

    acc_sum = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc_sumsq = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc_sumabs = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc_dot = tl.zeros([BLOCK_K], dtype=tl.float32)
    acc_ref_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
    chunk_start = chunk * blocks_per_chunk * BLOCK_N
    for b in range(blocks_per_chunk):
        offs = chunk_start + b * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = offs < N
        d = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32) - th_offset
        # padding lanes load grad_s = carry = 0, so their delta is 0 for every surrogate
        grad_s = tl.load(grad_s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        f = surrogate_grad(d[None, :], beta, h, SURROGATE)  # [BLOCK_K, BLOCK_N]
        if HAS_CARRY:
            carry = tl.load(carry_ptr + offs, mask=mask, other=0.0).to(tl.float32)[None, :]
        else:
            carry = 0.0
        delta = local_grad(d[None, :], grad_s[None, :], carry, f, v_th, v_reset, HARD_RESET, DETACH_RESET, HAS_CARRY)
        acc_sum += tl.sum(delta, axis=1)
        acc_sumsq += tl.sum(delta * delta, axis=1)
        acc_sumabs += tl.sum(tl.abs(delta), axis=1)
        if HAS_REF:
            ref = tl.load(ref_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc_dot += tl.sum(delta * ref[None, :], axis=1)
            acc_ref_sq += ref * ref
    out = partial_ptr + chunk * 4 * K + ks
    tl.store(out, acc_sum, mask=k_mask)
    tl.store(out + K, acc_sumsq, mask=k_mask)
    tl.store(out + 2 * K, acc_sumabs, mask=k_mask)
    tl.store(out + 3 * K, acc_dot, mask=k_mask)
    if HAS_REF:
        if pid % n_k_tiles == 0:
            tl.store(ref_sq_partial_ptr + chunk, tl.sum(acc_ref_sq, axis=0))
