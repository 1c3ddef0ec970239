"""The spiking model zoo: shapes, gradients, LIF layers and their settings, tdBN, and the Triton path."""

import math

import pytest
import torch

from a2sg_triton import A2SG
from a2sg_triton.models import (MODELS, NEURONS, BasicBlock, NeuronConfig, Spikformer, TdBatchNorm2d, TimeDistributed,
                                accepts_image_size, build_model, direct_encode)
from a2sg_triton.models.spikformer import SpikingSelfAttention
from a2sg_triton.nn import LIF, PLIF, SearchedNeuron
from helpers import KERNEL_DEVICE

RESIDUAL_ALPHA = 1 / math.sqrt(2)

# name: (in_channels, input size, LIF layers, tdBN layers with alpha = 1/sqrt(2), parameters at 10 classes).
# LIF layers: vgg16 one per conv (13); resnet19 stem + 2 per block (8 blocks) + the FC256's; resnet18 stem +
# 2 per block (8 blocks); vggsnn one per conv (8); digits_cnn one per conv (2); digits_vgg one per conv (12);
# the Spikformers 5 in the SPS (4 stages, position embedding) + 7 per block (Q, K, V, attention, projection,
# 2 MLP): 1 block for spikformer, 4 for spikformer-4-384. The 1/sqrt(2) layers are the BN before every
# residual sum plus every conv shortcut's BN (resnet19: 2, resnet18: 3). The parameter counts are the ones
# docs/models.md lists.
SPECS = {
    "vgg16": (3, 32, 13, 0, 14_724_042),
    "resnet19": (3, 32, 18, 10, 12_698_250),
    "resnet18": (3, 32, 17, 11, 11_173_962),
    "vggsnn": (2, 48, 8, 0, 9_268_746),
    "digits_cnn": (1, 8, 2, 0, 9_978),
    "digits_vgg": (1, 8, 12, 0, 78_106),
    "spikformer": (1, 8, 12, 0, 112_450),
    "spikformer-4-384": (3, 32, 33, 0, 9_310_906),
    "sdt3": (1, 8, 23, 0, 216_602),
    "sdt3-10m": (3, 32, 105, 0, 9_775_762),
}


def _lifs(model):
    return [m for m in model.modules() if isinstance(m, LIF)]


def _attention_neurons(model):
    """Spikformer's attention neurons, which fire at half the model's threshold."""
    return {m.attention for m in model.modules() if isinstance(m, SpikingSelfAttention)}


def _loss_and_grads(model, images, T):
    images = images.clone().requires_grad_()
    out = model(direct_encode(images, T))
    weights = torch.arange(out.numel(), device=out.device).reshape(out.shape) % 5 - 2.0
    (out * weights).sum().backward()
    return out, images.grad, {name: p.grad for name, p in model.named_parameters()}


