"""What each kernel variant compiles to on sm_80 / sm_90: registers, spills, loop instructions.

    python bench/ptx_report.py                                 # every variant, sm_90 and sm_80
    python bench/ptx_report.py --kernels candidate_stats_kernel --arch 90 --no-write   # while iterating
    python bench/ptx_report.py --kernels candidate_stats_kernel --arch 90 --match "^fp32,box,has_carry" --no-write

No GPU is needed: every variant of tests/compile_kernels.py's variants() (the list CI compiles; a
new kernel or flag goes there) is compiled by Triton's real compiler with the CUDA backend and
tools that ship in the triton wheel, with the num_warps its launcher uses (per block size), into a
fresh, temporary Triton cache (so ptxas runs for every variant and its log can be read). Rows go to
bench/results/ptx-<UTC date>.jsonl (replaced if it exists: one report per day) with the machine,
versions and git sha, and a table to stdout, then a summary of the candidate-statistics kernel.

Per variant:
  registers      REG of the cubin Triton built (cuobjdump --dump-resource-usage); ptxas_registers is
                 ptxas's own "Used N registers" from Triton's ptxas run (TRITON_DUMP_PTXAS_LOG),
                 where this Triton prints it. The two must agree.
  spills         spill_store_bytes / spill_load_bytes from that ptxas log ("N bytes spill stores,
                 M bytes spill loads"); local_bytes (per-thread local memory, where spills live)
                 from cuobjdump; sass_local_ops counts STL/LDL instructions in the SASS. Without a
                 ptxas log the two spill fields are None and local_bytes / sass_local_ops tell.
  shfl, bar      shfl.sync and CTA barriers (bar.sync / barrier.sync / bar.red) in the PTX, in the
                 loop and in the whole kernel; sass_shfl / sass_bar likewise (SHFL*, BAR*) in SASS.
  loop_ptx       PTX instructions in one iteration of the steady-state loop, and loop_ptx_per_unit
                 = loop_ptx x threads / units per iteration: the instructions all threads together
                 execute per element (LIF: per element and timestep) or, for the candidate
                 statistics, per (element, candidate) pair. loop_sass / loop_sass_per_unit are the
                 same count over the SASS (nvdisasm), which is what the GPU runs.

How the loop is found and counted:
  * PTX: a loop is a label `$L__BB...:` that a later `bra` jumps back to; its body is every line
    from that label to the last such branch (LLVM lays a loop's blocks out contiguously, and marks
    its header "Loop Header" in a comment, which the report does not rely on). SASS likewise: a
    `.L_x_N:` label that a later `BRA` targets. The steady-state loop is the outermost loop that
    holds a global load (`ld.global` / `LDG`) and has the most instructions; loops inside it are
    counted once (nested_loops says how many: then the per-unit count is a lower bound).
  * An instruction is each `;`-terminated statement that is not a directive (`.loc`, `.reg`, ...),
    a label, a brace or a comment; predicated ones (`@%p ld...`) and those inside inline-asm blocks
    count. Both sides of a branch inside the body count (Triton predicates masks, so there are
    rarely any). SASS NOPs do not count.
  * Units per iteration come from LOOP_WORK below (BLOCK elements for LIF; BLOCK_N x BLOCK_K
    pairs for the statistics). As a check, the global-load bytes of one iteration, summed over
    all threads, must equal what LOOP_WORK says the loop reads (every element of its per-element
    arrays once, plus its per-iteration scalars once per thread): loop_reads_ok. A kernel without
    a loop (`loopless` in LOOP_WORK) is counted whole, as its one iteration. If a rewrite
    changes what one iteration covers (unrolling, several blocks per iteration), update LOOP_WORK
    until loop_reads_ok holds again; the report warns while it does not.
"""

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The real compiler, not the interpreter, and a fresh cache so that ptxas runs for every variant;
# both before triton or a2sg_triton are imported.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default today, without its warning
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
_CACHE = tempfile.TemporaryDirectory(prefix="ptx-report-cache-")
os.environ["TRITON_CACHE_DIR"] = _CACHE.name

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # bench/ is plain scripts, not a package
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # compile_kernels: the variant list CI compiles

import torch  # noqa: E402
import triton  # noqa: E402

