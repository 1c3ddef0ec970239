"""Shared test helpers: the kernel device, edge-aware comparison against the float64 reference."""

import torch

import a2sg_triton
from a2sg_triton.ops.ilif import ILIFParams, ilif_fwd_torch
from a2sg_triton.ops.lif import lif_step
from a2sg_triton.ops.backend import math_dtype
from a2sg_triton.reference import lif_multistep as lif_ref

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
WINDOWED = ("box", "tri", "asy", "asy_unit")
# A neuron whose float64 membrane sits closer than this to the threshold or a window edge may flip
# in fp32; it is left out of the comparison (and the tests check that few are).
EDGE_MARGIN = 1e-4

# Odd neuron shape: 5 * 509 = 2545 neurons -> three 1024-wide blocks, the last one partial.
NEURON_SHAPE = (5, 509)
PER_STEP_BETA = [0.3, 0.5, 0.8, 0.45, 0.2, 0.65, 0.35]


def make_input(T, seed=0, device=KERNEL_DEVICE, shape=NEURON_SHAPE):
    """Membranes spread over and around the threshold so that windows and resets are exercised."""
    g = torch.Generator().manual_seed(seed)
    return (1.5 + 1.5 * torch.randn((T, *shape), generator=g)).to(device)


def make_v0(seed=1, device=KERNEL_DEVICE, shape=NEURON_SHAPE):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(shape, generator=g)).to(device)


def beta_for(kind, T, device=KERNEL_DEVICE):
    return 0.5 if kind == "scalar" else torch.tensor(PER_STEP_BETA[:T], device=device)


def edge_neurons(x, beta, surrogate, v0=None, **neuron):
    """Bool [N]: neurons whose float64 trajectory comes within EDGE_MARGIN of an edge at any t."""
    T = x.shape[0]
    x = x.double().reshape(T, -1)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=x.device).expand(T)
    decay, input_scale = neuron.get("decay", 0.5), neuron.get("input_scale", 0.5)
    v_th, v_reset = neuron.get("v_th", 1.0), neuron.get("v_reset", 0.0)
    hard = neuron.get("reset", "soft") == "hard"
    v = torch.zeros_like(x[0]) if v0 is None else v0.double().reshape(-1)
    near = torch.zeros(x.shape[1], dtype=torch.bool, device=x.device)
    for t in range(T):
        d, v = lif_step(v, x[t], decay, input_scale, v_th, hard, v_reset)
        near |= d.abs() < EDGE_MARGIN
        if surrogate in WINDOWED:
            near |= (d.abs() - beta[t]).abs() < EDGE_MARGIN
    return near


def dyadic(shape, generator, device, scale=8):
    """Random weights k/scale, exact in fp16, so the upstream gradient carries no rounding."""
    return (torch.randint(-2 * scale, 2 * scale + 1, shape, generator=generator) / scale).to(device)


def run_lif(fn, x, beta, surrogate, v0, w_s, w_v, dtype, **kwargs):
    """Forward and backward of loss = <w_s, spikes> + <w_v, v_T>; returns spikes, v_T, grad_x, grad_v0."""
    x = x.to(dtype).detach().requires_grad_()
    v0 = None if v0 is None else v0.to(dtype).detach().requires_grad_()
    return_v = w_v is not None
    out = fn(x, beta, surrogate, v0=v0, return_v=return_v, **kwargs)
    spikes, v_last = out if return_v else (out, None)
    loss = (spikes * w_s.to(dtype)).sum()
    if return_v:
        loss = loss + (v_last * w_v.to(dtype)).sum()
    loss.backward()
    return spikes, v_last, x.grad, None if v0 is None else v0.grad


