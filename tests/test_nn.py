"""nn.LIF (and the options PLIF and ILIF share with it), torch.compile without graph breaks, and
torch.library.opcheck of the registered ops."""

import pytest
import torch

import a2sg_triton
from a2sg_triton.ops.lif import lif_bwd_op, lif_fwd_op
from a2sg_triton.nn import ILIF, LIF, PLIF
from helpers import KERNEL_DEVICE, assert_compiled_matches_eager, outputs_and_grads


def test_paper_neuron_and_beta_buffer():
    lif = LIF(T=4, surrogate="asy", tau=2.0, beta_init=0.3)
    assert lif.decay == 0.5 and lif.input_scale == 0.5
    assert lif.beta.shape == (4,) and torch.all(lif.beta == 0.3)
    assert "beta" in dict(lif.named_buffers())
    x = torch.randn(4, 2, 6, dtype=torch.float64)
    want = a2sg_triton.reference.lif_multistep(x, 0.3, "asy", decay=0.5, input_scale=0.5)
    assert torch.equal(lif(x), want)
    other = LIF(T=4, tau=4.0, decay=0.9, input_scale=1.0)
    assert other.decay == 0.9 and other.input_scale == 1.0


def test_beta_stays_fp32_when_the_model_changes_dtype():
    lif = LIF(T=2, beta_init=0.37)
    for convert in (lambda m: m.half(), lambda m: m.to(torch.bfloat16), lambda m: m.double()):
        assert convert(lif) is lif
        assert lif.beta.dtype == torch.float32 and torch.equal(lif.beta, torch.full((2,), 0.37))
    lif.to("meta")  # devices still follow the module
    assert lif.beta.device.type == "meta"


def test_state_dict_round_trip():
    lif = LIF(T=3, surrogate="tri")
    lif.beta.copy_(torch.tensor([0.2, 0.35, 0.9]))
    state = lif.state_dict()
    fresh = LIF(T=3, surrogate="tri")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.beta, torch.tensor([0.2, 0.35, 0.9]))
    x = (2 * torch.randn(3, 4, 5)).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    lif(x).sum().backward()
    fresh(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad)
    with pytest.raises(RuntimeError, match="size mismatch"):
        LIF(T=4).load_state_dict(state)


def test_wrong_T_and_bad_arguments():
    lif = LIF(T=4)
    with pytest.raises(ValueError, match=r"LIF expects input \[T=4"):
        lif(torch.zeros(3, 2))
    for kwargs, match in [({"T": 0}, "T must be an int >= 1"), ({"T": 2, "tau": 0.0}, "tau must be > 0"),
                          ({"T": 2, "surrogate": "x"}, "surrogate"), ({"T": 2, "beta_init": -1.0}, "beta"),
                          ({"T": 2, "reset": "x"}, "reset"), ({"T": 2, "backend": "x"}, "backend"),
                          ({"T": 2, "surrogate": "asy", "h": 0.1}, "h must be")]:
        with pytest.raises(ValueError, match=match):
            LIF(**kwargs)


def _model(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), LIF(T=3, surrogate="asy", backend=backend),
                                torch.nn.Linear(16, 8), LIF(T=3, surrogate="tri", reset="hard", backend=backend))
    with torch.no_grad():  # weights large enough that the second layer spikes too
        model[2].weight.normal_(0.3, 1.0)
    return model


def _check_compiled_matches_eager(backend, device):
    torch._dynamo.reset()
    model = _model(backend).to(device)
    model[1].beta.copy_(torch.tensor([0.3, 0.5, 0.7]))
    x = 3 * torch.randn(3, 5, 6, device=device)
    assert_compiled_matches_eager(model, x)
    # changing beta (a buffer) takes effect in the compiled model without recompiling
    model[1].beta.fill_(0.9)
    torch.testing.assert_close(outputs_and_grads(torch.compile(model, fullgraph=True), x)[1],
                               outputs_and_grads(model, x)[1])


def test_torch_compile_fullgraph_cpu():
    _check_compiled_matches_eager("torch", "cpu")


@pytest.mark.gpu
def test_torch_compile_fullgraph_cuda():
    _check_compiled_matches_eager("triton", "cuda")


