"""Host budgets (issue 23), counted on the CPU with bench/bench_overhead.py's ``counting()``: what a
statistics call and a normal training step ask of the host stands for what they cost on a GPU."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench/ is plain scripts
import bench_overhead  # noqa: E402

import a2sg_triton  # noqa: E402
from helpers import KERNEL_DEVICE  # noqa: E402


def test_the_counter_sees_launches_ops_and_host_reads():
    u, grad_s, carry, ref, betas = bench_overhead.stats_inputs(300, 3, KERNEL_DEVICE)
    with bench_overhead.counting() as counts:
        x = torch.ones(3) + 1  # one op
        bool(x.sum() > 0)  # two ops and one read
        x.view(3, 1)  # a view: not counted
        a2sg_triton.candidate_stats(u, grad_s, betas, carry=carry, backend="triton")
    assert counts.launches == 2 and counts.host_reads == 1
    assert {"aten::add", "aten::sum", "aten::gt"} <= counts.ops.keys() and "aten::view" not in counts.ops
    assert counts.aten_ops == sum(counts.ops.values())


def test_candidate_stats_call_budget():
    """One public call with carry and reference and its SGV/TGC read-out: at most 2 launches and 12
    non-view ops, no host read (no sync on a GPU)."""
    counts = bench_overhead.count_candidate_stats(N=2000, K=20, device=KERNEL_DEVICE, backend="triton")
    assert counts.launches <= 2, counts
    assert counts.aten_ops <= 12, counts.ops
    assert counts.host_reads == 0, counts.ops


@pytest.mark.parametrize("memory", [False, True], ids=["memory_saving_off", "memory_saving_on"])
def test_a_normal_training_step_reads_nothing_on_the_host(memory):
    """A step that is not armed makes no host read (a CUDA graph could replay it): the layers check
    their widths without dispatching an op."""
    counts = bench_overhead.count_training_step("digits_cnn", memory, device="cpu", backend="torch")
    assert counts.host_reads == 0, counts.ops
    assert counts.aten_ops > 0
