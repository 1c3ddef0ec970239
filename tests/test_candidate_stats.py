"""Fused candidate statistics (Triton under the interpreter, and the torch backend) against the reference."""

import dataclasses
import math

import pytest
import torch

import a2sg_triton.ops.stats as cs
from a2sg_triton import SURROGATES, metrics, surrogate_grad
from a2sg_triton.ops.lif import StepParams
from a2sg_triton.ops.stats import candidate_stats, candidate_stats_ref, reference_deltas
from helpers import KERNEL_DEVICE

N = 3001  # not a multiple of the 256-wide block, 12 blocks
V_TH, V_RESET = 0.9, 0.1


def make_inputs(betas, seed=0, dtype=torch.float32, n=N):
    """u spread around the threshold, nudged off every window edge and the threshold itself."""
    g = torch.Generator().manual_seed(seed)
    u = V_TH + 0.6 * torch.randn(n, generator=g, dtype=torch.float64)
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), betas, -betas])
    near = ((u - V_TH)[:, None] - edges[None, :]).abs().min(1).values < 1e-4
    u = torch.where(near, u + 3e-4, u).to(dtype)
    grad_s, carry, ref = (torch.randn(n, generator=g).to(dtype) for _ in range(3))
    return [t.to(KERNEL_DEVICE) for t in (u, grad_s, carry, ref)]