def _op_args(backend, device):
    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(3, 37, generator=g)).to(device).requires_grad_()
    v0 = torch.randn(37, generator=g).to(device).requires_grad_()
    beta = torch.tensor([0.3, 0.5, 0.7], device=device)
    return x, beta, v0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_opcheck(backend):
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    x, beta, v0 = _op_args(backend, device)
    for hard, detach, return_v in [(False, False, True), (True, True, False)]:
        torch.library.opcheck(lif_fwd_op, (x, beta, v0, 2, 0.5, 0.5, 1.0, hard, 0.0, detach, 0.5, return_v,
                                           torch.float32, backend, -1))
        torch.library.opcheck(lif_fwd_op, (x, beta, None, 0, 0.5, 0.5, 1.0, hard, 0.0, detach, 0.5, return_v,
                                           torch.bfloat16, backend, -1))
    d = torch.randn(3, 37, device=device)
    torch.library.opcheck(lif_bwd_op, (torch.randn(3, 37, device=device), d, beta, torch.randn(37, device=device),
                                       1, 0.5, 0.5, 1.0, False, 0.0, False, 0.5, True, backend))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_stateful_stream_equals_one_long_sequence(backend):
    """Two chunks through a stateful layer = one call over both, forward and every gradient."""
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    beta = torch.tensor([0.3, 0.5, 0.7], device=device)
    x = (2 * torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(0))).to(device)
    w = torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(1)).to(device)
    x_long, x_stream = x.clone().requires_grad_(), x.clone().requires_grad_()
    long = a2sg_triton.lif_multistep(x_long, beta.repeat(2), "tri", backend=backend)
    (long * w).sum().backward()
    lif = LIF(3, "tri", backend=backend, stateful=True).to(device)
    lif.beta.copy_(beta)
    stream = torch.cat([lif(x_stream[:3]), lif(x_stream[3:])])
    (stream * w).sum().backward()
    assert long.sum() > 0 and torch.equal(stream, long)
    torch.testing.assert_close(x_stream.grad, x_long.grad, rtol=1e-6, atol=1e-6)
    assert lif.state.dtype == torch.float32 and lif.state.shape == (4, 7)
    lif.reset_state()
    assert torch.equal(lif(x[:3]), long[:3])  # from v = 0 again


def test_stateful_state_handling():
    lif = LIF(2, stateful=True, return_v=True)
    x = torch.randn(2, 3, requires_grad=True)
    spikes, v = lif(x)
    assert v is lif.state and v.requires_grad
    lif.detach_state()
    assert not lif.state.requires_grad and torch.equal(lif.state, v.detach())
    with pytest.raises(ValueError, match="reset_state"):
        lif(torch.randn(2, 5))
    clone = __import__("copy").deepcopy(lif)  # a copy starts fresh
    assert clone.state is None and lif.state is not None
    assert "stateful=True" in repr(lif) and "return_v=True" in repr(lif)


def test_module_save_dtype_and_return_v():
    x = (2 * torch.randn(4, 3, 9, generator=torch.Generator().manual_seed(2))).requires_grad_()
    x16 = x.detach().clone().requires_grad_()
    full, half = LIF(4, "asy", return_v=True), LIF(4, "asy", return_v=True, save_dtype=torch.bfloat16)
    (s, v), (s16, v16) = full(x), half(x16)
    assert torch.equal(s, s16) and torch.equal(v, v16) and v.dtype == torch.float32
    (s.sum() + v.sum()).backward()
    (s16.sum() + v16.sum()).backward()
    assert x.grad.abs().sum() > 0
    torch.testing.assert_close(x16.grad, x.grad, rtol=2 ** -7, atol=2 ** -7)  # bf16-rounded d in the surrogate
    with pytest.raises(ValueError, match="save_dtype"):
        LIF(4, save_dtype=torch.float16)
    with pytest.raises(TypeError, match="stateful must be a bool"):
        LIF(4, stateful=1)


def test_v_T_is_fp32_for_half_input():
    x = torch.randn(3, 5).half()
    _, v = a2sg_triton.lif_multistep(x, 0.5, return_v=True, backend="torch")
    assert v.dtype == torch.float32
    _, v64 = a2sg_triton.lif_multistep(x.double(), 0.5, return_v=True)
    torch.testing.assert_close(v.double(), v64, rtol=1e-6, atol=1e-6)


def test_membrane_is_the_forward_of_the_layer():
    lif = LIF(3, reset="hard", v_reset=-0.2)
    x = 2 * torch.randn(3, 40, generator=torch.Generator().manual_seed(3))
    d = lif.membrane(x)
    assert d.shape == x.shape and torch.equal(lif(x).bool(), d >= 0) and lif(x).sum() > 0


def test_beta_is_saved_without_a_copy_and_guarded_by_autograd():
    lif = LIF(3, "asy")
    saved = []
    x = (2 * torch.randn(3, 50)).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lif(x)
    assert any(t.data_ptr() == lif.beta.data_ptr() for t in saved)  # the buffer itself, no copy per call
    spikes = lif(x)  # without hooks, which would bypass autograd's version check
    lif.beta.mul_(2)  # changed between forward and backward: refused, never silently mixed
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        spikes.sum().backward()


