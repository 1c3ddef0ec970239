"""from_spikingjelly: SpikingJelly 2.x models converted to nn.LIF compute the same function."""

import copy

import pytest
import torch

import a2sg_triton
from a2sg_triton import A2SG, surrogate_grad
from a2sg_triton.nn import ILIF, LIF, PLIF

sj = pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron, surrogate as sg  # noqa: E402

T = 4
SEARCH = dict(n_obs=12, n_eval=20)  # small: the GP is the slow part on the CPU


def sj_model(seed=0):
    """Every reset variant, both charge conventions, four surrogates, SpikingJelly's layers (float64)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1, bias=False, step_mode="m"),
        layer.BatchNorm2d(4, step_mode="m"),
        neuron.LIFNode(tau=2.0, surrogate_function=sg.ATan(alpha=4.0), v_reset=None, step_mode="m"),
        layer.SeqToANNContainer(torch.nn.Flatten(), torch.nn.Linear(100, 32)),
        neuron.LIFNode(tau=3.0, decay_input=False, surrogate_function=sg.Sigmoid(alpha=8.0), step_mode="m"),
        layer.SeqToANNContainer(torch.nn.Linear(32, 32)),
        neuron.LIFNode(tau=1.5, surrogate_function=sg.PiecewiseQuadratic(alpha=2.0), v_threshold=0.75,
                       v_reset=-0.25, detach_reset=True, step_mode="m"),
        layer.SeqToANNContainer(torch.nn.Linear(32, 16)),
        neuron.LIFNode(tau=4.0, decay_input=False, surrogate_function=sg.PiecewiseLeakyReLU(w=0.5, c=0.0),
                       v_threshold=0.5, v_reset=None, detach_reset=True, step_mode="m"),
    ).double()
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        for linear in (model[3][1], model[5][0], model[7][0]):
            linear.weight.normal_(0.05, 0.4)
    return model


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, 6, 2, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(T, 6, 16, generator=g, dtype=torch.float64)
    return x, w


def forward_backward(model, x, w):
    model.zero_grad()
    x = x.clone().requires_grad_()
    hidden = {}
    hooks = [m.register_forward_hook(lambda m, _, out, i=i: hidden.__setitem__(i, out))
             for i, m in enumerate(model) if i in (2, 4, 6)]
    out = model(x)
    for hook in hooks:
        hook.remove()
    (out * w).sum().backward()
    functional.reset_net(model)  # SpikingJelly's nodes keep v between calls until this
    return out, x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}, hidden


def test_same_outputs_and_gradients_in_float64():
    model = sj_model()
    before = copy.deepcopy(model.state_dict())
    converted = a2sg_triton.from_spikingjelly(model, T)
    assert [type(m).__name__ for m in model] == [type(m).__name__ for m in sj_model()]  # input untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lifs = [m for m in converted if isinstance(m, LIF)]
    assert [(m.surrogate, m.beta[0].item()) for m in lifs] == [("atan", 0.25), ("sigmoid", 0.25), ("tri", 0.5),
                                                               ("box", 0.5)]
    assert [m.reset for m in lifs] == ["soft", "hard", "hard", "soft"]
    assert (lifs[2].v_th, lifs[2].v_reset, lifs[2].decay) == (1.0, 0.0, pytest.approx(1 / 3))
    assert "decay=" in repr(lifs[1]) and "tau=2.0" in repr(lifs[0])  # the paper's tau = 2 is SpikingJelly's

    x, w = inputs()
    out_sj, gx_sj, grads_sj, hidden = forward_backward(model, x, w)
    out, gx, grads, _ = forward_backward(converted, x, w)
    for spikes in (*hidden.values(), out_sj):  # every layer fires, but not always
        assert 0.05 < spikes.mean().item() < 0.95
    assert torch.equal(out, out_sj)
    torch.testing.assert_close(gx, gx_sj, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_sj.keys()
    for name in grads:
        assert grads_sj[name].abs().max() > 1e-3, name
        torch.testing.assert_close(grads[name], grads_sj[name], rtol=1e-10, atol=1e-12, msg=name)


# SpikingJelly surrogate -> (our name, beta), as docs/porting.md states it.
SURROGATE_MAP = [
    (sg.ATan(alpha=2.0), "atan", 1 / 2.0), (sg.ATan(alpha=3.0), "atan", 1 / 3.0),
    (sg.Sigmoid(alpha=4.0), "sigmoid", 2 / 4.0), (sg.Sigmoid(alpha=5.0), "sigmoid", 2 / 5.0),
    (sg.PiecewiseQuadratic(alpha=1.0), "tri", 1 / 1.0), (sg.PiecewiseQuadratic(alpha=3.0), "tri", 1 / 3.0),
    (sg.PiecewiseLeakyReLU(w=0.3, c=0.0), "box", 0.3),
]


@pytest.mark.parametrize("fn, name, beta", SURROGATE_MAP,
                         ids=lambda v: repr(v) if isinstance(v, torch.nn.Module) else None)
def test_surrogate_mapping_equals_spikingjelly_gradient(fn, name, beta):
    v_th = 0.75
    d = torch.linspace(-2, 2, 4001, dtype=torch.float64)  # d = u - v_th, window edges included
    d = d.requires_grad_()
    fn(d).sum().backward()
    ours = surrogate_grad(d.detach() + v_th, beta, name, v_th=v_th)
    torch.testing.assert_close(ours, d.grad, rtol=1e-12, atol=1e-14)
    layer_ = a2sg_triton.from_spikingjelly(neuron.LIFNode(surrogate_function=fn, step_mode="m"), T)
    assert layer_.surrogate == name
    assert torch.equal(layer_.beta, torch.full((T,), beta, dtype=torch.float32))  # beta is kept in fp32


def hooked():
    node = neuron.LIFNode(step_mode="m")
    node.register_forward_hook(lambda *args: None)
    return node


@pytest.mark.parametrize("node, reason", [
    (lambda: neuron.LIFNode(), "single-step"),
    (lambda: neuron.ILIFNode(surrogate_function=sg.MultiLevelSpikeCount(4, grad_window=(0.0, 3.0)), step_mode="m"),
     r"ILIFNode with grad_window=\(0.0, 3.0\)"),
    (lambda: neuron.ILIFNode(), "ILIFNode in single-step"),
    (lambda: neuron.IFNode(step_mode="m"), "IFNode is not a neuron"),
    (lambda: neuron.SimpleLIFNode(2.0, True, step_mode="m"), "SimpleLIFNode is not a neuron"),
    (lambda: neuron.LIFNode(surrogate_function=sg.Erf(), step_mode="m"), "Erf"),
    (lambda: neuron.LIFNode(surrogate_function=sg.PiecewiseLeakyReLU(c=0.01), step_mode="m"), "PiecewiseLeakyReLU"),
    (lambda: neuron.LIFNode(surrogate_function=sg.ATan(spiking=False), step_mode="m"), "spiking=False"),
    (lambda: neuron.LIFNode(surrogate_function=sg.ATan(alpha=-1.0), step_mode="m"), "alpha=-1.0"),
    (lambda: neuron.LIFNode(store_v_seq=True, step_mode="m"), "store_v_seq"),
    (hooked, "hooks"),
])
def test_what_cannot_be_reproduced_is_an_error_naming_the_module(node, reason):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Sequential(torch.nn.Identity(), node()))
    with pytest.raises(ValueError, match=r"(?s)1\.1: .*" + reason):
        a2sg_triton.from_spikingjelly(model, T)
    # with inplace=True too, a failed conversion leaves the model as it was
    with pytest.raises(ValueError, match="1.1"):
        a2sg_triton.from_spikingjelly(model, T, inplace=True)
    assert not isinstance(model[1][1], LIF)


def test_every_problem_is_reported_and_a_neuron_root_converts():
    model = torch.nn.Sequential(neuron.LIFNode(), neuron.LIFNode(step_mode="m"), neuron.IFNode(step_mode="m"))
    with pytest.raises(ValueError, match=r"(?s)\n  0: .*single-step.*\n  2: IFNode"):
        a2sg_triton.from_spikingjelly(model, T)
    assert isinstance(a2sg_triton.from_spikingjelly(neuron.LIFNode(step_mode="m"), T), LIF)
    with pytest.raises(ValueError, match="<model>: .*single-step"):
        a2sg_triton.from_spikingjelly(neuron.LIFNode(), T)


def test_every_layer_gets_its_own_beta_and_the_callers_tensor_is_not_used():
    beta = torch.tensor([0.2, 0.3, 0.4, 0.5])
    model = torch.nn.Sequential(neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m"))
    converted = a2sg_triton.from_spikingjelly(model, T, surrogate="box", beta_init=beta)
    assert all(torch.equal(m.beta, beta) for m in converted)
    with torch.no_grad():
        converted[0].beta.fill_(1.0)  # what the controller does
    assert torch.equal(converted[1].beta, beta) and torch.equal(beta, torch.tensor([0.2, 0.3, 0.4, 0.5]))


def test_a_shared_node_stays_shared_and_inplace_converts_the_model_itself():
    node = neuron.LIFNode(step_mode="m")
    model = torch.nn.Sequential(node, torch.nn.Identity(), node)
    assert a2sg_triton.from_spikingjelly(model, T, inplace=True) is model
    assert isinstance(model[0], LIF) and model[0] is model[2]


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model="net"), TypeError, "model must be a torch.nn.Module"),
    (dict(T=0), ValueError, "T must be an int"),
    (dict(surrogate="gauss"), ValueError, "surrogate must be one of"),
    (dict(beta_init=0.3), ValueError, "beta_init needs surrogate"),
    (dict(surrogate="asy", beta_init=-0.3), ValueError, "beta_init: beta must be > 0"),
    (dict(surrogate="asy", beta_init=torch.ones(T + 1)), ValueError, "beta_init: beta must be a float or a tensor"),
])
def test_bad_arguments(kwargs, error, match):
    args = dict(model=torch.nn.Sequential(neuron.LIFNode(step_mode="m")), T=T) | kwargs
    with pytest.raises(error, match=match):
        a2sg_triton.from_spikingjelly(args.pop("model"), args.pop("T"), **args)


def test_a_model_on_several_devices_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta"),
                                neuron.LIFNode(step_mode="m"))
    with pytest.raises(ValueError, match="several devices"):
        a2sg_triton.from_spikingjelly(model, T)


@pytest.mark.parametrize("surrogate", [None, "asy"])
def test_the_converted_model_trains_under_a2sg_and_its_betas_move(surrogate):
    beta_init = None if surrogate is None else 0.4
    model = a2sg_triton.from_spikingjelly(sj_model().float(), T, surrogate=surrogate, beta_init=beta_init)
    lifs = [m for m in model if isinstance(m, LIF)]
    expected = ["atan", "sigmoid", "tri", "box"] if surrogate is None else ["asy"] * 4
    assert [m.surrogate for m in lifs] == expected
    initial = [m.beta.clone() for m in lifs]
    controller = A2SG(model, **SEARCH)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, w = inputs()
    weights = [p.detach().clone() for p in model.parameters()]
    controller.begin_epoch(0)
    for _ in range(2):
        optimizer.zero_grad()
        (model(x.float()) * w.float()).sum().backward()
        optimizer.step()
    assert len(controller.history) == len(lifs) * T
    assert all(not torch.equal(a, m.beta) for a, m in zip(initial, lifs))
    assert all(not torch.equal(a, p) for a, p in zip(weights, model.parameters()))


def test_plif_nodes_convert_with_their_learned_leak():
    """ParametricLIFNode -> nn.PLIF with the node's w (not the initial one): soft and shifted hard
    reset, both charge conventions; the same outputs and gradients (w's included) in float64."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        layer.SeqToANNContainer(torch.nn.Linear(8, 16)),
        neuron.ParametricLIFNode(init_tau=2.0, surrogate_function=sg.Sigmoid(alpha=4.0), v_reset=None, step_mode="m"),
        layer.SeqToANNContainer(torch.nn.Linear(16, 16)),
        neuron.ParametricLIFNode(init_tau=3.0, decay_input=False, surrogate_function=sg.ATan(alpha=2.0),
                                 v_threshold=0.8, v_reset=-0.2, detach_reset=True, step_mode="m"),
    ).double()
    with torch.no_grad():
        model[1].w.fill_(0.3)  # as if learned: k = sigmoid(0.3), not 1 / init_tau
        model[3].w.fill_(-1.1)
        for linear in (model[0][0], model[2][0]):
            linear.weight.normal_(0.1, 0.5)
    converted = a2sg_triton.from_spikingjelly(model, T)
    plifs = [m for m in converted if isinstance(m, PLIF)]
    assert [(m.surrogate, m.w.item(), m.reset, m.decay_input) for m in plifs] == [
        ("sigmoid", 0.3, "soft", True), ("atan", -1.1, "hard", False)]
    assert plifs[1].v_th == pytest.approx(1.0) and plifs[1].v_reset == 0.0 and plifs[1].w.requires_grad
    g = torch.Generator().manual_seed(1)
    x, w = (torch.randn(T, 5, n, generator=g, dtype=torch.float64) for n in (8, 16))
    (out_sj, gx_sj, grads_sj, _), (out, gx, grads, _) = (forward_backward(net, x, w) for net in (model, converted))
    assert 0.05 < out_sj.mean().item() < 0.95 and torch.equal(out, out_sj)
    torch.testing.assert_close(gx, gx_sj, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_sj.keys() and {"1.w", "3.w"} <= grads.keys()
    for name in grads:
        assert grads_sj[name].abs().max() > 1e-3, name
        torch.testing.assert_close(grads[name], grads_sj[name], rtol=1e-10, atol=1e-12, msg=name)


def test_ilif_nodes_convert_to_box_windows_of_half_a_threshold():
    """ILIFNode -> nn.ILIF (decay = 1 - 1/tau, input_scale 1, D = max_spike_count, box with beta =
    v_threshold / 2 at every timestep and level): the same counts and gradients in float64 (the
    window edges, u an integer multiple of v_th, are not hit by these inputs)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        layer.SeqToANNContainer(torch.nn.Linear(8, 16)),
        neuron.ILIFNode(step_mode="m"),
        layer.SeqToANNContainer(torch.nn.Linear(16, 16)),
        neuron.ILIFNode(tau=2.0, v_threshold=0.75, surrogate_function=sg.MultiLevelSpikeCount(2, grad_window=(0, 2)),
                        detach_reset=True, step_mode="m"),
    ).double()
    with torch.no_grad():
        for linear in (model[0][0], model[2][0]):
            linear.weight.normal_(0.2, 0.6)
    converted = a2sg_triton.from_spikingjelly(model, T)
    ilifs = [m for m in converted if isinstance(m, ILIF)]
    assert [(m.levels, m.surrogate, m.decay, m.input_scale, m.v_th, m.detach_reset) for m in ilifs] == [
        (4, "box", 0.25, 1.0, 1.0, False), (2, "box", 0.5, 1.0, 0.75, True)]
    assert torch.equal(ilifs[0].beta, torch.full((T, 4), 0.5)) and torch.equal(ilifs[1].beta, torch.full((T, 2), 0.375))
    g = torch.Generator().manual_seed(1)
    x, w = (torch.randn(T, 5, n, generator=g, dtype=torch.float64) for n in (8, 16))
    (out_sj, gx_sj, grads_sj, _), (out, gx, grads, _) = (forward_backward(net, x, w) for net in (model, converted))
    assert torch.equal(out, out_sj) and out_sj.max() == 2 and 0.1 < (out_sj > 0).double().mean() < 0.9
    torch.testing.assert_close(gx, gx_sj, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_sj.keys()
    for name in grads:
        assert grads_sj[name].abs().max() > 1e-3, name
        torch.testing.assert_close(grads[name], grads_sj[name], rtol=1e-10, atol=1e-12, msg=name)


def test_ilif_nodes_with_a_surrogate_name_get_beta_init_per_timestep_at_every_level():
    beta = torch.tensor([0.2, 0.3, 0.4, 0.5])
    converted = a2sg_triton.from_spikingjelly(neuron.ILIFNode(step_mode="m"), T, surrogate="asy", beta_init=beta)
    assert converted.surrogate == "asy" and torch.equal(converted.beta, beta[:, None].expand(T, 4))
    with torch.no_grad():
        converted.beta.fill_(1.0)  # what the controller does: the caller's tensor is not touched
    assert torch.equal(beta, torch.tensor([0.2, 0.3, 0.4, 0.5]))