def draw_betas(k, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.95 * torch.rand(k, generator=g, dtype=torch.float64)


def assert_stats_close(got, want):
    """Non-negative sums to 1e-6 relative; signed sums to 1e-6 of the matching absolute sum; the
    sums of squared deviations to 1e-6 of the sum of squares."""
    torch.testing.assert_close(got.n.cpu(), want.n.cpu(), rtol=0, atol=0)
    for name in ("sumsq", "sumabs"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name).cpu(), rtol=1e-6, atol=0,
                                   msg=lambda m: f"{name}: {m}")
    assert ((got.sum.cpu() - want.sum.cpu()).abs() <= 1e-6 * want.sumabs.cpu()).all()
    assert ((got.m2.cpu() - want.m2.cpu()).abs() <= 1e-6 * want.sumsq.cpu()).all()
    assert (got.dot is None) == (want.dot is None)
    if want.dot is not None:
        torch.testing.assert_close(got.ref_sq.cpu(), want.ref_sq.cpu(), rtol=1e-6, atol=0)
        bound = 1e-6 * torch.sqrt(want.sumsq * want.ref_sq).cpu()  # Cauchy-Schwarz bounds sum |delta ref|
        assert ((got.dot.cpu() - want.dot.cpu()).abs() <= bound).all()
    # SGV and TGC as the triton backend's finalize kernel computed them: docs/math.md's formulas on the
    # statistics themselves, in float64
    formulas = dataclasses.replace(got, sgv_values=None, tgc_values=None)
    torch.testing.assert_close(got.sgv().cpu(), formulas.sgv().cpu(), rtol=1e-12, atol=0)
    if want.dot is not None:
        torch.testing.assert_close(got.tgc().cpu(), formulas.tgc().cpu(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("with_ref", [False, True], ids=["no_ref", "ref"])
@pytest.mark.parametrize("with_carry", [False, True], ids=["no_carry", "carry"])
@pytest.mark.parametrize("reset, detach_reset", [("soft", False), ("soft", True), ("hard", False), ("hard", True)])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_matches_reference(surrogate, reset, detach_reset, with_carry, with_ref, backend, nan_outputs, monkeypatch):
    if with_carry:  # several blocks per chunk and a ragged last chunk: 12 blocks in 4 chunks of 3
        monkeypatch.setattr(cs, "MAX_CHUNKS", 5)
    betas = draw_betas(37)  # three candidate tiles of 16, the last ragged
    u, grad_s, carry, ref = make_inputs(betas)
    kwargs = dict(carry=carry if with_carry else None, ref=ref if with_ref else None, v_th=V_TH, h=0.6,
                  reset=reset, v_reset=V_RESET, detach_reset=detach_reset)
    got = candidate_stats(u, grad_s, betas, surrogate, backend=backend, **kwargs)
    want = candidate_stats_ref(u, grad_s, betas, surrogate, **kwargs)
    assert_stats_close(got, want)
    if with_ref:
        torch.testing.assert_close(got.tgc().cpu(), want.tgc().cpu(), rtol=0, atol=1e-6)
    torch.testing.assert_close(got.sgv().cpu(), want.sgv().cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_many_candidates_half_precision_and_shapes(backend):
    betas = draw_betas(300)
    shaped = [t[:2996].reshape(4, 7, 107) for t in make_inputs(betas, dtype=torch.float16)]  # flattened inside
    got = candidate_stats(*shaped[:2], betas, "tri", carry=shaped[2], ref=shaped[3], v_th=V_TH, backend=backend)
    want = candidate_stats_ref(*shaped[:2], betas, "tri", carry=shaped[2], ref=shaped[3], v_th=V_TH)
    assert_stats_close(got, want)


def test_sgv_tgc_match_the_definitions():
    betas = draw_betas(5)
    u, grad_s, carry, ref = (t.cpu().double() for t in make_inputs(betas))
    stats = candidate_stats(u, grad_s, betas, "asy", carry=carry, ref=ref, v_th=V_TH, backend="torch")
    for k, beta in enumerate(betas):
        f = surrogate_grad(u, beta, "asy", v_th=V_TH)
        delta = grad_s * f + carry * (1 - V_TH * f)
        torch.testing.assert_close(stats.sgv()[k], metrics.sgv(delta), rtol=1e-10, atol=0)
        torch.testing.assert_close(stats.tgc()[k], metrics.tgc(delta, ref), rtol=1e-10, atol=0)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_edge_cases(backend):
    zeros = torch.zeros(600, device=KERNEL_DEVICE)
    u = torch.full((600,), 5.0, device=KERNEL_DEVICE)  # far outside every window: delta = 0
    stats = candidate_stats(u, torch.ones_like(u), [0.1, 0.5], "box", ref=torch.ones_like(u), backend=backend)
    assert stats.sgv().tolist() == [math.inf, math.inf] and stats.tgc().tolist() == [0.0, 0.0]
    inside = torch.full((600,), 1.0, device=KERNEL_DEVICE)
    stats = candidate_stats(inside, torch.ones_like(u), [0.5], "box", ref=zeros, backend=backend)
    assert stats.tgc().tolist() == [0.0]  # zero reference
    assert stats.sgv().tolist() == [0.0]  # constant delta: no variation
    assert metrics.sgv(zeros) == math.inf and metrics.tgc(zeros, torch.ones(600)) == 0
    with pytest.raises(ValueError, match="tgc\\(\\) needs"):
        candidate_stats(u, u, [0.5], backend=backend).tgc()


@pytest.mark.parametrize("backend", ["triton", "torch", "inductor"])
def test_sgv_exact_when_the_mean_dwarfs_the_spread(backend, monkeypatch):
    """mean / std of delta = 1e4: S2/N - (S1/N)^2 from fp32 sums loses every digit of the variance;
    shifted sums merged by Chan's formula keep SGV within 1e-3 of float64 (several chunks of
    several blocks, a ragged last one, on the triton backend)."""
    monkeypatch.setattr(cs, "MAX_CHUNKS", 5)
    u, grad_s, betas = mean_dwarfs_std_inputs()
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    want = candidate_stats_ref(u, grad_s, betas, "box", v_th=V_TH)
    assert ((want.mean / (want.m2 / want.n).sqrt()).min() > 0.99e4)
    got = candidate_stats(u.to(device), grad_s.to(device), betas, "box", v_th=V_TH, backend=backend)
    torch.testing.assert_close(got.sgv().cpu(), want.sgv(), rtol=1e-3, atol=0)


def mean_dwarfs_std_inputs():
    """box surrogate, every membrane inside every window, no carry: delta = grad_s / (2 beta) with
    grad_s = 1e4 + N(0, 1), so mean / std = 1e4 for every candidate."""
    g = torch.Generator().manual_seed(3)
    u = V_TH + 0.04 * (torch.rand(N, generator=g) - 0.5)
    return u, 1e4 + torch.randn(N, generator=g), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)


@pytest.mark.parametrize("surrogate, reset, detach_reset, with_carry, with_ref, dtype", [
    ("box", "soft", False, False, False, torch.float32),  # the variant test_sgv_exact_... compiles too
    ("asy", "hard", False, True, True, torch.float16),
])
def test_inductor_matches_reference(surrogate, reset, detach_reset, with_carry, with_ref, dtype):
    """The inductor backend (candidate_sums_torch compiled per variant): compiling costs seconds, so
    two variants; a second N and K make each dynamic once."""
    for n, k in ((N, 37), (517, 5)):
        betas = draw_betas(k)
        u, grad_s, carry, ref = (t.cpu().to(dtype) for t in make_inputs(betas, n=n))
        kwargs = dict(carry=carry if with_carry else None, ref=ref if with_ref else None, v_th=V_TH,
                      reset=reset, v_reset=V_RESET, detach_reset=detach_reset)
        got = candidate_stats(u, grad_s, betas, surrogate, backend="inductor", **kwargs)
        want = candidate_stats_ref(u, grad_s, betas, surrogate, **kwargs)
        assert_stats_close(got, want)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("with_ref", [False, True], ids=["no_ref", "ref"])
@pytest.mark.parametrize("surrogate, reset, detach_reset, grad_dtype", [
    ("asy", "soft", False, torch.float32), ("tri", "hard", False, torch.float16),
    ("sigmoid", "hard", True, torch.float32), ("box", "soft", True, torch.float32),
])
def test_delta_stats_step(surrogate, reset, detach_reset, grad_dtype, with_ref, backend, nan_outputs, monkeypatch):
    """The armed backward's step: delta for one width written out (and input_scale * delta into
    grad_x), with the statistics of that very delta, in one pass; carry = carry_scale * carry."""
    monkeypatch.setattr(cs, "MAX_CHUNKS", 5)
    beta = torch.tensor([0.37], dtype=torch.float64)
    u, grad_s, carry, ref = make_inputs(beta)
    ref = ref if with_ref else None
    carry_scale, input_scale, hard = 0.6, 0.7, reset == "hard"
    grad_x = torch.empty(N, dtype=grad_dtype, device=u.device)
    step = cs.DELTA_STATS[backend]
    params = StepParams(SURROGATES.index(surrogate), V_TH, hard, V_RESET, detach_reset, 0.6)
    delta, stats = step(u - V_TH, grad_s, carry, ref, beta.float().to(u.device), params, grad_x,
                        carry_scale=carry_scale, input_scale=input_scale)
    want = reference_deltas(u, grad_s, beta, carry_scale * carry.double(), params)[0]
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(delta.double().cpu(), want.cpu(), rtol=1e-5, atol=atol)
    rtol = 1e-5 if grad_dtype == torch.float32 else 2**-10
    torch.testing.assert_close(grad_x.double().cpu(), input_scale * want.cpu(), rtol=rtol,
                               atol=rtol * input_scale * want.abs().max().item())
    assert_stats_close(stats, cs._stats_from_deltas(beta, want[None], ref))


def test_deterministic():
    betas = draw_betas(40)
    u, grad_s, carry, ref = make_inputs(betas)
    runs = [candidate_stats(u, grad_s, betas, "tri", carry=carry, ref=ref, backend="triton") for _ in range(2)]
    for name in ("n", "mean", "m2", "sumabs", "dot", "ref_sq"):
        assert torch.equal(getattr(runs[0], name), getattr(runs[1], name))


U = torch.ones(10)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    ((U, U, []), {}, ValueError, "betas must be a non-empty"),
    ((U[:0], U[:0], [0.5]), {}, ValueError, "u must have at least one element"),
    ((U, U, torch.tensor([], dtype=torch.float64)), {}, ValueError, "betas must be a non-empty"),
    ((U, U, [0.5, 0.0]), {}, ValueError, "betas must be finite and > 0"),
    ((U, U, [0.5, -1.0]), {}, ValueError, "betas must be finite and > 0"),
    ((U, U, torch.tensor([0.5, float("nan")])), {}, ValueError, "betas must be finite and > 0"),
    ((U, U, torch.ones(2, 2)), {}, ValueError, "betas must be a non-empty 1-D"),
    ((U, U, ["a"]), {}, TypeError, "betas must be a real number"),
    ((U, U, 0.5), {}, TypeError, "betas must be a 1-D tensor or a sequence"),
    ((U, torch.ones(11), [0.5]), {}, ValueError, "grad_s must have u's shape"),
    ((U, U, [0.5]), {"carry": torch.ones(3)}, ValueError, "carry must have u's shape"),
    ((U, U, [0.5]), {"ref": torch.ones(3)}, ValueError, "ref must have u's shape"),
    ((U.long(), U, [0.5]), {}, TypeError, "u must be a floating"),
    ((U, None, [0.5]), {}, TypeError, "grad_s must be a torch.Tensor"),
    ((U, U, [0.5], "gauss"), {}, ValueError, "surrogate must be one of"),
    ((U, U, [0.5]), {"reset": "x"}, ValueError, "reset must be one of"),
    ((U, U, [0.5], "asy"), {"h": 0.2}, ValueError, "h must be >= 0.5"),
    ((U, U, [0.5]), {"backend": "x"}, ValueError, "backend must be one of"),
])
def test_bad_arguments(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        candidate_stats(*args, **kwargs)


def test_all_reduce_merges_ranks_by_chans_formula(monkeypatch):
    """CandidateStats.all_reduce on two simulated ranks (threads meeting in a fake SUM all-reduce):
    both end with the statistics of the whole data, SGV within 1e-3 of float64 at mean/std = 1e4."""
    import threading

    import torch.distributed as dist

    u, grad_s, betas = mean_dwarfs_std_inputs()
    grad_s[1000:] += 3.0  # the ranks' means differ by 3 std: M2 needs Chan's n (mean_rank - mean)^2 terms
    ref = torch.randn(N, generator=torch.Generator().manual_seed(5))
    halves = [candidate_stats(u[part], grad_s[part], betas, "box", ref=ref[part], v_th=V_TH, backend="torch")
              for part in (slice(0, 1000), slice(1000, None))]
    barrier, inbox = threading.Barrier(2), {}

    def fake_all_reduce(tensor, op=None, group=None):
        inbox[threading.get_ident()] = tensor.clone()
        barrier.wait()
        total = sum(inbox.values())
        barrier.wait()  # both have read the inbox before either writes it again
        tensor.copy_(total)

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    threads = [threading.Thread(target=stats.all_reduce) for stats in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    want = candidate_stats_ref(u, grad_s, betas, "box", ref=ref, v_th=V_TH)
    for got in halves:
        assert_stats_close(got, want)
        torch.testing.assert_close(got.sgv(), want.sgv(), rtol=1e-3, atol=0)
        torch.testing.assert_close(got.tgc(), want.tgc(), rtol=0, atol=1e-6)
    for name in ("n", "mean", "m2", "sumabs", "dot", "ref_sq"):
        assert torch.equal(getattr(halves[0], name), getattr(halves[1], name))
