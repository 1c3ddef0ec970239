"""Compiles every kernel variant for real GPUs (sm_80, sm_90) on this machine, no GPU needed.

Run by tests/test_kernel_compile.py in a process of its own, since the test session imports the
kernels under the interpreter (TRITON_INTERPRET=1), which only the real compiler checks fully.
bench/ptx_report.py compiles the same variants() through compile_variant() and reports their
registers, spills and loop instructions.
"""

import itertools
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from a2sg_triton.ops.bitpack import BLOCK_BYTES
from a2sg_triton.kernels.bitpack import pack_bits_kernel, unpack_bits_kernel
from a2sg_triton.kernels.ilif import ilif_bwd_kernel, ilif_fwd_kernel
from a2sg_triton.kernels.lif import lif_bwd_kernel, lif_fwd_kernel
from a2sg_triton.kernels.plif import plif_bwd_kernel, plif_fwd_kernel
from a2sg_triton.kernels.stats import candidate_stats_finalize_kernel, candidate_stats_kernel
from a2sg_triton.kernels.tdbn_lif import tdbn_fwd_kernel, tdbn_lif_bwd_kernel
from a2sg_triton.ops._neuron import BLOCK_SIZES
from a2sg_triton.ops.tdbn_lif import NORM_BLOCK
from a2sg_triton.ops.stats import BLOCK_K, BLOCK_N, FINALIZE_BLOCK_K
from a2sg_triton.ops.surrogate import SURROGATES

CAPABILITIES = (90, 80)
FLAGS = list(itertools.product([False, True], repeat=2))
DEFAULT_NUM_WARPS = 4  # Triton's default, which these kernels' launchers keep:
DEFAULT_WARPS_KERNELS = (candidate_stats_kernel, candidate_stats_finalize_kernel, pack_bits_kernel, unpack_bits_kernel,
                         tdbn_fwd_kernel)
# The LIF launchers choose (BLOCK, num_warps) from BLOCK_SIZES by N: every flag combination is compiled
# at the largest block, and each smaller block with the default flags of every dtype / surrogate.
BLOCK = BLOCK_SIZES[0][0]