def test_model_names():
    assert MODELS == ("vgg16", "resnet19", "resnet18", "vggsnn", "digits_cnn", "digits_vgg", "spikformer",
                      "spikformer-4-384", "sdt3", "sdt3-10m")
    assert NEURONS == ("lif", "plif", "ilif")


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward(name):
    channels, size, n_lif, _, n_params = SPECS[name]
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=channels, T=2, surrogate="box", backend="torch")
    out, grad_images, grads = _loss_and_grads(model, 2 * torch.rand(2, channels, size, size), T=2)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    for pname, grad in grads.items():
        assert grad is not None and torch.isfinite(grad).all(), pname
    assert grad_images.abs().sum() > 0, "no gradient reaches the input through every layer"
    lifs = _lifs(model)
    assert len(lifs) == n_lif
    assert all(lif.T == 2 and lif.surrogate == "box" for lif in lifs)
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize("name", MODELS)
def test_build_model_passes_neuron_settings(name):
    channels, _, n_lif, n_residual, _ = SPECS[name]
    model = build_model(name, num_classes=7, in_channels=channels, T=3, surrogate="asy", tau=4.0, v_th=0.75,
                        beta_init=0.3, h=0.8, backend="torch")
    lifs = _lifs(model)
    assert len(lifs) == n_lif
    attention = _attention_neurons(model)
    assert len(attention) == (n_lif - 5) // 7 if name.startswith("spikformer") else not attention
    for lif in lifs:
        v_th = 0.375 if lif in attention else 0.75
        assert (lif.T, lif.surrogate, lif.tau, lif.v_th, lif.h, lif.backend) == (3, "asy", 4.0, v_th, 0.8, "torch")
        assert lif.decay == lif.input_scale == 0.25
        assert torch.equal(lif.beta, torch.full((3,), 0.3))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert convs[0].in_channels == channels
    assert [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].out_features == 7
    # every conv is followed by a tdBN normalising to this v_th, and there is no other BN
    assert len(bns) == len(convs) and all(isinstance(bn, TdBatchNorm2d) for bn in bns)
    for bn in bns:
        assert bn.v_th == 0.75
        assert torch.equal(bn.weight, torch.full_like(bn.weight, bn.alpha * 0.75))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert sum(bn.alpha == RESIDUAL_ALPHA for bn in bns) == n_residual
    assert sum(bn.alpha == 1.0 for bn in bns) == len(bns) - n_residual
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        assert block.residual[0][1].alpha == 1.0
        assert block.residual[2][1].alpha == RESIDUAL_ALPHA  # the BN right before the sum
        if not isinstance(block.shortcut, torch.nn.Identity):
            assert block.shortcut[1].alpha == RESIDUAL_ALPHA


@pytest.mark.parametrize("name", MODELS)
def test_plif_models(name):
    """neuron="plif": every spiking layer is an nn.PLIF with the model's settings, its leak starting at
    1/tau; A2SG finds them all."""
    channels, _, n_lif, _, n_params = SPECS[name]
    model = build_model(name, num_classes=10, in_channels=channels, T=3, surrogate="box", tau=4.0, v_th=0.75,
                        beta_init=0.3, h=0.8, backend="torch", neuron="plif")
    neurons = [m for m in model.modules() if isinstance(m, SearchedNeuron)]
    assert len(neurons) == n_lif and all(isinstance(m, PLIF) for m in neurons) and not _lifs(model)
    attention = _attention_neurons(model)
    for m in neurons:
        v_th = 0.375 if m in attention else 0.75
        assert (m.T, m.surrogate, m.init_tau, m.v_th, m.h, m.backend, m.decay_input) == (
            3, "box", 4.0, v_th, 0.8, "torch", True)
        assert torch.sigmoid(m.w).item() == pytest.approx(0.25)
        assert torch.equal(m.beta, torch.full((3,), 0.3))
    assert sum(p.numel() for p in model.parameters()) == n_params + n_lif  # one w per layer
    assert set(A2SG(model).layers.values()) == set(neurons)


def test_plif_model_trains_w():
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=2, backend="torch", neuron="plif")
    _, grad_images, grads = _loss_and_grads(model, 2 * torch.rand(4, 1, 8, 8), T=2)
    leaks = {name: grad for name, grad in grads.items() if name.endswith(".w")}
    assert len(leaks) == 2 and all(torch.isfinite(g) and g != 0 for g in leaks.values())
    assert grad_images.abs().sum() > 0


def test_tdbn_init_and_statistics_over_time_and_batch():
    bn = TdBatchNorm2d(4, alpha=RESIDUAL_ALPHA, v_th=0.5)
    assert torch.equal(bn.weight, torch.full((4,), RESIDUAL_ALPHA * 0.5))
    assert torch.equal(bn.bias, torch.zeros(4))
    x = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64) * torch.arange(1.0, 5.0).reshape(4, 1, 1) + 1
    got = TimeDistributed(bn.double())(x)
    mean = x.mean(dim=(0, 1, 3, 4), keepdim=True)
    var = x.var(dim=(0, 1, 3, 4), unbiased=False, keepdim=True)
    torch.testing.assert_close(got, RESIDUAL_ALPHA * 0.5 * (x - mean) / torch.sqrt(var + bn.eps))