import compile_kernels  # noqa: E402
from a2sg_triton.ops.surrogate import SURROGATES  # noqa: E402
from bench_lif import run_metadata  # noqa: E402

ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "u8": 1, "i32": 4, "i64": 8}

# What one iteration of each kernel's steady-state loop covers and reads (module docstring):
#   elements    constexpr giving the elements per iteration (LIF: one timestep of BLOCK neurons)
#   candidates  constexpr giving the candidates per iteration (units are then pairs), or None
#   reads       pointer arguments read once per element per iteration
#   uniform     pointer arguments read once per thread per iteration (a scalar all threads load)
LOOP_WORK = {
    "lif_fwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["x_ptr"], uniform=[]),
    "lif_bwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["grad_spikes_ptr", "d_ptr"],
                                     uniform=["beta_ptr"]),
    # PLIF: LIF's loops; the backward's also reads x (decay_input) for dL/dk and step t-1's d (the
    # recomputed v[t-1]), which the next iteration reuses as its own d
    "plif_fwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["x_ptr"], uniform=[]),
    "plif_bwd_kernel": lambda c: dict(elements="BLOCK", candidates=None,
                                      reads=["grad_spikes_ptr", "d_ptr"] + ["x_ptr"] * c["DECAY_INPUT"],
                                      uniform=["beta_ptr"]),
    # I-LIF: the backward's loop over the D levels sits inside the loop over T (nested_loops 1), its
    # one width load counted once
    "ilif_fwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["x_ptr"], uniform=[]),
    "ilif_bwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["grad_q_ptr", "u_ptr"],
                                      uniform=["beta_ptr"]),
    # loopless: the whole kernel is one pass over a block of bytes (8 spikes each) or of elements
    # (channel values gathered), counted as the one iteration
    "pack_bits_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["x_ptr"] * 8, uniform=[],
                                       loopless=True),
    "unpack_bits_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["packed_ptr"], uniform=[],
                                         loopless=True),
    "tdbn_fwd_kernel": lambda c: dict(elements="BLOCK", candidates=None,
                                      reads=["y_ptr", "mean_ptr", "scale_ptr", "bias_ptr"], uniform=[],
                                      loopless=True),
    # the recompute loop over T, or with BACKWARD the larger LIF backward loop after it (lif_bwd_kernel's)
    "tdbn_lif_bwd_kernel": lambda c: dict(elements="BLOCK", candidates=None, reads=["y_ptr"], uniform=[])
    if not c["BACKWARD"] else dict(elements="BLOCK", candidates=None, reads=["grad_spikes_ptr", "d_ptr"],
                                   uniform=["beta_ptr"]),
    # the statistics' second stage: per chunk, each of BLOCK_K candidates' shifted sums (the M2 pass reads
    # shift, s1, s2; the first pass shift, s1, sum |delta| and, with HAS_REF, the dot and the chunk's ref^2)
    "candidate_stats_finalize_kernel": lambda c: dict(
        elements="BLOCK_K", candidates=None, reads=["partial_ptr"] * (4 if c["HAS_REF"] else 3),
        uniform=["ref_sq_partial_ptr"] * c["HAS_REF"]),
    # STORE_DELTA: the armed backward's step, one width (BLOCK_K = 1): per element, not per pair
    "candidate_stats_kernel": lambda c: dict(
        elements="BLOCK_N", candidates=None if c["STORE_DELTA"] else "BLOCK_K",
        reads=["u_ptr", "grad_s_ptr"] + ["carry_ptr"] * c["HAS_CARRY"] + ["ref_ptr"] * c["HAS_REF"], uniform=[]),
}

# ---------------------------------------------------------------------------------------------
# Tools shipped in the triton wheel.
# ---------------------------------------------------------------------------------------------


def nvidia_tool(name):
    """Path of a CUDA tool Triton ships (honouring Triton's TRITON_<NAME>_PATH override)."""
    knobs = getattr(triton, "knobs", None)
    tool = getattr(getattr(knobs, "nvidia", None), name.replace("-", "_"), None)
    if tool is not None:
        return tool.path
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def run_tool(name, *args):
    return subprocess.run([nvidia_tool(name), *map(str, args)], capture_output=True, text=True, check=True).stdout


