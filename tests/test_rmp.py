"""RMP-loss: the recorded membranes and the loss's value, its gradients against a plain autograd loop,
with the zoo's models and memory saving, and its refusals."""

import pytest
import torch

from a2sg_triton.ops.lif import HeavisideSurrogate
from a2sg_triton.models import build_model, direct_encode
from a2sg_triton.nn import LIF, PLIF
from a2sg_triton.rmp import Membrane, membrane_potential, record_membranes, rmp_loss


class TwoLayers(torch.nn.Module):
    """Two neurons on two inputs: the loss averages over layers, not over all their neurons."""

    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, a, b):
        return self.first(a), self.second(b)


def test_value_by_hand():
    # LIF tau = 2 (u = v/2 + x/2), v_th = 1, soft reset; one neuron, x = 2.4, 0.4, 3.0:
    # u = 1.2 (spike, v = 0.2), 0.3 (v = 0.3), 1.65 (spike): errors 0.2, 0.3, 0.65.
    # Second layer: v_th = 0.5, x = 0.8 and 0.2 at both steps on two neurons: u = 0.4, 0.1 (no spikes),
    # then u = 0.2 + 0.4 = 0.6 (spike), 0.05 + 0.1 = 0.15: errors 0.4, 0.1, 0.4, 0.15.
    model = TwoLayers(LIF(3, backend="torch"), LIF(2, v_th=0.5, backend="torch"))
    a = torch.tensor([2.4, 0.4, 3.0], dtype=torch.float64).reshape(3, 1, 1)
    b = torch.tensor([[0.8, 0.2], [0.8, 0.2]], dtype=torch.float64).reshape(2, 1, 2)
    with record_membranes(model) as membranes:
        model(a, b)
    assert [m.layer for m in membranes] == ["first", "second"]
    torch.testing.assert_close(membranes[0].u.flatten(), torch.tensor([1.2, 0.3, 1.65], dtype=torch.float64))
    assert membranes[0].spikes.flatten().tolist() == [1, 0, 1]
    torch.testing.assert_close(membranes[1].u.flatten(), torch.tensor([0.4, 0.1, 0.6, 0.15], dtype=torch.float64))
    first = (0.2**2 + 0.3**2 + 0.65**2) / 3
    second = (0.4**2 + 0.1**2 + 0.4**2 + 0.15**2) / 4
    assert rmp_loss(membranes).item() == pytest.approx((first + second) / 2, rel=1e-12)


def _reference_membranes(x, decay, input_scale, beta, surrogate, v_th, hard, detach_reset):
    """u of a LIF / PLIF step by step with autograd through the surrogate spike (lif_multistep_ref's loop)."""
    v, us = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        u = decay * v + input_scale * x[t]
        s = HeavisideSurrogate.apply(u, beta[t], surrogate, v_th, 0.5)
        s_reset = s.detach() if detach_reset else s
        v = (1 - s_reset) * u if hard else u - v_th * s_reset
        us.append((u, s))
    return us


@pytest.mark.parametrize("neuron", ["lif", "plif"])
@pytest.mark.parametrize("reset, detach_reset", [("soft", False), ("soft", True), ("hard", False)])
def test_gradients_equal_autograd_through_the_reference_loop(neuron, reset, detach_reset):
    """d L_RMP / dx (and / dw for PLIF) equal those of u computed with autograd in float64: the spikes'
    surrogate gradient carries the part through the resets."""
    torch.manual_seed(0)
    T, beta = 4, torch.tensor([0.3, 0.5, 0.7, 0.9], dtype=torch.float64)
    if neuron == "lif":
        layer = LIF(T, "tri", v_th=0.8, reset=reset, detach_reset=detach_reset, backend="torch")
    else:
        layer = PLIF(T, "tri", init_tau=3.0, v_th=0.8, reset=reset, detach_reset=detach_reset, backend="torch")
    layer.beta.copy_(beta)
    layer = layer.double()
    x = (2 * torch.randn(T, 3, 7, dtype=torch.float64)).requires_grad_()
    with record_membranes(layer) as membranes:
        layer(x)
    rmp_loss(membranes).backward()
    params = [x] + ([layer.w] if neuron == "plif" else [])
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    if neuron == "lif":
        decay, input_scale = layer.decay, layer.input_scale
    else:
        k = torch.sigmoid(layer.w)
        decay, input_scale = 1 - k, k
    # the layer keeps beta in fp32 (SearchedNeuron): the reference takes those values
    us = _reference_membranes(x, decay, input_scale, layer.beta.double(), "tri", 0.8, reset == "hard", detach_reset)
    # one layer: the mean over its T * 3 * 7 elements
    want_grads = torch.autograd.grad(sum(((u - s.detach()) ** 2).sum() for u, s in us) / (T * 21), params)
    for g, w in zip(got, want_grads):
        assert w.abs().sum() > 0
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(membranes[0].u, torch.stack([u for u, _ in us]).detach())


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_gradient_reaches_every_weight_with_memory_saving(neuron):
    """A zoo model under memory saving: the RMP term alone reaches every conv weight and PLIF leak, and
    the recorded u are those of the plain model."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=2, backend="torch", neuron=neuron)
    x = direct_encode(2 * torch.rand(4, 1, 8, 8), 2)
    recorded = {}
    for memory in (True, False):
        model.memory_saving = memory
        model.zero_grad()
        with record_membranes(model) as membranes:
            model(x)
        rmp_loss(membranes).backward()
        recorded[memory] = [m.u.detach() for m in membranes], {n: p.grad.clone() for n, p in model.named_parameters()
                                                              if p.grad is not None}
    assert len(recorded[True][0]) == 2
    for got, want in zip(*(recorded[m][0] for m in (True, False))):
        torch.testing.assert_close(got, want)
    grads = recorded[True][1]
    convs = [n for n in grads if n.endswith("0.weight") and grads[n].dim() == 4]
    assert len(convs) == 2 and all(grads[n].abs().sum() > 0 for n in convs)
    assert "classifier.1.weight" not in grads  # the classifier is above every neuron
    if neuron == "plif":
        assert sum(n.endswith(".w") and grads[n] != 0 for n in grads) == 2
    for name, grad in recorded[False][1].items():
        torch.testing.assert_close(grads[name], grad, msg=lambda m: f"{name}: {m}")


def test_hooks_removed_and_nothing_recorded_outside():
    layer = LIF(2, backend="torch")
    with record_membranes(layer) as membranes:
        layer(torch.randn(2, 3))
    layer(torch.randn(2, 3))
    assert len(membranes) == 1 and not layer._forward_hooks
    assert isinstance(membranes[0], Membrane)


def test_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with record_membranes("model"):
            pass
    with pytest.raises(ValueError, match="no a2sg_triton.nn.LIF or nn.PLIF layer"):
        with record_membranes(torch.nn.Linear(2, 2)):
            pass
    for kwargs in ({"stateful": True}, {"return_v": True}):
        with pytest.raises(ValueError, match="'' is stateful or returns v_T"):
            with record_membranes(LIF(2, **kwargs)):
                pass
    with pytest.raises(ValueError, match="no membrane was recorded"):
        rmp_loss([])
    with pytest.raises(TypeError, match="layer must be an a2sg_triton.nn.LIF or nn.PLIF, got Linear"):
        membrane_potential(torch.nn.Linear(2, 2), torch.zeros(2, 2), torch.zeros(2, 2))
