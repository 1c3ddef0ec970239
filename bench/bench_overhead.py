"""Host overhead of the library around its kernels, counted rather than timed (docs/performance.md,
"Host overhead"): per ``candidate_stats`` call and per training step, the Triton launches, the
non-view aten ops the host dispatches, the host reads of device data (``.item()``, ``bool()`` of a
tensor, a device-to-host copy: a sync on a GPU), the BoTorch models built and the Triton kernels
compiled.

    python bench/bench_overhead.py                           # CPU: kernels under TRITON_INTERPRET=1
    python bench/bench_overhead.py --out bench/results/overhead-cpu.jsonl

On a CPU the counts stand for the GPU's costs: each launch and op is host time, each host read a
sync. ``tests/test_overhead.py`` holds the budgets with ``counting()``.
"""

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton.jit wraps the kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is plain scripts, not a package
import a2sg_triton  # noqa: E402
from a2sg_triton.memory import memory_saving  # noqa: E402
from a2sg_triton.models import build_model, model_input  # noqa: E402
from bench_lif import run_metadata  # noqa: E402

LAUNCH = "bench_overhead::triton_launch"  # profiler range around a launch: what runs inside is Triton's
HOST_READS = {"aten::_local_scalar_dense"}  # .item(), bool(), float() of a tensor


@dataclass
class Counts:
    """What a block of code asked of the host. ``ops``: the non-view aten ops by name."""

    launches: int = 0
    aten_ops: int = 0
    host_reads: int = 0
    model_builds: int = 0
    compiles: int = 0
    ops: dict = field(default_factory=dict)


def _is_view(name):
    """Whether the aten op ``name`` ("aten::select") aliases its input by its schema (a view, or a
    composite such as ``to`` or ``contiguous`` that returns its input when there is nothing to do;
    the op it runs when there is, ``_to_copy`` or ``clone``, is then counted in its place)."""
    packet = getattr(torch.ops.aten, name.split("::", 1)[1], None)
    if packet is None:
        return False
    return any(getattr(packet, overload).is_view for overload in packet.overloads())


def _count_events(events, counts):
    """The aten ops the host dispatched: every non-view op inside no counted op and no launch (an op
    that another op runs is part of it); and the reads of device data, at any depth outside launches."""
    counted, covered = {}, {}

    def is_covered(event):
        """Inside a launch or a counted op."""
        if event is None:
            return False
        if event.id not in covered:
            covered[event.id] = event.name == LAUNCH or is_counted(event) or is_covered(event.cpu_parent)
        return covered[event.id]

    def is_counted(event):
        if event.id not in counted:
            counted[event.id] = (event.name.startswith("aten::") and not _is_view(event.name)
                                 and not is_covered(event.cpu_parent))
        return counted[event.id]

    def in_launch(event):
        while event is not None and event.name != LAUNCH:
            event = event.cpu_parent
        return event is not None

    for event in events:
        if event.name.startswith("Memcpy DtoH") or (event.name in HOST_READS and not in_launch(event)):
            counts.host_reads += 1  # bool(t) reads through is_nonzero -> item -> _local_scalar_dense
        if is_counted(event):
            counts.aten_ops += 1
            counts.ops[event.name] = counts.ops.get(event.name, 0) + 1