def test_time_distributed_is_per_timestep():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(3, 2, 3, 6, 6)
    got = TimeDistributed(conv)(x)
    assert got.shape == (3, 2, 4, 6, 6)
    torch.testing.assert_close(got, torch.stack([conv(x_t) for x_t in x]))


def test_direct_encode():
    images = torch.randn(5, 3, 4, 4)
    x = direct_encode(images, 3)
    assert x.shape == (3, 5, 3, 4, 4)
    for x_t in x:
        assert torch.equal(x_t, images)
    for T in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="T must be an int >= 1"):
            direct_encode(images, T)


def test_bad_arguments():
    good = {"num_classes": 10, "in_channels": 1, "T": 2}
    with pytest.raises(ValueError, match=r"unknown model 'vgg11'; expected one of \('vgg16', 'resnet19'"):
        build_model("vgg11", **good)
    for neuron in ("izhikevich", "LIF", None):
        with pytest.raises(ValueError, match=r"neuron must be one of \('lif', 'plif', 'ilif'\), got"):
            build_model("digits_cnn", **good, neuron=neuron)
    with pytest.raises(ValueError, match="init_tau must be > 1"):
        build_model("digits_cnn", **good, neuron="plif", tau=1.0)
    for arg, value in (("T", 0), ("T", 2.0), ("num_classes", 0), ("num_classes", True), ("in_channels", 0)):
        with pytest.raises(ValueError, match=f"{arg} must be an int >= 1"):
            build_model("digits_cnn", **{**good, arg: value})
    for kwargs, match in (({"surrogate": "x"}, "surrogate"), ({"tau": 0.0}, "tau"), ({"backend": "x"}, "backend"),
                          ({"beta_init": -1.0}, "beta"), ({"surrogate": "asy", "h": 0.1}, "h must be")):
        with pytest.raises(ValueError, match=match):
            build_model("digits_cnn", **good, **kwargs)
    model = build_model("digits_cnn", **good, backend="torch")
    with pytest.raises(ValueError, match=r"expects input \[T=2, B, C, H, W\]"):
        model(torch.zeros(2, 1, 8, 8))  # static images, not encoded
    with pytest.raises(ValueError, match=r"expects input \[T=2, B, C, H, W\]"):
        model(direct_encode(torch.zeros(2, 1, 8, 8), 3))


def test_accepted_image_sizes():
    """The VGGs take the sizes whose poolings leave their natural map; the ResNets, Spikformers and
    sdt3s take any size."""
    accepted = {name: [s for s in range(1, 100) if accepts_image_size(name, s)] for name in MODELS}
    assert accepted == {"vgg16": list(range(32, 64)), "resnet19": list(range(1, 100)),
                        "resnet18": list(range(1, 100)), "vggsnn": list(range(48, 64)), "digits_cnn": [8, 9],
                        "digits_vgg": [8, 9, 10, 11], "spikformer": list(range(1, 100)),
                        "spikformer-4-384": list(range(1, 100)), "sdt3": list(range(1, 100)),
                        "sdt3-10m": list(range(1, 100))}
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=1, backend="torch")
    assert model(direct_encode(torch.rand(2, 1, 9, 9), 1)).shape == (2, 10)  # the edge of what it takes
    with pytest.raises(RuntimeError):
        model(direct_encode(torch.rand(2, 1, 10, 10), 1))  # 32x5x5 features for a 32x4x4 classifier
    with pytest.raises(ValueError, match="unknown model 'alexnet'"):
        accepts_image_size("alexnet", 32)
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        accepts_image_size("vgg16", 0)


def test_digits_cnn_triton_matches_torch():
    """The same weights with the Triton kernels (the interpreter without CUDA) and the eager backend."""
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, "in_channels": 1, "T": 2, "surrogate": "asy"}
    reference = build_model("digits_cnn", **kwargs, backend="torch").to(KERNEL_DEVICE)
    model = build_model("digits_cnn", **kwargs, backend="triton").to(KERNEL_DEVICE)
    model.load_state_dict(reference.state_dict())
    images = 2 * torch.rand(2, 1, 8, 8, device=KERNEL_DEVICE)
    out, grad_images, grads = _loss_and_grads(model, images, T=2)
    out_ref, grad_images_ref, grads_ref = _loss_and_grads(reference, images, T=2)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    torch.testing.assert_close(grad_images, grad_images_ref)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, grads_ref[name], msg=lambda m: f"{name}: {m}")
    assert all(grad.abs().sum() > 0 for grad in grads.values())


