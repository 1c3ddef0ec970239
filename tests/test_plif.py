"""plif_multistep (Triton under the interpreter on CPU, and the torch backend) against the float64
reference, SpikingJelly's ParametricLIFNode, and nn.PLIF under the A²SG controller."""

import math

import pytest
import torch

import a2sg_triton
from a2sg_triton import A2SG, SURROGATES
from a2sg_triton.ops._neuron import launch_config
from a2sg_triton.ops.lif import lif_step
from a2sg_triton.nn import PLIF
from a2sg_triton.reference import plif_multistep as plif_ref
from helpers import KERNEL_DEVICE, assert_compiled_matches_eager, NEURON_SHAPE, beta_for, dyadic, edge_neurons, make_input, make_v0

# NEURON_SHAPE's several blocks give dL/dk several per-program partial sums.
W = -0.6  # k = sigmoid(w) = 0.354


def leak(w, decay_input):
    """(decay, input_scale) of the LIF step PLIF runs, in float64."""
    k = 1 / (1 + math.exp(-w))
    return 1 - k, k if decay_input else 1.0


def states_before(x, v0, decay, input_scale, v_th=1.0, reset="soft", v_reset=0.0):
    """[T, N] float64 v[t-1] of every step (v[-1] = v0)."""
    x = x.double().reshape(x.shape[0], -1)
    v = torch.zeros_like(x[0]) if v0 is None else v0.double().reshape(-1)
    before = []
    for t in range(x.shape[0]):
        before.append(v)
        _, v = lif_step(v, x[t], decay, input_scale, v_th, reset == "hard", v_reset)
    return torch.stack(before)


def run_plif(fn, x, w, beta, surrogate, v0, w_s, w_v, dtype, **kwargs):
    """Forward and backward of loss = <w_s, spikes> + <w_v, v_T> -> spikes, v_T, grad_x, grad_v0, grad_w."""
    x = x.to(dtype).detach().requires_grad_()
    v0 = None if v0 is None else v0.to(dtype).detach().requires_grad_()
    w = torch.tensor(w, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=x.device,
                     requires_grad=True)
    return_v = w_v is not None
    out = fn(x, w, beta, surrogate, v0=v0, return_v=return_v, **kwargs)
    spikes, v_last = out if return_v else (out, None)
    loss = (spikes * w_s.to(dtype)).sum()
    if return_v:
        loss = loss + (v_last * w_v.to(dtype)).sum()
    loss.backward()
    return spikes, v_last, x.grad, None if v0 is None else v0.grad, w.grad