def variants():
    """(kernel, signature, constexprs) for every flag combination the launchers can ask for."""
    for dtype in ("fp32", "fp16", "bf16"):
        signature = {"x_ptr": f"*{dtype}", "v0_ptr": f"*{dtype}", "spikes_ptr": f"*{dtype}", "d_ptr": "*fp32",
                     "v_last_ptr": "*fp32", "N": "i32", "T": "i32", "decay": "fp32", "input_scale": "fp32",
                     "v_th": "fp32", "v_reset": "fp32"}
        for has_v0, hard, store in itertools.product([False, True], repeat=3):
            yield lif_fwd_kernel, signature, {"HAS_V0": has_v0, "HARD_RESET": hard, "STORE_V_LAST": store,
                                              "BLOCK": BLOCK}
        for block, _ in BLOCK_SIZES[1:]:
            yield lif_fwd_kernel, signature, {"HAS_V0": False, "HARD_RESET": False, "STORE_V_LAST": False,
                                              "BLOCK": block}
    bwd_signature = {"grad_spikes_ptr": "*bf16", "d_ptr": "*bf16", "beta_ptr": "*fp32", "grad_v_last_ptr": "*fp32",
                     "grad_x_ptr": "*bf16", "grad_v0_ptr": "*fp32", "N": "i32", "T": "i32",
                     "last_step_offset": "i64", "decay": "fp32", "input_scale": "fp32", "v_th": "fp32",
                     "v_reset": "fp32", "h": "fp32"}
    stats_signature = {"u_ptr": "*fp32", "grad_s_ptr": "*bf16", "carry_ptr": "*fp32", "ref_ptr": "*fp32",
                       "betas_ptr": "*fp32", "partial_ptr": "*fp32", "ref_sq_partial_ptr": "*fp32",
                       "grad_x_ptr": "*bf16", "delta_ptr": "*fp32", "N": "i32", "K": "i32",
                       "blocks_per_chunk": "i32", "th_offset": "fp32", "carry_scale": "fp32", "v_th": "fp32",
                       "v_reset": "fp32", "h": "fp32", "input_scale": "fp32"}
    for dtype in ("fp32", "fp16", "bf16"):
        yield pack_bits_kernel, {"x_ptr": f"*{dtype}", "packed_ptr": "*u8", "M": "i32"}, {"BLOCK": BLOCK_BYTES}
        yield unpack_bits_kernel, {"packed_ptr": "*u8", "x_ptr": f"*{dtype}", "M": "i32"}, {"BLOCK": BLOCK_BYTES}
        norm_signature = {"y_ptr": f"*{dtype}", "mean_ptr": "*fp32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                          "z_ptr": f"*{dtype}", "M": "i32", "C": "i32", "channel_div": "i32"}
        yield tdbn_fwd_kernel, norm_signature, {"BLOCK": NORM_BLOCK}
    recompute_signature = {"y_ptr": "*bf16", "mean_ptr": "*fp32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
                           "grad_spikes_ptr": "*bf16", "beta_ptr": "*fp32", "d_ptr": "*fp32", "grad_x_ptr": "*bf16",
                           "N": "i32", "T": "i32", "C": "i32", "channel_div": "i32", "last_step_offset": "i64",
                           "decay": "fp32", "input_scale": "fp32", "v_th": "fp32", "v_reset": "fp32", "h": "fp32"}
    for hard in (False, True):  # the recompute alone: its launcher passes SURROGATE=0, DETACH_RESET=False
        yield tdbn_lif_bwd_kernel, recompute_signature, {"SURROGATE": 0, "HARD_RESET": hard, "DETACH_RESET": False,
                                                         "BACKWARD": False, "BLOCK": BLOCK}
    for surrogate, (hard, detach), present in itertools.product(range(len(SURROGATES)), FLAGS, [False, True]):
        if present:
            yield tdbn_lif_bwd_kernel, recompute_signature, {"SURROGATE": surrogate, "HARD_RESET": hard,
                                                             "DETACH_RESET": detach, "BACKWARD": True, "BLOCK": BLOCK}
        yield lif_bwd_kernel, bwd_signature, {"SURROGATE": surrogate, "HARD_RESET": hard, "DETACH_RESET": detach,
                                              "HAS_GRAD_V_LAST": present, "STORE_GRAD_V0": present, "BLOCK": BLOCK}
        # K candidates, the armed backward's step (one width, delta written out) and, with the default
        # reset, one candidate (K = 1, one lane per element)
        one_candidate = [(False, 1)] if (hard, detach) == (False, False) else []
        for store_delta, block_k in [(False, BLOCK_K), (True, 1), *one_candidate]:
            yield candidate_stats_kernel, stats_signature, {
                "SURROGATE": surrogate, "HARD_RESET": hard, "DETACH_RESET": detach, "HAS_CARRY": present,
                "HAS_REF": present, "STORE_DELTA": store_delta, "BLOCK_N": BLOCK_N, "BLOCK_K": block_k}
    finalize_signature = {"partial_ptr": "*fp32", "ref_sq_partial_ptr": "*fp32", "out_ptr": "*fp64", "N": "i32",
                          "K": "i32", "n_chunks": "i32", "chunk_len": "i32"}
    for has_ref in (False, True):
        yield candidate_stats_finalize_kernel, finalize_signature, {"HAS_REF": has_ref,
                                                                    "BLOCK_K": FINALIZE_BLOCK_K}
    for surrogate, (block, _) in itertools.product(range(len(SURROGATES)), BLOCK_SIZES[1:]):
        yield lif_bwd_kernel, bwd_signature, {"SURROGATE": surrogate, "HARD_RESET": False, "DETACH_RESET": False,
                                              "HAS_GRAD_V_LAST": False, "STORE_GRAD_V0": False, "BLOCK": block}
        yield tdbn_lif_bwd_kernel, recompute_signature, {"SURROGATE": surrogate, "HARD_RESET": False,
                                                         "DETACH_RESET": False, "BACKWARD": True, "BLOCK": block}
    yield from plif_variants()
    yield from ilif_variants()


def plif_variants():
    """PLIF at the largest block: the forward with every (decay_input, reset) and its state paths on
    and off; the backward once per surrogate with and without decay_input, cycling reset / detach."""
    fwd_signature = {"x_ptr": "*bf16", "w_ptr": "*fp32", "v0_ptr": "*bf16", "spikes_ptr": "*bf16", "d_ptr": "*fp32",
                     "v_last_ptr": "*fp32", "N": "i32", "T": "i32", "v_th": "fp32", "v_reset": "fp32"}
    for decay_input, hard in FLAGS:
        yield plif_fwd_kernel, fwd_signature, {"DECAY_INPUT": decay_input, "HAS_V0": hard, "HARD_RESET": hard,
                                               "STORE_V_LAST": not hard, "BLOCK": BLOCK}
    bwd_signature = {"grad_spikes_ptr": "*bf16", "d_ptr": "*bf16", "x_ptr": "*bf16", "w_ptr": "*fp32",
                     "v0_ptr": "*bf16", "beta_ptr": "*fp32", "grad_v_last_ptr": "*fp32", "grad_x_ptr": "*bf16",
                     "grad_v0_ptr": "*fp32", "grad_k_partial_ptr": "*fp32", "N": "i32", "T": "i32",
                     "last_step_offset": "i64", "v_th": "fp32", "v_reset": "fp32", "h": "fp32"}
    for surrogate, decay_input in itertools.product(range(len(SURROGATES)), [False, True]):
        hard, detach = FLAGS[(2 * surrogate + decay_input) % len(FLAGS)]
        yield plif_bwd_kernel, bwd_signature, {"SURROGATE": surrogate, "HARD_RESET": hard, "DETACH_RESET": detach,
                                               "DECAY_INPUT": decay_input, "HAS_V0": decay_input,
                                               "HAS_GRAD_V_LAST": not decay_input, "STORE_GRAD_V0": decay_input,
                                               "BLOCK": BLOCK}


def ilif_variants():
    """I-LIF at the largest block, every flag combination: the forward per input dtype (and u saved in
    bf16 once), the backward per surrogate (D and beta are runtime arguments, no variants)."""
    for dtype, save, (has_v0, store) in itertools.product(("fp32", "fp16", "bf16"), ("fp32", "bf16"), FLAGS):
        if save == "bf16" and dtype != "bf16":
            continue
        signature = {"x_ptr": f"*{dtype}", "v0_ptr": f"*{dtype}", "q_ptr": f"*{dtype}", "u_ptr": f"*{save}",
                     "v_last_ptr": "*fp32", "N": "i32", "T": "i32", "D": "i32", "decay": "fp32",
                     "input_scale": "fp32", "v_th": "fp32"}
        yield ilif_fwd_kernel, signature, {"HAS_V0": has_v0, "STORE_V_LAST": store, "BLOCK": BLOCK}
    bwd_signature = {"grad_q_ptr": "*bf16", "u_ptr": "*bf16", "beta_ptr": "*fp32", "grad_v_last_ptr": "*fp32",
                     "grad_x_ptr": "*bf16", "grad_v0_ptr": "*fp32", "N": "i32", "T": "i32", "D": "i32",
                     "last_step_offset": "i64", "decay": "fp32", "input_scale": "fp32", "v_th": "fp32", "h": "fp32"}
    for surrogate, detach, (has_grad_v_last, store) in itertools.product(range(len(SURROGATES)), [False, True],
                                                                         FLAGS):
        yield ilif_bwd_kernel, bwd_signature, {"SURROGATE": surrogate, "DETACH_RESET": detach,
                                               "HAS_GRAD_V_LAST": has_grad_v_last, "STORE_GRAD_V0": store,
                                               "BLOCK": BLOCK}


def num_warps(fn, constexprs):
    """The num_warps the launcher uses with this variant."""
    if fn in DEFAULT_WARPS_KERNELS:
        return DEFAULT_NUM_WARPS
    return dict(BLOCK_SIZES)[constexprs["BLOCK"]]


def compile_variant(fn, signature, constexprs, capability):
    """-> the CompiledKernel (asm["ptx"], asm["cubin"], ...) of one variant for sm_<capability>."""
    source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
                       constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps(fn, constexprs)})


def main():
    count = 0
    for capability in CAPABILITIES:
        for fn, signature, constexprs in variants():
            kernel = compile_variant(fn, signature, constexprs, capability)
            if not kernel.asm.get("cubin"):
                sys.exit(f"{fn.__name__} {constexprs} sm_{capability}: no cubin")
            count += 1
    print(f"compiled {count} kernel variants")


if __name__ == "__main__":
    main()