def _small_spikformer(neuron="lif", T=2):
    torch.manual_seed(0)
    return Spikformer(10, 1, NeuronConfig(T, "box", backend="torch", neuron=neuron), depth=2, dim=16, heads=2, pools=1)


def test_spikformer_attention_is_q_kt_v_without_softmax():
    """The attention neuron's input is (Q Kᵀ) V · 0.125 per head, computed in Spikformer's order from the
    Q, K, V spikes, and it fires at half the threshold."""
    model = _small_spikformer()
    block = model.features[1].attention
    captured = {}

    def keep(name):
        def hook(module, inputs, output):
            captured[name] = inputs[0] if name == "input" else output
        return hook

    handles = [getattr(block, n).register_forward_hook(keep(n)) for n in ("q", "k", "v")]
    handles.append(block.attention.register_forward_hook(keep("input")))
    model(direct_encode(2 * torch.rand(3, 1, 8, 8), 2))
    for handle in handles:
        handle.remove()
    T, B, D, H, W = captured["q"].shape
    q, k, v = (captured[n].reshape(T, B, 2, D // 2, H * W).transpose(-1, -2) for n in ("q", "k", "v"))  # [.., N, d]
    for spikes in (q, k, v):
        assert ((spikes == 0) | (spikes == 1)).all() and spikes.sum() > 0
    want = ((q @ k.transpose(-1, -2)) @ v * 0.125).transpose(-1, -2).reshape(T, B, D, H, W)
    assert torch.equal(captured["input"], want)
    assert captured["input"].max() > 0
    assert block.attention.v_th == 0.5 and block.q[1].v_th == 1.0


@pytest.mark.parametrize("neuron", NEURONS)
def test_spikformer_every_layer_is_searched(neuron):
    """A2SG finds every spiking layer (SPS, Q/K/V, attention, projection, MLP); an armed step searches
    each at every timestep and moves the widths; every gradient is finite."""
    model = _small_spikformer(neuron)
    neurons = [m for m in model.modules() if isinstance(m, SearchedNeuron)]
    assert len(neurons) == 5 + 2 * 7
    a2 = A2SG(model, strategy="grid", n_obs=4, n_eval=8)
    assert set(a2.layers.values()) == set(neurons)
    a2.begin_epoch(0)
    out, grad_images, grads = _loss_and_grads(model, 2 * torch.rand(4, 1, 8, 8), T=2)
    assert out.shape == (4, 10)
    assert all(torch.isfinite(g).all() for g in grads.values()) and grad_images.abs().sum() > 0
    assert sorted((row["layer"], row["t"], row["level"]) for row in a2.history) == sorted(
        (name, t, level) for name, m in a2.layers.items() for t in range(2)
        for level in (range(1, m.levels + 1) if neuron == "ilif" else [None]))
    assert any(not torch.equal(m.beta, torch.full_like(m.beta, 0.5)) for m in neurons)


def test_spikformer_bad_arguments():
    neuron = NeuronConfig(2, backend="torch")
    for kwargs, match in (({"dim": 20}, "dim must be a multiple of 8 and of heads"),
                          ({"heads": 3}, "dim must be a multiple of 8 and of heads"),
                          ({"depth": 0}, "depth must be an int >= 1"), ({"heads": 2.0}, "heads must be an int"),
                          ({"mlp_ratio": 0}, "mlp_ratio must be"), ({"pools": 5}, r"pools must be an int in \[0, 4\]")):
        with pytest.raises(ValueError, match=match):
            Spikformer(10, 1, neuron, **{"depth": 1, "dim": 16, "heads": 2, **kwargs})