@contextlib.contextmanager
def counting(device_type="cpu"):
    """Counts launches, ops, host reads, BoTorch models and Triton compiles of the block.

    Yields a ``Counts`` filled in when the block ends."""
    import botorch.models
    import triton.runtime.jit

    counts = Counts()
    launchers = [triton.runtime.jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        launchers.append(InterpretedFunction)
    except ImportError:
        pass
    originals = [(cls, "run", cls.run) for cls in launchers]
    originals.append((triton.runtime.jit.JITFunction, "_do_compile", triton.runtime.jit.JITFunction._do_compile))
    originals.append((botorch.models.SingleTaskGP, "__init__", botorch.models.SingleTaskGP.__init__))

    def launch(run):
        def counted(self, *args, **kwargs):
            counts.launches += 1
            with torch.profiler.record_function(LAUNCH):
                return run(self, *args, **kwargs)
        return counted

    def compile_(compile_fn):
        def counted(self, *args, **kwargs):
            counts.compiles += 1
            return compile_fn(self, *args, **kwargs)
        return counted

    def build(init):
        def counted(self, *args, **kwargs):
            counts.model_builds += 1
            return init(self, *args, **kwargs)
        return counted

    for cls in launchers:
        cls.run = launch(cls.run)
    triton.runtime.jit.JITFunction._do_compile = compile_(triton.runtime.jit.JITFunction._do_compile)
    botorch.models.SingleTaskGP.__init__ = build(botorch.models.SingleTaskGP.__init__)
    try:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            yield counts
    finally:
        for cls, name, original in originals:
            setattr(cls, name, original)
    _count_events(prof.events(), counts)


# ---------------------------------------------------------------------------------------------
# What is counted.
# ---------------------------------------------------------------------------------------------


def stats_inputs(N, K, device, seed=0):
    """One layer-timestep's inputs as the controller passes them: u, grad_s, carry, ref [N] and K widths."""
    g = torch.Generator().manual_seed(seed)
    u, grad_s, carry, ref = (torch.randn(N, generator=g).to(device) for _ in range(4))
    betas = torch.linspace(0.05, 1.0, K, dtype=torch.float64)
    return u, grad_s, carry, ref, betas


def count_candidate_stats(N=4096, K=100, device="cpu", backend="triton"):
    """One public ``candidate_stats`` call with carry and reference, and its SGV and TGC read-out."""
    u, grad_s, carry, ref, betas = stats_inputs(N, K, device)
    a2sg_triton.candidate_stats(u, grad_s, betas, "asy", carry=carry, ref=ref, backend=backend)  # warm
    with counting(torch.device(device).type) as counts:
        stats = a2sg_triton.candidate_stats(u, grad_s, betas, "asy", carry=carry, ref=ref, backend=backend)
        stats.sgv(), stats.tgc()
    return counts


def training_step(model, x, y, optimizer, memory):
    with memory_saving(memory):
        loss = torch.nn.functional.cross_entropy(model(x), y)  # the zoo averages over T
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def count_training_step(name="digits_cnn", memory=False, batch=2, T=2, device="cpu", backend="triton"):
    """One normal (not armed) training step of the zoo model ``name``, after a warm-up step."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, T=T, backend=backend, memory_saving=memory).to(device)
    size = 8 if name.startswith("digits") else 32
    x = model_input(torch.rand(batch, 1, size, size, device=device), T)
    y = torch.arange(batch, device=device) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    training_step(model, x, y, optimizer, memory)
    with counting(torch.device(device).type) as counts:
        training_step(model, x, y, optimizer, memory)
    return counts


def count_armed_step(name="digits_cnn", batch=2, T=2, device="cpu", backend="triton", n_obs=16, n_eval=16):
    """One armed A²SG training step (every layer searches its widths, ``strategy="bo"``), after a
    normal step and an armed one (warm). On a CPU ``.cpu()`` and ``.tolist()`` of host tensors
    dispatch nothing, so the search's transfers are not among the host reads counted there."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=1, T=T, backend=backend, memory_saving=False).to(device)
    x = model_input(torch.rand(batch, 1, 8, 8, device=device), T)
    y = torch.arange(batch, device=device) % 10
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    controller = a2sg_triton.A2SG(model, n_obs=n_obs, n_eval=n_eval)
    for epoch in range(2):
        controller.begin_epoch(epoch)
        training_step(model, x, y, optimizer, False)
    controller.begin_epoch(2)
    with counting(torch.device(device).type) as counts:
        training_step(model, x, y, optimizer, False)
    return counts


def rows(device):
    backend = "triton" if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    yield {"what": "candidate_stats", "N": 4096, "K": 100, "backend": backend,
           **asdict(count_candidate_stats(device=device, backend=backend))}
    for name in ("digits_cnn", "digits_vgg"):
        for memory in (False, True):
            yield {"what": "training_step", "model": name, "memory_saving": memory, "T": 2, "batch": 2,
                   "backend": backend, **asdict(count_training_step(name, memory, device=device, backend=backend))}
    yield {"what": "armed_step", "model": "digits_cnn", "T": 2, "batch": 2, "n_obs": 16, "n_eval": 16,
           "backend": backend, **asdict(count_armed_step(device=device, backend=backend))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="append the rows to this JSONL file")
    args = parser.parse_args(argv)
    meta = run_metadata(torch.device(args.device))
    for row in rows(args.device):
        row = {**row, **meta}
        summary = {k: row[k] for k in ("what", "launches", "aten_ops", "host_reads", "model_builds", "compiles")}
        print(json.dumps({**summary, **{k: row[k] for k in ("model", "memory_saving") if k in row}}))
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