def test_compiled_model_does_not_recompile_when_beta_changes():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), LIF(3, "tri", backend="torch"))
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    x = torch.randn(3, 4, 6)
    for beta in (0.5, 0.3, 0.9):
        model[1].beta.fill_(beta)
        compiled(x).sum().backward()
    assert counter.frame_count == 1


def test_beta_init_tensor_is_copied():
    """The layer owns its beta: an in-place change (the controller's) never reaches the caller's tensor."""
    init = torch.tensor([0.3, 0.4, 0.5])
    lif = LIF(T=3, beta_init=init)
    with torch.no_grad():
        lif.beta.fill_(0.9)
    assert torch.equal(init, torch.tensor([0.3, 0.4, 0.5]))


# PLIF and I-LIF layers take LIF's streaming and save_dtype options: each kind's layer and the op it
# runs, called with the layer's own constants.
OTHER_NEURONS = {
    "plif": (lambda T, **options: PLIF(T, "tri", init_tau=3.0, **options),
             lambda layer, x, beta, **options: a2sg_triton.plif_multistep(x, layer.w, beta, "tri", **options)),
    "ilif": (lambda T, **options: ILIF(T, "tri", levels=3, v_th=0.8, **options),
             lambda layer, x, beta, **options: a2sg_triton.ilif_multistep(x, beta, "tri", levels=3, v_th=0.8,
                                                                          **options)),
}


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind", sorted(OTHER_NEURONS))
def test_plif_and_ilif_stream_like_lif(kind, backend):
    """Two chunks through a stateful PLIF or I-LIF layer = the op over both: outputs exactly, the
    gradients of x (and of PLIF's w) within fp32 rounding."""
    make, op = OTHER_NEURONS[kind]
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    layer = make(3, backend=backend, stateful=True).to(device)
    layer.beta.copy_(torch.linspace(0.3, 0.7, layer.beta.numel()).reshape(layer.beta.shape))
    x = (2 * torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(0))).to(device)
    w = torch.randn(6, 4, 7, generator=torch.Generator().manual_seed(1)).to(device)
    x_long, x_stream = x.clone().requires_grad_(), x.clone().requires_grad_()
    long = op(layer, x_long, layer.beta.repeat(2, *([1] * (layer.beta.dim() - 1))), backend=backend)
    (long * w).sum().backward()
    grad_w_long = None if kind == "ilif" else layer.w.grad.clone()
    if kind == "plif":
        layer.w.grad = None
    stream = torch.cat([layer(x_stream[:3]), layer(x_stream[3:])])
    (stream * w).sum().backward()
    assert long.sum() > 0 and torch.equal(stream, long)
    torch.testing.assert_close(x_stream.grad, x_long.grad, rtol=1e-6, atol=1e-6)
    if kind == "plif":
        torch.testing.assert_close(layer.w.grad, grad_w_long, rtol=1e-5, atol=1e-6)
    assert layer.state.dtype == torch.float32 and layer.state.shape == (4, 7)
    layer.reset_state()
    assert torch.equal(layer(x[:3]), long[:3])  # from v = 0 again
    with pytest.raises(ValueError, match="reset_state"):
        layer(torch.randn(3, 5, device=device))


@pytest.mark.parametrize("kind", sorted(OTHER_NEURONS))
def test_plif_and_ilif_take_save_dtype_and_return_v(kind):
    """save_dtype reaches the op (backward keeps a bf16 tensor) and return_v returns v_T: the layer
    equals its op called with the same options, outputs and gradients exactly."""
    make, op = OTHER_NEURONS[kind]
    layer = make(4, return_v=True, save_dtype=torch.bfloat16, backend="torch")
    x = (2 * torch.randn(4, 3, 9, generator=torch.Generator().manual_seed(2))).requires_grad_()
    x_op = x.detach().clone().requires_grad_()
    saved_dtypes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved_dtypes.append(t.dtype) or t, lambda t: t):
        out, v = layer(x)
    want, want_v = op(layer, x_op, layer.beta, return_v=True, save_dtype=torch.bfloat16, backend="torch")
    assert torch.bfloat16 in saved_dtypes and v.dtype == torch.float32 and v.shape == (3, 9)
    assert torch.equal(out, want) and torch.equal(v, want_v)
    (out.sum() + v.sum()).backward()
    (want.sum() + want_v.sum()).backward()
    assert x.grad.abs().sum() > 0 and torch.equal(x.grad, x_op.grad)
    assert "save_dtype=torch.bfloat16" in repr(layer) and "return_v=True" in repr(layer)
    with pytest.raises(ValueError, match="save_dtype"):
        make(4, save_dtype=torch.float16)
    with pytest.raises(TypeError, match="stateful must be a bool"):
        make(4, stateful=1)