@functools.lru_cache
def ptxas_version(capability):
    """The version line of the ptxas Triton uses for sm_<capability> (it picks one per architecture)."""
    from triton.backends.nvidia import compiler

    try:
        path = compiler.get_ptxas(capability).path
    except TypeError:  # older Triton: one ptxas for every architecture
        path = compiler.get_ptxas().path
    except AttributeError:
        path = nvidia_tool("ptxas")
    return subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]


def resource_usage(cubin_path):
    """-> {REG, STACK, SHARED, LOCAL} of the one function in the cubin (cuobjdump)."""
    out = run_tool("cuobjdump", "--dump-resource-usage", cubin_path)
    match = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not match:
        raise RuntimeError(f"no resource usage in cuobjdump's output:\n{out}")
    return dict(zip(("REG", "STACK", "SHARED", "LOCAL"), map(int, match.groups())))


def parse_ptxas_log(text):
    """-> (registers, spill store bytes, spill load bytes) from `ptxas -v` output, or Nones."""
    regs = re.search(r"Used (\d+) registers", text)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (int(regs[1]) if regs else None, int(spills[1]) if spills else None, int(spills[2]) if spills else None)


# ---------------------------------------------------------------------------------------------
# Parsing PTX and SASS into labels and instructions, and finding loops.
# ---------------------------------------------------------------------------------------------