def compare_to_reference(x, beta, surrogate, *, v0=None, with_v=True, dtype=torch.float32, backend="triton",
                         seed=0, op=a2sg_triton.lif_multistep, ref_op=lif_ref, edges=edge_neurons, **neuron):
    """Runs the op and the float64 reference and asserts forward equality and gradient closeness.

    op / ref_op / edges: another neuron's op (default ``lif_multistep``), its reference and its
    ``edge_neurons``, all taking (x, beta, surrogate, v0=..., **neuron) as LIF's do."""
    g = torch.Generator().manual_seed(seed)
    w_s = dyadic(x.shape, g, x.device)
    w_v = dyadic(x.shape[1:], g, x.device) if with_v else None
    # The reference sees exactly the values the op sees (x and v0 rounded to dtype first).
    x = x.to(dtype)
    v0 = None if v0 is None else v0.to(dtype)
    ref = run_lif(ref_op, x, beta, surrogate, v0, w_s, w_v, torch.float64, **neuron)
    out = run_lif(op, x, beta, surrogate, v0, w_s, w_v, dtype, backend=backend, **neuron)

    keep = ~edges(x, beta, surrogate, v0, **neuron).reshape(x.shape[1:])
    assert keep.float().mean() > 0.95, "too many neurons sit on an edge for a meaningful comparison"
    spikes, spikes_ref = out[0], ref[0]
    assert spikes.dtype == dtype and spikes.shape == x.shape
    assert torch.equal(spikes.double()[:, keep], spikes_ref[:, keep])
    assert spikes_ref[:, keep].sum() > 0, "no spikes: the inputs do not exercise the reset"
    # fp32 math: a few ulps of the largest term; fp16/bf16 outputs: one rounding of the output.
    # v_T is the fp32 state itself, whatever x's dtype.
    for name, got, want, mask, out_dtype in (
            ("v_T", out[1], ref[1], keep, math_dtype(dtype)),
            ("grad_x", out[2], ref[2], (slice(None), keep), dtype),
            ("grad_v0", out[3], ref[3], keep, dtype)):
        if want is None:
            assert got is None, name
            continue
        assert got is not None and got.dtype == out_dtype, name
        rtol = 1e-5 if out_dtype in (torch.float32, torch.float64) else 2 ** -(8 if out_dtype == torch.bfloat16 else 10)
        want = want[mask]
        atol = rtol * max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double()[mask], want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    return ref, out


def ilif_edge_neurons(x, beta, surrogate, v0=None, *, levels=4, decay=0.25, input_scale=1.0, v_th=1.0, **_):
    """edge_neurons for I-LIF: bool [N], the neurons whose float64 membrane u comes within EDGE_MARGIN
    of a level threshold theta_i = (i - 1/2) v_th (where the count steps) or, for windowed
    surrogates, of a window edge theta_i +- beta[t, i], at any t."""
    T = x.shape[0]
    x = x.double().reshape(T, -1)
    beta = torch.as_tensor(beta, dtype=torch.float64, device=x.device).expand(T, levels)
    v0 = None if v0 is None else v0.double().reshape(-1)
    params = ILIFParams(0, levels, decay, input_scale, v_th, False, 0.5)  # the forward reads no surrogate
    _, u, _ = ilif_fwd_torch(x, v0, params, False, torch.float64)
    distance = (u[..., None] - (torch.arange(levels, dtype=torch.float64, device=x.device) + 0.5) * v_th).abs()
    near = distance < EDGE_MARGIN  # [T, N, D]
    if surrogate in WINDOWED:
        near |= (distance - beta[:, None, :]).abs() < EDGE_MARGIN
    return near.any(-1).any(0)


def outputs_and_grads(model, x):
    """(output, dL/dx, every parameter's gradient) of L = sum(output * arange(features)); the model's
    gradients are zeroed after."""
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.arange(out.shape[-1], device=x.device)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out, x.grad, grads


def assert_compiled_matches_eager(model, x):
    """torch.compile(model, fullgraph=True): the eager outputs exactly, the same gradients."""
    eager = outputs_and_grads(model, x)
    compiled = outputs_and_grads(torch.compile(model, fullgraph=True), x)
    assert eager[0].sum() > 0
    torch.testing.assert_close(compiled[0], eager[0], rtol=0, atol=0)
    torch.testing.assert_close(compiled[1], eager[1])
    for got, want in zip(compiled[2], eager[2]):
        torch.testing.assert_close(got, want)
