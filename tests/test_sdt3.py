"""sdt3, the spike-driven transformer after E-SpikeFormer (docs/models.md)."""

import pytest
import torch

from a2sg_triton import A2SG
from a2sg_triton.models import NeuronConfig, build_model
from a2sg_triton.models.sdt3 import SpikeDrivenAttention
from a2sg_triton.nn import ILIF, LIF, PLIF

# the digits sdt3's neurons: a conv block has 3 (separable conv) + 2 (MLP), a transformer block
# 3 + 5 (attention: input, Q, K, V, output) + 2; stages 2 and 3 open with one, the classifier has one
DIGITS_NEURONS = 5 + (1 + 5) + (1 + 10) + 1


def digits_model(neuron="ilif", T=1, backend="torch"):
    return build_model("sdt3", num_classes=10, in_channels=1, T=T, surrogate="box", tau=4.0, neuron=neuron,
                       backend=backend, memory_saving=False)


@pytest.mark.parametrize("neuron, layer_type", [("ilif", ILIF), ("lif", LIF), ("plif", PLIF)])
def test_digits_sdt3_runs_with_every_neuron(neuron, layer_type):
    torch.manual_seed(0)
    model = digits_model(neuron, T=2)
    out = model(torch.randn(2, 3, 1, 8, 8))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    layers = [m for m in model.modules() if isinstance(m, (LIF, PLIF, ILIF))]
    assert len(layers) == DIGITS_NEURONS and all(type(m) is layer_type for m in layers)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ilif_sdt3_takes_the_levels_and_decay_from_the_config():
    model = build_model("sdt3", num_classes=10, in_channels=1, T=1, tau=4.0, neuron="ilif", levels=2,
                        surrogate="box", backend="torch")
    layer = next(m for m in model.modules() if isinstance(m, ILIF))
    assert layer.levels == 2 and layer.decay == 0.25 and layer.beta.shape == (1, 2)
    attention = next(m for m in model.modules() if isinstance(m, SpikeDrivenAttention))
    assert attention.levels == 2


def test_sdt3_10m_has_e_spikeformers_size():
    """E-SpikeFormer's 10M model (Table 3's 10.0M): widths 48, 96, 192, 240, 6 + 2 transformer blocks."""
    model = build_model("sdt3-10m", num_classes=1000, in_channels=3, T=1, neuron="ilif", surrogate="box",
                        backend="torch")
    params = sum(p.numel() for p in model.parameters())
    assert 9.9e6 < params < 10.1e6


def test_an_armed_step_searches_every_level_of_every_layer():
    torch.manual_seed(0)
    model = digits_model()
    a2 = A2SG(model, n_obs=12, n_eval=20)
    a2.begin_epoch(0)
    x, y = torch.rand(1, 32, 1, 8, 8) * 4, torch.arange(32) % 10
    torch.nn.functional.cross_entropy(model(x), y).backward()
    rows = a2.history
    assert len(rows) == DIGITS_NEURONS * 4
    assert [r["level"] for r in rows[:4]] == [4, 3, 2, 1] and rows[0]["metric"] == "sgv"
    assert all(r["metric"] == "tgc" for r in rows[1:4])
    assert len({r["layer"] for r in rows}) == DIGITS_NEURONS
    assert any(not torch.equal(m.beta, torch.full_like(m.beta, 0.5)) for m in model.modules() if isinstance(m, ILIF))


@pytest.mark.parametrize("neuron", ["lif", "ilif"])
def test_attention_is_the_softmax_free_product_per_head(neuron):
    """(Q Kᵀ) V per head with the scale, written out with einsum, equals the module's Q (Kᵀ V)."""
    torch.manual_seed(0)
    config = NeuronConfig(1, "box", neuron=neuron, backend="torch", levels=3)
    attention = SpikeDrivenAttention(8, 2, config, levels=3 if neuron == "ilif" else 1, v_ratio=2).eval()
    x = 2 * torch.randn(1, 4, 8, 3, 3)
    got = attention(x)

    spikes = attention.input_neuron(x)
    q, k, v = (neuron_(conv(spikes)) / attention.levels for conv, neuron_ in
               ((attention.q, attention.q_neuron), (attention.k, attention.k_neuron),
                (attention.v, attention.v_neuron)))
    # [T, B, C, H, W] -> [T, B, heads, tokens, C/heads]
    q, k, v = (z.reshape(1, 4, 2, z.shape[2] // 2, 9).transpose(-1, -2) for z in (q, k, v))
    scores = torch.einsum("tbhnd,tbhmd->tbhnm", q, k)
    mixed = torch.einsum("tbhnm,tbhme->tbhne", scores, v) * (2 * (8 // 2) ** -0.5)
    want = attention.proj(attention.attention_neuron(mixed.transpose(-1, -2).reshape(1, 4, 16, 3, 3)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert q.max() <= 1 and q.min() >= 0


def test_bad_heads_are_refused():
    config = NeuronConfig(1, "box", backend="torch")
    with pytest.raises(ValueError, match="heads must be an int >= 1 that divides the width 8"):
        SpikeDrivenAttention(8, 3, config)