def compare_plif(x, beta, surrogate, *, w=W, v0=None, with_v=True, dtype=torch.float32, backend="triton", seed=0,
                 decay_input=True, **neuron):
    """The op against the float64 reference: identical spikes, gradients for x, v0 and w within a few
    fp32 ulps. Neurons that come within EDGE_MARGIN of an edge (they may flip in fp32) get zero upstream
    gradient, so that they add nothing to dL/dw on either side, and are left out of the forward check."""
    x = x.to(dtype)
    v0 = None if v0 is None else v0.to(dtype)
    decay, input_scale = leak(w, decay_input)
    lif_neuron = {key: neuron[key] for key in ("v_th", "reset", "v_reset") if key in neuron}
    near = edge_neurons(x, beta, surrogate, v0, decay=decay, input_scale=input_scale, **lif_neuron)
    near = near.reshape(x.shape[1:])
    assert near.float().mean() < 0.05, "too many neurons sit on an edge for a meaningful comparison"
    keep = ~near
    g = torch.Generator().manual_seed(seed)
    w_s = dyadic(x.shape, g, x.device) * keep
    w_v = dyadic(x.shape[1:], g, x.device) * keep if with_v else None
    ref = run_plif(plif_ref, x, w, beta, surrogate, v0, w_s, w_v, torch.float64, decay_input=decay_input, **neuron)
    out = run_plif(a2sg_triton.plif_multistep, x, w, beta, surrogate, v0, w_s, w_v, dtype, backend=backend,
                   decay_input=decay_input, **neuron)

    spikes, spikes_ref = out[0], ref[0]
    assert spikes.dtype == dtype and spikes.shape == x.shape
    assert torch.equal(spikes.double()[:, keep], spikes_ref[:, keep])
    assert spikes_ref[:, keep].sum() > 0, "no spikes: the inputs do not exercise the reset"
    for name, got, want, mask in (("v_T", out[1], ref[1], keep), ("grad_x", out[2], ref[2], (slice(None), keep)),
                                  ("grad_v0", out[3], ref[3], keep)):
        if want is None:
            assert got is None, name
            continue
        rtol = 1e-5 if got.dtype in (torch.float32, torch.float64) else 2 ** -10
        want = want[mask]
        atol = rtol * max(want.abs().max().item(), 1.0)
        torch.testing.assert_close(got.double()[mask], want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    # dL/dw = k (1 - k) sum delta (x - v[t-1]) (or -delta v[t-1]): a few fp32 ulps of the sum of |terms|
    delta = ref[2].reshape(x.shape[0], -1) / input_scale
    v_prev = states_before(x, v0, decay, input_scale, **lif_neuron)
    lever = x.double().reshape(x.shape[0], -1) - v_prev if decay_input else v_prev
    k = 1 - decay
    scale = k * (1 - k) * (delta * lever).abs().sum().item()
    tolerance = 1e-5 * scale
    assert out[4].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)  # w's dtype
    assert abs(ref[4].item()) > 10 * tolerance, "dL/dw too small to test"
    assert abs(out[4].item() - ref[4].item()) <= tolerance, (out[4].item(), ref[4].item())
    return ref, out


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "raw_input"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("reset", ["soft", "hard"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_matches_reference(surrogate, reset, detach_reset, decay_input, backend):
    compare_plif(make_input(4), beta_for("per_step", 4), surrogate, v0=make_v0(), backend=backend, reset=reset,
                 detach_reset=detach_reset, decay_input=decay_input)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("T, beta_kind, dtype, w", [
    (1, "scalar", torch.float32, 0.0),
    (7, "per_step", torch.float32, 1.1),
    (3, "scalar", torch.float16, -1.4),
])
def test_lengths_dtypes_and_leaks(T, beta_kind, dtype, w, backend):
    compare_plif(make_input(T), beta_for(beta_kind, T), "asy", w=w, v0=make_v0(), dtype=dtype, backend=backend,
                 reset="hard", v_reset=-0.1)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "raw_input"])
def test_other_constants_and_no_state(decay_input, backend):
    """No v0 and no v_T (the HAS_V0 / STORE_V_LAST / HAS_GRAD_V_LAST = False paths), other constants."""
    compare_plif(make_input(5), beta_for("per_step", 5), "tri", with_v=False, backend=backend, v_th=0.8, h=0.7,
                 decay_input=decay_input)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_outputs_fully_written(nan_outputs, backend):
    """Outputs (and the dL/dk partials) start as NaN, so any element the kernels skip fails."""
    compare_plif(make_input(4), beta_for("per_step", 4), "sigmoid", v0=make_v0(), backend=backend, reset="hard")


def test_several_partials_and_determinism():
    """The shape above runs several backward programs (one dL/dk partial each); dL/dw is bit-identical
    from run to run."""
    block, _ = launch_config(NEURON_SHAPE[0] * NEURON_SHAPE[1], KERNEL_DEVICE)
    assert math.ceil(NEURON_SHAPE[0] * NEURON_SHAPE[1] / block) > 1
    grads = []
    for _ in range(2):
        _, out = compare_plif(make_input(3), 0.5, "box", v0=make_v0(), backend="triton")
        grads.append(out[4])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_small_odd_and_empty_shapes(backend):
    for shape in [(3,), (2, 3, 1, 5)]:
        x = make_input(3, shape=shape)
        w = torch.tensor(0.2, device=x.device, requires_grad=True)
        xx = x.clone().requires_grad_()
        (a2sg_triton.plif_multistep(xx, w, 0.5, "sigmoid", backend=backend) * x).sum().backward()
        x64, w64 = x.double().requires_grad_(), torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
        (plif_ref(x64, w64, 0.5, "sigmoid") * x64.detach()).sum().backward()
        torch.testing.assert_close(xx.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    empty = torch.zeros(3, 0, device=KERNEL_DEVICE, requires_grad=True)
    w = torch.tensor(0.0, device=KERNEL_DEVICE, requires_grad=True)
    spikes, v = a2sg_triton.plif_multistep(empty, w, 0.5, backend=backend, return_v=True)
    assert spikes.shape == (3, 0) and v.shape == (0,)
    spikes.sum().backward()
    assert w.grad == 0


@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "raw_input"])
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_float64_torch_backend_is_tight(reset, decay_input):
    ref, out = compare_plif(make_input(5, device="cpu"), beta_for("per_step", 5, "cpu"), "atan",
                            v0=make_v0(device="cpu"), dtype=torch.float64, backend="torch", reset=reset,
                            decay_input=decay_input)
    torch.testing.assert_close(out[2], ref[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[4], ref[4], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "raw_input"])