PTX_LABEL = re.compile(r"^(\$L__BB\d+_\d+):")
PTX_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__BB\d+_\d+)")
SASS_LABEL = re.compile(r"^(\.L_x_\d+):")
SASS_LINE = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(.*?)\s*;")
SASS_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+`?\(?(\.L_x_\d+)")


def ptx_items(ptx):
    """-> [(label or None, opcode or None, statement)] in program order, for the first .entry."""
    body = ptx[ptx.index(".entry"):]
    items = []
    for line in body.splitlines():
        code = line.split("//", 1)[0].strip()
        label = PTX_LABEL.match(code)
        if label:
            items.append((label[1], None, code))
            continue
        for statement in code.split(";"):
            statement = statement.strip().lstrip("{}").strip()
            if not statement or statement.startswith(".") or statement.endswith(":") or statement == "}":
                continue
            words = statement.split()
            opcode = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
            items.append((None, opcode, statement))
    return items


def sass_items(sass):
    """-> [(label or None, opcode or None, instruction)] from nvdisasm's listing (NOPs left out)."""
    items = []
    for line in sass.splitlines():
        label = SASS_LABEL.match(line.strip())
        if label:
            items.append((label[1], None, line.strip()))
            continue
        match = SASS_LINE.match(line)
        if match:
            instruction = match[1]
            words = instruction.split()
            opcode = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
            if opcode != "NOP":
                items.append((None, opcode, instruction))
    return items


def find_loops(items, branch):
    """-> [(start, end)] index spans: a label and the last later branch back to it."""
    where = {label: i for i, (label, _, _) in enumerate(items) if label}
    last_back = {}
    for i, (_, opcode, text) in enumerate(items):
        if opcode is None:
            continue
        target = branch.search(text)
        if target and target[1] in where and where[target[1]] <= i:
            last_back[target[1]] = i
    return sorted((where[label], end) for label, end in last_back.items())


def ptx_access_bytes(opcode):
    """Bytes one thread moves with a PTX ld/st opcode: vector width x element bits / 8."""
    parts = opcode.split(".")
    vec = next((int(p[1:]) for p in parts if re.fullmatch(r"v\d+", p)), 1)
    bits = next((int(p[1:]) for p in reversed(parts) if re.fullmatch(r"[bfsu](8|16|32|64|128)", p)), 0)
    return vec * bits // 8


def is_barrier(opcode, sass=False):
    if sass:
        return opcode.startswith("BAR")
    return opcode.startswith(("bar.sync", "barrier.sync", "bar.red", "barrier.red", "barrier.cta"))


def count(items, sass=False):
    """-> instruction, shuffle, barrier and global load/store byte counts of an item list."""
    ops = [opcode for _, opcode, _ in items if opcode]
    if sass:
        return {"instructions": len(ops), "shfl": sum(o.startswith("SHFL") for o in ops),
                "bar": sum(is_barrier(o, True) for o in ops), "global_loads": sum(o.startswith("LDG") for o in ops),
                "local_ops": sum(o.startswith(("STL", "LDL")) for o in ops)}
    return {"instructions": len(ops), "shfl": sum(o.startswith("shfl.sync") for o in ops),
            "bar": sum(is_barrier(o) for o in ops),
            "global_load_bytes": sum(ptx_access_bytes(o) for o in ops if o.startswith("ld.global")),
            "global_store_bytes": sum(ptx_access_bytes(o) for o in ops if o.startswith("st.global")),
            "global_loads": sum(o.startswith("ld.global") for o in ops)}


def steady_loop(items, branch, sass=False):
    """-> (loop items, nested loop count) of the steady-state loop (module docstring), or (None, 0)."""
    loops = find_loops(items, branch)
    outer = [(s, e) for s, e in loops if not any(s2 <= s and e <= e2 and (s2, e2) != (s, e) for s2, e2 in loops)]
    loads = "LDG" if sass else "ld.global"
    with_loads = [(s, e) for s, e in outer if any(o and o.startswith(loads) for _, o, _ in items[s:e + 1])]
    if not with_loads:
        return None, 0
    start, end = max(with_loads, key=lambda span: count(items[span[0]:span[1] + 1], sass)["instructions"])
    nested = sum(start <= s and e <= end and (s, e) != (start, end) for s, e in loops)
    return items[start:end + 1], nested


# ---------------------------------------------------------------------------------------------
# One variant.
# ---------------------------------------------------------------------------------------------


def variant_name(signature, constexprs):
    """Short name: the first pointer argument's dtype, the surrogate, the set boolean flags, the
    block size where it is not the LIF launchers' largest (blockN), and one candidate per lane
    (k1) where the statistics kernel runs a single width without writing it out."""
    parts = [next(v.lstrip("*") for v in signature.values() if v.startswith("*"))]
    for key, value in constexprs.items():
        if key == "SURROGATE":
            parts.append(SURROGATES[value])
        elif value is True:
            parts.append(key.lower())
        elif key == "BLOCK" and value != compile_kernels.BLOCK:
            parts.append(f"block{value}")
    if constexprs.get("BLOCK_K") == 1 and constexprs.get("STORE_DELTA") is False:
        parts.append("k1")
    return ",".join(parts)


def analyse(fn, signature, constexprs, capability):
    """Compiles one variant and -> its report row (without the run metadata)."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # Triton prints the ptxas log with TRITON_DUMP_PTXAS_LOG=1
        kernel = compile_kernels.compile_variant(fn, signature, constexprs, capability)
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    with tempfile.TemporaryDirectory() as tmp:
        cubin_path = Path(tmp) / "kernel.cubin"
        cubin_path.write_bytes(cubin)
        usage = resource_usage(cubin_path)
        sass = run_tool("nvdisasm", "-c", cubin_path)
    ptxas_regs, spill_stores, spill_loads = parse_ptxas_log(log.getvalue())

    name = fn.__name__
    threads = 32 * kernel.metadata.num_warps
    work = LOOP_WORK[name](constexprs)
    elements = constexprs[work["elements"]]
    candidates = constexprs[work["candidates"]] if work["candidates"] else None
    units = elements * (candidates or 1)
    expected_reads = (elements * sum(ITEMSIZE[signature[a].lstrip("*")] for a in work["reads"])
                      + threads * sum(ITEMSIZE[signature[a].lstrip("*")] for a in work["uniform"]))

    p_items, s_items = ptx_items(ptx), sass_items(sass)
    if work.get("loopless"):  # the whole kernel is the one iteration
        (loop, nested), (s_loop, s_nested) = (p_items, 0), (s_items, 0)
    else:
        loop, nested = steady_loop(p_items, PTX_BRANCH)
        s_loop, s_nested = steady_loop(s_items, SASS_BRANCH, sass=True)
    total, s_total = count(p_items), count(s_items, sass=True)
    row = {
        "kernel": name, "variant": variant_name(signature, constexprs), "arch": f"sm_{capability}",
        "constexprs": constexprs, "signature": signature, "num_warps": kernel.metadata.num_warps,
        "threads": threads, "ptxas": ptxas_version(capability), "unit": "pair" if candidates else "element",
        "units_per_iteration": units,
        "registers": usage["REG"], "ptxas_registers": ptxas_regs, "spill_store_bytes": spill_stores,
        "spill_load_bytes": spill_loads, "local_bytes": usage["LOCAL"], "stack_bytes": usage["STACK"],
        "shared_bytes": usage["SHARED"], "sass_local_ops": s_total["local_ops"],
        "ptx_instructions": total["instructions"], "shfl": total["shfl"], "bar": total["bar"],
        "sass_instructions": s_total["instructions"], "sass_shfl": s_total["shfl"], "sass_bar": s_total["bar"],
        "loop_found": loop is not None,
    }
    if loop is not None:
        body = count(loop)
        row.update({
            "loop_ptx": body["instructions"], "loop_ptx_per_unit": body["instructions"] * threads / units,
            "loop_shfl": body["shfl"], "loop_bar": body["bar"], "nested_loops": nested,
            "loop_read_bytes": body["global_load_bytes"] * threads, "loop_reads_expected": expected_reads,
            "loop_reads_ok": body["global_load_bytes"] * threads == expected_reads,
            "loop_write_bytes": body["global_store_bytes"] * threads,
        })
    if s_loop is not None:
        s_body = count(s_loop, sass=True)
        row.update({"loop_sass": s_body["instructions"], "loop_sass_per_unit": s_body["instructions"] * threads / units,
                    "loop_sass_shfl": s_body["shfl"], "loop_sass_bar": s_body["bar"],
                    "loop_sass_local_ops": s_body["local_ops"], "sass_nested_loops": s_nested})
    return row


# ---------------------------------------------------------------------------------------------
# Table and driver.
# ---------------------------------------------------------------------------------------------

HEADER = (f"{'kernel':<22} {'variant':<48} {'arch':<5} {'regs':>4} {'spill':>9} {'loop':>5} {'/unit':>7} "
          f"{'sass/u':>7} {'shfl':>9} {'bar':>7} {'reads':>5}")


def fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_row(r):
    spill = "?" if r["spill_store_bytes"] is None else f"{r['spill_store_bytes']}/{r['spill_load_bytes']}"
    loop = r.get("loop_ptx")
    unit = {"pair": "p", "element": "e"}[r["unit"]]
    per = "-" if loop is None else f"{r['loop_ptx_per_unit']:.2f}{unit}"
    shfl = f"{fmt(r.get('loop_shfl'), 'd')}/{r['shfl']}"
    bar = f"{fmt(r.get('loop_bar'), 'd')}/{r['bar']}"
    reads = "-" if loop is None else ("ok" if r["loop_reads_ok"] else "OFF")
    return (f"{r['kernel']:<22} {r['variant']:<48} {r['arch']:<5} {r['registers']:>4} {spill:>9} "
            f"{fmt(loop, 'd'):>5} {per:>7} {fmt(r.get('loop_sass_per_unit'), '.2f'):>7} {shfl:>9} {bar:>7} "
            f"{reads:>5}")


def summary(rows):
    """Lines on the candidate-statistics kernel per arch: the range over variants, and box + carry/ref."""
    lines = []
    for arch in sorted({r["arch"] for r in rows}, reverse=True):
        stats = [r for r in rows if r["kernel"] == "candidate_stats_kernel" and r["arch"] == arch and r["loop_found"]]
        steps = [r for r in stats if r["unit"] == "element"]
        stats = [r for r in stats if r["unit"] == "pair"]
        if steps:
            per = [r["loop_ptx_per_unit"] for r in steps]
            lines.append(f"candidate_stats_kernel {arch}, one-width step (store_delta): {min(per):.2f}-{max(per):.2f} "
                         f"PTX instructions per element in the loop over {len(steps)} variants")
        if not stats:
            continue
        per = [r["loop_ptx_per_unit"] for r in stats]
        lines.append(f"candidate_stats_kernel {arch}: {min(per):.2f}-{max(per):.2f} PTX instructions per pair in "
                     f"the loop over {len(stats)} variants; registers {min(r['registers'] for r in stats)}-"
                     f"{max(r['registers'] for r in stats)}; spill stores "
                     f"{max((r['spill_store_bytes'] or 0) for r in stats)} B at most")
        for r in stats:
            if r["variant"] == "fp32,box,has_carry,has_ref":
                lines.append(f"  fp32 u, box, soft, carry + ref: {r['loop_ptx']} PTX instructions per iteration x "
                             f"{r['threads']} threads / {r['units_per_iteration']} pairs = "
                             f"{r['loop_ptx_per_unit']:.2f} per pair (SASS {r.get('loop_sass_per_unit', 0):.2f}); "
                             f"{r['loop_shfl']} shfl.sync and {r['loop_bar']} barriers per iteration; "
                             f"{r['registers']} registers, spills {r['spill_store_bytes']}/{r['spill_load_bytes']} B "
                             f"(store/load)")
    spilling = [r for r in rows if r["spill_store_bytes"] or r["spill_load_bytes"] or r["sass_local_ops"]]
    lines.append("variants that spill: " + (", ".join(
        f"{r['kernel']} {r['variant']} {r['arch']} ({r['spill_store_bytes']}/{r['spill_load_bytes']} B, "
        f"{r.get('loop_sass_local_ops', 0)} local ops in the loop)" for r in spilling) or "none"))
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kernels = sorted(LOOP_WORK)
    parser.add_argument("--arch", type=int, nargs="+", choices=compile_kernels.CAPABILITIES,
                        default=list(compile_kernels.CAPABILITIES), help="compute capabilities (default: 90 80)")
    parser.add_argument("--kernels", nargs="+", choices=kernels, default=kernels)
    parser.add_argument("--match", help="only variants whose name (as in the table) matches this regex")
    parser.add_argument("--out", type=Path, help="JSONL file (default: bench/results/ptx-<UTC date>.jsonl)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="compiling processes (default: all cores)")
    return parser.parse_args(argv)


def analyse_index(task):
    """analyse() of variants()[index] for one capability: a picklable task for the process pool."""
    index, capability = task
    fn, signature, constexprs = list(compile_kernels.variants())[index]
    return analyse(fn, signature, constexprs, capability)


def main(argv=None):
    args = parse_args(argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or BENCH_DIR / "results" / f"ptx-{now:%Y%m%d}.jsonl"
    context = run_metadata(torch.device("cpu"))
    context.update({
        "bench": "ptx_report",
        "command": "python bench/ptx_report.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "timestamp": now.isoformat(),
    })
    for key in ("spikingjelly", "triton_interpret", "package_dir"):
        context.pop(key, None)
    print(f"triton {triton.__version__}, git {context['git_sha'][:12]}"
          f"{' (dirty)' if context['git_dirty'] else ''}; each variant with its launcher's num_warps")
    print("variant: dtype of the first pointer, surrogate, the flags set (unset: soft reset, attached, no "
          "carry/ref/v0); spill: ptxas spill store/load bytes;\nloop: PTX instructions per loop iteration (one "
          "thread); /unit: loop x threads / elements (e) or pairs (p) per iteration; sass/u: the same in SASS;\n"
          "shfl, bar: in the loop / in the kernel; reads: the loop's global loads match LOOP_WORK\n")
    print(HEADER)
    tasks = [(i, capability) for capability in args.arch
             for i, (fn, signature, constexprs) in enumerate(compile_kernels.variants())
             if fn.__name__ in args.kernels
             and (args.match is None or re.search(args.match, variant_name(signature, constexprs)))]
    rows, start = [], time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(analyse_index, tasks):  # in order: sm_90 first, then sm_80
            rows.append({**row, **context})
            print(format_row(rows[-1]), flush=True)
    print(f"\n{len(rows)} variants in {time.perf_counter() - start:.0f} s")
    problems = [r for r in rows if not r["loop_found"] or not r.get("loop_reads_ok", False)
                or (r["ptxas_registers"] is not None and r["ptxas_registers"] != r["registers"])]
    for r in problems:
        print(f"warning: {r['kernel']} {r['variant']} {r['arch']}: loop found {r['loop_found']}, loop reads "
              f"{r.get('loop_read_bytes')} B per iteration vs {r.get('loop_reads_expected')} expected from LOOP_WORK, "
              f"registers ptxas {r['ptxas_registers']} vs cubin {r['registers']}")
    if any(r["spill_store_bytes"] is None for r in rows):
        print("note: this Triton printed no ptxas log; spills are None, see local_bytes and sass_local_ops")
    print("\n".join(summary(rows)))
    if not args.no_write:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"rows -> {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