@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_gradcheck_torch_backend(reset, decay_input):
    """Finite differences of the forward against the analytic backward, w included. They agree where
    every membrane stays outside the box window (checked), which makes gradcheck verify the leak,
    reset, v0, v_T and dL/dw chain exactly."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randint(0, 2, (4, 3, 5), generator=g) * 3.0 + 0.1 * torch.rand((4, 3, 5), generator=g)).double()
    x = x if decay_input else x / 2
    v0 = (0.1 * torch.rand((3, 5), generator=g)).double()
    beta, neuron = 0.05, dict(reset=reset, v_reset=0.05, decay_input=decay_input)
    w = torch.tensor(0.1, dtype=torch.float64)

    def fn(x, w, v0):
        return a2sg_triton.plif_multistep(x, w, beta, "box", v0=v0, return_v=True, backend="torch", **neuron)

    spikes, _ = fn(x, w, v0)
    assert 0 < spikes.sum() < spikes.numel()
    decay, input_scale = leak(0.1, decay_input)
    v = v0.clone()
    for t in range(x.shape[0]):
        d, v = lif_step(v, x[t], decay, input_scale, 1.0, reset == "hard", 0.05)
        assert (d.abs() >= 2 * beta).all(), "a membrane lies inside the window; gradcheck would be void"
    inputs = tuple(t.clone().requires_grad_() for t in (x, w, v0))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-9, nondet_tol=0.0)


def test_bad_arguments():
    x = torch.randn(3, 4)
    w = torch.tensor(0.0)
    for bad_w, error, match in [(torch.zeros(1), ValueError, "w must be a 0-d tensor"),
                                (torch.tensor(1), TypeError, "w must be a floating-point tensor"),
                                (0.5, TypeError, "w must be a torch.Tensor")]:
        with pytest.raises(error, match=match):
            a2sg_triton.plif_multistep(x, bad_w, 0.5, backend="torch")
    for kwargs, error, match in [({"beta": torch.ones(2)}, ValueError, r"beta must be a float or a tensor of shape"),
                                 ({"beta": -0.1}, ValueError, "beta must be > 0"),
                                 ({"decay_input": 1}, TypeError, "decay_input must be a bool"),
                                 ({"surrogate": "x"}, ValueError, "surrogate must be one of"),
                                 ({"reset": "x"}, ValueError, "reset must be one of"),
                                 ({"v0": torch.zeros(5)}, ValueError, "v0 must have shape"),
                                 ({"backend": "x"}, ValueError, "backend must be one of")]:
        args = dict(beta=0.5, backend="torch") | kwargs
        with pytest.raises(error, match=match):
            a2sg_triton.plif_multistep(x, w, **args)
    for kwargs, error, match in [({"init_tau": 1.0}, ValueError, "init_tau must be > 1"),
                                 ({"decay_input": None}, TypeError, "decay_input must be a bool"),
                                 ({"beta_init": 0.0}, ValueError, "beta must be > 0"),
                                 ({"backend": "x"}, ValueError, "backend must be one of")]:
        with pytest.raises(error, match=match):
            PLIF(3, **kwargs)
    with pytest.raises(ValueError, match=r"PLIF expects input \[T=3"):
        PLIF(3)(torch.randn(2, 4))


def test_module_parameter_and_saved_tensors():
    layer = PLIF(3, "tri", init_tau=3.0)
    assert torch.sigmoid(layer.w).item() == pytest.approx(1 / 3) and layer.w.requires_grad
    assert layer.beta.shape == (3,) and "init_tau=3.0" in repr(layer)
    x = (2 * torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(2))).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    # d = u - v_th [T, N], x [T, N] (decay_input), w, beta; nothing else of size T * N
    assert sorted(tuple(t.shape) for t in saved) == [(), (3,), (3, 36), (3, 36)]
    (out * x.detach()).sum().backward()
    x64, w64 = x.detach().double().requires_grad_(), layer.w.detach().double().requires_grad_()
    (plif_ref(x64, w64, 0.5, "tri") * x64.detach()).sum().backward()
    torch.testing.assert_close(layer.w.grad.double(), w64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_armed_search_gradients_use_the_new_beta(backend):
    """An armed PLIF backward searches with the current leak and returns the gradients (x and w) of
    the float64 reference with the chosen betas."""
    T = 4
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    layer = PLIF(T, "asy", reset="soft", backend=backend).to(device)
    with torch.no_grad():
        layer.w.fill_(-0.4)
    a2 = A2SG(layer, n_obs=12, n_eval=20)
    x = (1.5 + 1.5 * torch.randn(T, 700, generator=torch.Generator().manual_seed(0))).to(device).requires_grad_()
    w_s = torch.randn(T, 700, generator=torch.Generator().manual_seed(1)).to(device)
    a2.begin_epoch(0)
    (layer(x) * w_s).sum().backward()
    chosen = layer.beta.clone()
    assert not torch.equal(chosen, torch.full((T,), 0.5, device=device)) and len(a2.history) == T

    x64 = x.detach().double().requires_grad_()
    w64 = layer.w.detach().double().requires_grad_()
    (plif_ref(x64, w64, chosen.double(), "asy") * w_s.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5 * x64.grad.abs().max().item())
    torch.testing.assert_close(layer.w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    # the search saw the current leak: TGC at the chosen beta_t is that of the reference's deltas
    delta = x64.grad / torch.sigmoid(w64.detach())
    for row in a2.history:
        t = row["t"]
        want = (a2sg_triton.metrics.sgv(delta[t]) if t == T - 1
                else a2sg_triton.metrics.tgc(delta[t], delta[t + 1]))
        assert row["metric_at_beta"] == pytest.approx(want.item(), rel=1e-5)


def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), PLIF(3, "asy", backend="torch"), torch.nn.Linear(16, 8),
                                PLIF(3, "tri", reset="hard", decay_input=False, backend="torch"))
    with torch.no_grad():  # weights large enough that the second layer spikes too
        model[2].weight.normal_(0.3, 1.0)
    assert_compiled_matches_eager(model, 3 * torch.randn(3, 5, 6))


def test_opcheck():
    from a2sg_triton.ops.plif import plif_bwd_op, plif_fwd_op

    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(3, 37, generator=g)).requires_grad_()
    w = torch.tensor(0.3, requires_grad=True)
    v0 = torch.randn(37, generator=g).requires_grad_()
    beta = torch.tensor([0.3, 0.5, 0.7])
    for decay_input, hard, return_v in [(True, False, True), (False, True, False)]:
        torch.library.opcheck(plif_fwd_op, (x, w, beta, v0, 2, decay_input, 1.0, hard, 0.0, False, 0.5, return_v,
                                            torch.float32, "torch", -1))
    d = torch.randn(3, 37)
    torch.library.opcheck(plif_bwd_op, (torch.randn(3, 37), d, x.detach(), w.detach(), v0.detach(), beta,
                                        torch.randn(37), 1, True, 1.0, False, 0.0, False, 0.5, True, "torch"))


# -- SpikingJelly 2.0's ParametricLIFNode: the same neuron (v_reset = 0 for the hard reset) ------


@pytest.mark.parametrize("decay_input", [True, False], ids=["decay_input", "raw_input"])
@pytest.mark.parametrize("v_reset", [None, 0.0], ids=["soft", "hard"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
def test_matches_spikingjelly(v_reset, decay_input, detach_reset):
    """SpikingJelly's Sigmoid(alpha) is our sigmoid surrogate with beta = 2 / alpha (docs/math.md);
    float64, multi-step, its torch path: identical spikes and v_T, gradients for x and w to 1e-12."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import neuron, surrogate

    alpha = 4.0
    node = neuron.ParametricLIFNode(init_tau=2.5, decay_input=decay_input, v_reset=v_reset,
                                    surrogate_function=surrogate.Sigmoid(alpha=alpha), detach_reset=detach_reset,
                                    step_mode="m").double()
    g = torch.Generator().manual_seed(4)
    x = (1.5 + 1.5 * torch.randn(5, 3, 40, generator=g, dtype=torch.float64))
    w_s = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_sj, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    spikes_sj = node(x_sj)
    (spikes_sj * w_s).sum().backward()
    w = node.w.detach().clone().requires_grad_()
    spikes, v_last = a2sg_triton.plif_multistep(
        x_ours, w, 2 / alpha, "sigmoid", decay_input=decay_input, reset="soft" if v_reset is None else "hard",
        detach_reset=detach_reset, return_v=True, backend="torch")
    (spikes * w_s).sum().backward()
    assert spikes.sum() > 0 and torch.equal(spikes, spikes_sj)
    torch.testing.assert_close(v_last, node.v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_ours.grad, x_sj.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w.grad, node.w.grad, rtol=1e-11, atol=1e-11)
