"""Activity analysis (a2sg_triton.analysis.activity): spike counts, energy, membrane statistics, weight
statistics, spike deletion and t-SNE, on hand-countable models (LIF and I-LIF) and on digits_cnn."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn
from torch.utils.data import DataLoader, TensorDataset

import a2sg_triton
from a2sg_triton.analysis import activity
from a2sg_triton.ops.ilif import ilif_membrane
from a2sg_triton.models import build_model, direct_encode
from a2sg_triton.nn import ILIF, LIF, PLIF

T = 4


class Tiny(nn.Module):
    """Linear(4 -> 3) with weight [I | 0] (neuron i gets input i, input 3 is ignored), LIF (tau = 2,
    soft reset, v_th = 1) or another neuron layer, then Linear(3 -> 2); logits = mean over T."""

    def __init__(self, T, neuron=None):
        super().__init__()
        self.fc1 = nn.Linear(4, 3, bias=False)
        self.lif = LIF(T, backend="torch") if neuron is None else neuron
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(3, 4))
            self.fc2.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))

    def forward(self, x):
        return self.fc2(self.lif(self.fc1(x))).mean(0)


# A constant input c gives, with u[t] = 0.5 v[t-1] + 0.5 c and a soft reset (worked out by hand):
#   c = 2:     u = 1, 1, 1, 1                         spikes at t = 0, 1, 2, 3 (u = v_th fires)
#   c = 1.5:   u = .75, 1.125, .8125, 1.15625          spikes at t = 1, 3
#   c = 0:     u = 0, 0, 0, 0                         no spike
#   c = 1.875: u = .9375, 1.40625, 1.140625, 1.0078125 spikes at t = 1, 2, 3
#   c = 1:     u = .5, .75, .875, .9375               no spike
#   c = 4:     u = 2, 2.5, 2.75, 2.875                spikes at t = 0, 1, 2, 3
HAND_X = torch.tensor([[2.0, 1.5, 0.0, 5.0], [1.875, 1.0, 4.0, -3.0]])
HAND_Y = torch.tensor([0, 1])
HAND_U = [1, 1, 1, 1, .75, 1.125, .8125, 1.15625, 0, 0, 0, 0,
          .9375, 1.40625, 1.140625, 1.0078125, .5, .75, .875, .9375, 2, 2.5, 2.75, 2.875]

# The same model with I-LIF (T = 2, D = 4, decay 1/4, input_scale 1, v_th = 1): u[0] = c,
# q = round(clip(u, 0, 4)) (half to even), v = u - q, u[1] = v / 4 + c (worked out by hand):
#   c = 2:     u = 2, 2             counts 2, 2
#   c = 1.5:   u = 1.5, 1.375       counts 2 (1.5 rounds to even), 1
#   c = 0:     u = 0, 0             counts 0, 0
#   c = 5:     u = 5, 5.25          counts 4, 4 (clipped: both u > 4.5, saturated)
#   c = .375:  u = .375, .46875     counts 0, 0 (below the first level threshold 1/2)
#   c = 3.25:  u = 3.25, 3.3125     counts 3, 3
ILIF_T = 2
ILIF_X = torch.tensor([[2.0, 1.5, 0.0, 5.0], [5.0, 0.375, 3.25, -3.0]])
ILIF_U = [2, 2, 1.5, 1.375, 0, 0, 5, 5.25, .375, .46875, 3.25, 3.3125]


def tiny_ilif():
    return Tiny(ILIF_T, ILIF(ILIF_T, levels=4, backend="torch"))


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """sklearn's t-SNE runs an OpenMP loop at each of its 1000 iterations; on a busy 2-core machine
    two threads wait on each other at every barrier (11 ms per iteration measured, 35 s per test).
    One thread takes 0.1 s for these few samples."""
    with threadpool_limits(1, user_api="openmp"):
        yield


def _loader(x, y, batch_size):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.fixture
def digits():
    """digits_cnn whose BN running statistics are those of its data, so both LIF layers fire in eval."""
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=T, backend="torch")
    x, y = torch.rand(48, 1, 8, 8) * 4, torch.randint(0, 10, (48,))
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.momentum = None  # cumulative average: one batch sets the running statistics
    with torch.no_grad():
        model(direct_encode(x, T))
    return model, _loader(x, y, 16)


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_model_input():
    static, seq = torch.rand(5, 1, 8, 8), torch.rand(5, T, 2, 8, 8)
    assert torch.equal(activity.model_input(static, T), direct_encode(static, T))
    assert activity.model_input(seq, T).shape == (T, 5, 2, 8, 8)
    assert torch.equal(activity.model_input(seq, T)[2, 3], seq[3, 2])


def test_spike_statistics_hand_count():
    stats = activity.spike_statistics(Tiny(T), _loader(HAND_X, HAND_Y, 1), T, "cpu")
    layer = stats["layers"]["lif"]
    # sample A: neuron counts 4, 2, 0; sample B: 3, 0, 4 -> 13 spikes over 2 samples
    assert stats["samples"] == 2 and layer["neurons"] == 3
    assert layer["spikes_per_sample"] == 6.5 == stats["spikes_per_sample"]
    assert layer["spikes_per_sample_per_t"] == [1.0, 2.0, 1.5, 2.0]
    assert layer["firing_rate"] == pytest.approx(13 / 24)
    assert layer["spike_count_distribution"] == pytest.approx([2 / 6, 0, 1 / 6, 1 / 6, 2 / 6])
    assert layer["step_count_distribution"] == pytest.approx([11 / 24, 13 / 24])
    assert (layer["neuron"], layer["levels"]) == ("LIF", 1) and "0/1" in layer["firing_rate_definition"]
    assert stats["input_rates"]["fc2"] == pytest.approx(13 / 24)  # fc2's input is the LIF's spikes
    json.dumps(stats)


def test_spike_statistics_ilif_hand_count():
    """Counts over T reach T·D = 8, not T: the distribution has T·D + 1 entries and the rate is the
    mean count per neuron and step (a count c is c spikes), here above 1."""
    stats = activity.spike_statistics(tiny_ilif(), _loader(ILIF_X, HAND_Y, 1), ILIF_T, "cpu")
    layer = stats["layers"]["lif"]
    # sample A: neuron counts over T 4, 3, 0; sample B: 8, 0, 6 -> 21 spikes over 2 samples
    assert (layer["neuron"], layer["levels"], layer["neurons"]) == ("ILIF", 4, 3)
    assert layer["spikes_per_sample"] == 10.5 == stats["spikes_per_sample"]
    assert layer["spikes_per_sample_per_t"] == [5.5, 5.0]
    assert layer["firing_rate"] == pytest.approx(21 / 12) == stats["firing_rate"]
    assert "mean count (0 … 4)" in layer["firing_rate_definition"]
    assert layer["spike_count_distribution"] == pytest.approx([2 / 6, 0, 0, 1 / 6, 1 / 6, 0, 1 / 6, 0, 1 / 6])
    # per (sample, neuron, step): counts 2 2 0 | 2 1 0 | 4 0 3 | 4 0 3
    assert layer["step_count_distribution"] == pytest.approx([4 / 12, 1 / 12, 3 / 12, 2 / 12, 2 / 12])
    assert stats["input_rates"]["fc2"] == pytest.approx(21 / 12)
    json.dumps(stats)


def test_energy_counts_every_spike_of_an_ilif_count():
    """A count c reaching a layer is c accumulates per fan-out (E-SpikeFormer's reading)."""
    model = tiny_ilif()
    stats = activity.spike_statistics(model, _loader(ILIF_X, HAND_Y, 2), ILIF_T, "cpu")
    result = activity.energy(model, stats, (4,))
    fc1, fc2 = result["layers"]["fc1"], result["layers"]["fc2"]
    assert fc1["op"] == "MAC" and fc1["ops"] == ILIF_T * 12
    assert fc2["op"] == "AC" and fc2["input_rate"] == pytest.approx(21 / 12)
    assert fc2["ops"] == pytest.approx(10.5 * 2)  # 10.5 spikes per sample, each reaching fc2's 2 outputs
    assert result["energy_mj"] == pytest.approx((4.6 * 24 + 0.9 * 21) * 1e-9)
    assert "an I-LIF count c is c spikes" in result["convention"]
    assert "I-LIF" not in activity.energy(Tiny(T), activity.spike_statistics(Tiny(T), _loader(HAND_X, HAND_Y, 2), T,
                                                                              "cpu"), (4,))["convention"]


def test_spike_statistics_digits(digits):
    model, loader = digits
    stats = activity.spike_statistics(model, loader, T, "cpu", max_batches=2)
    assert stats["samples"] == 32 and list(stats["layers"]) == ["features.0.1", "features.2.1"]
    for layer in stats["layers"].values():
        assert layer["spikes_per_sample"] > 0
        assert sum(layer["spikes_per_sample_per_t"]) == pytest.approx(layer["spikes_per_sample"])
        assert sum(layer["spike_count_distribution"]) == pytest.approx(1.0)
        mean_count = sum(k * p for k, p in enumerate(layer["spike_count_distribution"]))
        assert mean_count * layer["neurons"] == pytest.approx(layer["spikes_per_sample"])
    assert stats["layers"]["features.0.1"]["neurons"] == 16 * 8 * 8
    # average pooling keeps the mean: the second conv's input rate is the first LIF's firing rate
    assert stats["input_rates"]["features.2.0.0"] == pytest.approx(stats["layers"]["features.0.1"]["firing_rate"])
    json.dumps(stats)


def test_energy_hand_count():
    model = Tiny(T)
    stats = activity.spike_statistics(model, _loader(HAND_X, HAND_Y, 2), T, "cpu")
    result = activity.energy(model, stats, (4,))
    fc1, fc2 = result["layers"]["fc1"], result["layers"]["fc2"]
    assert fc1["op"] == "MAC" and fc1["macs_per_timestep"] == 12 and fc1["ops"] == 4 * 12
    # 6.5 spikes per sample, each reaching fc2's 2 outputs
    assert fc2["op"] == "AC" and fc2["macs_per_timestep"] == 6 and fc2["ops"] == pytest.approx(6.5 * 2)
    assert result["flops"] == 48 and result["sops"] == pytest.approx(13)
    assert result["energy_mj"] == pytest.approx((4.6 * 48 + 0.9 * 13) * 1e-9)
    json.dumps(result)


def test_energy_first_layer_once():
    """Under direct encoding the first layer sees one image T times: "once" charges its MACs once."""
    model = Tiny(T)
    stats = activity.spike_statistics(model, _loader(HAND_X, HAND_Y, 2), T, "cpu")
    every, once = (activity.energy(model, stats, (4,), first_layer=choice) for choice in ("every_step", "once"))
    assert every["flops"] == 48 and once["flops"] == 12 and once["sops"] == every["sops"]
    assert once["energy_mj"] == pytest.approx((4.6 * 12 + 0.9 * 13) * 1e-9)
    assert "at every one of the T steps" in every["convention"] and "once" in once["convention"]
    assert (every["first_layer"], once["first_layer"]) == ("every_step", "once")
    with pytest.raises(ValueError, match="first_layer must be one of"):
        activity.energy(model, stats, (4,), first_layer="sometimes")
    with pytest.raises(ValueError, match="needs static input"):
        activity.energy(model, stats, (T, 2, 8, 8), first_layer="once")


def test_energy_digits_macs(digits):
    model, loader = digits
    stats = activity.spike_statistics(model, loader, T, "cpu", max_batches=1)
    result = activity.energy(model, stats, (1, 8, 8))
    layers = result["layers"]
    assert list(layers) == ["features.0.0.0", "features.2.0.0", "classifier.1"]  # execution order
    assert [layer["macs_per_timestep"] for layer in layers.values()] == [16 * 64 * 9, 32 * 16 * 16 * 9, 512 * 10]
    assert [layer["op"] for layer in layers.values()] == ["MAC", "AC", "AC"]
    rate = stats["layers"]["features.2.1"]["firing_rate"]
    assert layers["classifier.1"]["ops"] == pytest.approx(rate * T * 5120)
    assert result["energy_mj"] == pytest.approx(sum(layer["energy_mj"] for layer in layers.values()))


@pytest.mark.parametrize("neuron", [dict(), dict(reset="hard", v_reset=-0.2, decay=0.7, input_scale=1.0, v_th=0.8)])
def test_membrane_potentials_reproduce_spikes(neuron):
    lif = LIF(T, backend="torch", **neuron)
    x = torch.randn(T, 64, 5, generator=torch.Generator().manual_seed(1)) * 2
    u, spikes = activity.membrane_potentials(lif, x), lif(x)
    assert u.shape == x.shape and spikes.sum() > 0
    assert torch.equal(spikes.bool(), u >= lif.v_th)


def test_membrane_potentials_reproduce_plif_spikes():
    plif = PLIF(T, init_tau=3.0, v_th=0.8, reset="hard", backend="torch")
    with torch.no_grad():
        plif.w.fill_(0.3)  # k = sigmoid(0.3), not the initial 1/3
    x = torch.randn(T, 64, 5, generator=torch.Generator().manual_seed(1)) * 2
    u, spikes = activity.membrane_potentials(plif, x), plif(x)
    assert u.shape == x.shape and spikes.sum() > 0
    assert torch.equal(spikes.bool(), u >= plif.v_th)
    k = torch.sigmoid(torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(u[0], k * x[0].double())  # u[0] = k x[0] from v = 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("neuron", [dict(), dict(levels=1, v_th=0.7, decay=0.6, input_scale=0.8),
                                    dict(levels=3, v_th=0.7, decay=0.9, input_scale=1.3)])
def test_ilif_membrane_reproduces_the_op_counts(neuron, dtype):
    """ILIF.membrane is u before the reset, from the op's own forward: round(clip(u / v_th, 0, D)) are
    exactly ilif_multistep's counts, and u follows the recurrence u[t] = decay (u[t-1] - v_th q[t-1])
    + input_scale x[t]; membrane_potentials returns it in float64."""
    ilif = ILIF(T, backend="torch", **neuron)
    x = (torch.randn(T, 64, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1).to(dtype)
    u, counts = ilif.membrane(x), ilif(x)
    assert u.shape == x.shape and u.dtype == dtype and counts.max() == ilif.levels and counts.min() == 0
    assert torch.equal(torch.round(torch.clamp(u / ilif.v_th, 0, ilif.levels)), counts)
    op = a2sg_triton.ilif_multistep(x, 0.5, levels=ilif.levels, decay=ilif.decay, input_scale=ilif.input_scale,
                                    v_th=ilif.v_th, backend="torch")
    assert torch.equal(op, counts)
    u64, q, x64 = u.double(), counts.double(), x.double()
    step = {} if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)  # one fp32 step's rounding
    torch.testing.assert_close(u64[0], ilif.input_scale * x64[0], **step)
    for t in range(1, T):
        torch.testing.assert_close(u64[t], ilif.decay * (u64[t - 1] - ilif.v_th * q[t - 1]) + ilif.input_scale * x64[t],
                                   **step)
    assert torch.equal(activity.membrane_potentials(ilif, x), u64)


def test_ilif_membrane_from_a_state_and_its_checks():
    x = torch.randn(T, 30, generator=torch.Generator().manual_seed(2)) * 3
    v0 = torch.randn(30, generator=torch.Generator().manual_seed(3))
    u = ilif_membrane(x, levels=2, v0=v0, backend="torch")
    counts = a2sg_triton.ilif_multistep(x, 0.5, levels=2, v0=v0, backend="torch")
    assert torch.equal(torch.round(torch.clamp(u, 0, 2)), counts)
    torch.testing.assert_close(u[0], 0.25 * v0 + x[0])
    with pytest.raises(TypeError, match="levels \\(the largest count\\) must be an int"):
        ilif_membrane(x, levels=2.0)
    with pytest.raises(ValueError, match="v_th must be > 0"):
        ilif_membrane(x, v_th=0.0)


def test_statistics_count_every_plif_layer():
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=T, backend="torch", neuron="plif")
    loader = _loader(torch.rand(8, 1, 8, 8) * 4, torch.randint(0, 10, (8,)), 4)
    assert list(activity.spike_statistics(model, loader, T, "cpu")["layers"]) == ["features.0.1", "features.2.1"]
    assert list(activity.membrane_statistics(model, loader, T, "cpu")) == ["features.0.1", "features.2.1"]


def test_membrane_potentials_in_digits(digits):
    model, loader = digits
    lif = model.features[2][1]
    captured = {}
    lif.register_forward_pre_hook(lambda m, inputs: captured.update(x=inputs[0]))
    lif.register_forward_hook(lambda m, inputs, out: captured.update(s=out))
    with torch.no_grad():
        model(direct_encode(next(iter(loader))[0], T))
    assert captured["s"].sum() > 0
    assert torch.equal(captured["s"].bool(), activity.membrane_potentials(lif, captured["x"]) >= lif.v_th)


def test_membrane_statistics_hand_values():
    model = Tiny(T)
    model.lif.beta.copy_(torch.tensor([0.5, 0.4, 0.3, 0.2]))
    stats = activity.membrane_statistics(model, _loader(HAND_X, HAND_Y, 1), T, "cpu")["lif"]
    mu, sigma = np.mean(HAND_U), np.std(HAND_U)
    assert stats["mu_u"] == pytest.approx(mu) and stats["sigma_u"] == pytest.approx(sigma)
    assert stats["rmd"] == pytest.approx((1 - mu) / sigma)
    assert stats["mu_u_per_t"] == pytest.approx(np.reshape(HAND_U, (6, T)).mean(0))
    assert stats["beta"] == pytest.approx([0.5, 0.4, 0.3, 0.2])
    assert stats["theorem2"]["beta"] == pytest.approx(0.35)
    assert not stats["theorem2"]["holds"]  # mu_u ≈ 1.06 lies above the window's left edge a = 0.65
    json.dumps(stats)


def test_membrane_statistics_ilif_hand_values():
    """I-LIF: μ_u and σ_u of u before the reset, RMD against the first level threshold v_th/2 (where the
    count leaves 0), the saturated share u > (D + ½) v_th, and Theorem 2 marked not applicable."""
    model = tiny_ilif()
    widths = torch.tensor([[0.5, 0.4, 0.3, 0.2], [0.6, 0.5, 0.5, 0.5]])
    model.lif.beta.copy_(widths)
    stats = activity.membrane_statistics(model, _loader(ILIF_X, HAND_Y, 1), ILIF_T, "cpu")["lif"]
    mu, sigma = np.mean(ILIF_U), np.std(ILIF_U)
    assert stats["neuron"] == "ILIF" and stats["levels"] == 4
    assert stats["mu_u"] == pytest.approx(mu) and stats["sigma_u"] == pytest.approx(sigma)
    assert stats["rmd_threshold"] == 0.5 and stats["rmd"] == pytest.approx((0.5 - mu) / sigma)
    assert stats["level_thresholds"] == [0.5, 1.5, 2.5, 3.5]
    assert stats["mu_u_per_t"] == pytest.approx(np.reshape(ILIF_U, (6, ILIF_T)).mean(0))
    assert stats["sigma_u_per_t"] == pytest.approx(np.reshape(ILIF_U, (6, ILIF_T)).std(0))
    assert stats["saturated_fraction"] == pytest.approx(2 / 12)  # c = 5: u = 5 and 5.25 > 4.5
    assert stats["beta"] == widths.tolist()  # the [T, D] buffer
    assert stats["theorem2"] is None and stats["theorem2_per_t"] is None
    json.dumps(stats)


def test_membrane_statistics_theorem2_condition():
    # T = 2, inputs -1, 0, 1 and 1, 0, -1: u[0] = 0.5 c, u[1] = 0.75 c, no spikes, so mu_u = 0 and
    # sigma_u² = (4·0.25 + 4·0.5625) / 12 = 13/48.
    model = Tiny(2)
    model.lif.beta.copy_(torch.tensor([0.5, 0.05]))
    x = torch.tensor([[-1.0, 0.0, 1.0, 0.0], [1.0, 0.0, -1.0, 0.0]])
    stats = activity.membrane_statistics(model, _loader(x, HAND_Y, 2), 2, "cpu")["lif"]
    assert stats["mu_u"] == pytest.approx(0, abs=1e-12) and stats["sigma_u"] ** 2 == pytest.approx(13 / 48)
    assert stats["rmd"] == pytest.approx(1 / math.sqrt(13 / 48))
    assert stats["sigma_u_per_t"] == pytest.approx([math.sqrt(1 / 6), math.sqrt(2.25 / 6)])
    mean_beta = stats["theorem2"]  # beta 0.275: L = 0.55, a = kappa = 0.725, L·kappa = 0.39875 > 13/48
    assert mean_beta["L"] == pytest.approx(0.55) and mean_beta["kappa"] == pytest.approx(0.725)
    assert mean_beta["L_kappa"] == pytest.approx(0.39875) and mean_beta["holds"]
    # beta 0.5: L·kappa = 0.5 > 13/48; beta 0.05: L·kappa = 0.1·0.95 = 0.095 < 13/48
    assert [c["holds"] for c in stats["theorem2_per_t"]] == [True, False]
    assert stats["theorem2_per_t"][1]["L_kappa"] == pytest.approx(0.095)


def test_weight_statistics_match_numpy(digits):
    model, _ = digits
    stats = activity.weight_statistics(model, bins=20)
    assert list(stats) == ["features.0.0.0", "features.2.0.0", "classifier.1"]
    for name, w in stats.items():
        weight = model.get_submodule(name).weight.detach().double().numpy().ravel()
        counts, edges = np.histogram(weight, bins=20)
        assert w["counts"] == counts.tolist() and w["edges"] == pytest.approx(edges)
        assert (w["mean"], w["std"], w["min"], w["max"]) == pytest.approx(
            (weight.mean(), weight.std(), weight.min(), weight.max()))
        assert w["count"] == weight.size
    json.dumps(stats)


def test_spike_deletion(digits):
    model, loader = digits
    with torch.no_grad():
        model.eval()
        plain = sum(int((model(direct_encode(x, T)).argmax(1) == y).sum()) for x, y in loader) / 48
    stats = activity.spike_statistics(model, loader, T, "cpu")
    none, some, every = activity.spike_deletion(model, loader, T, "cpu", fractions=(0.0, 0.3, 1.0), seed=3)
    assert none["accuracy"] == plain and none["samples"] == 48
    assert none["spikes_per_sample"] == pytest.approx(stats["spikes_per_sample"])
    assert none["spikes_per_sample"] == none["emitted_spikes_per_sample"]
    first = some["layers"]["features.0.1"]  # the first layer's input is unchanged: it emits as without noise
    assert first["emitted_spikes_per_sample"] == pytest.approx(stats["layers"]["features.0.1"]["spikes_per_sample"])
    assert 0 < first["spikes_per_sample"] < first["emitted_spikes_per_sample"]
    assert every["spikes_per_sample"] == 0
    assert all(layer["spikes_per_sample"] == 0 for layer in every["layers"].values())
    assert activity.spike_deletion(model, loader, T, "cpu", fractions=(0.3,), seed=3) == [some]  # seeded
    json.dumps([none, some, every])


def test_spike_deletion_removes_single_spikes_of_an_ilif_count():
    """Every neuron emits count 4 at both steps; deleting a fraction p drops each of the 4 spikes on its
    own, so the counts that go on are Binomial(4, 1 - p): every value 0 … 4 occurs, not only 0 and 4."""
    torch.manual_seed(0)
    fc1, ilif, fc2 = nn.Linear(1, 500, bias=False), ILIF(ILIF_T, levels=4, backend="torch"), nn.Linear(500, 2, bias=False)
    with torch.no_grad():
        fc1.weight.fill_(1.0)
    model = nn.Sequential(fc1, ilif, fc2)
    model.forward = lambda x: fc2(ilif(fc1(x))).mean(0)
    passed = []
    fc2.register_forward_pre_hook(lambda m, inputs: passed.append(inputs[0]))
    loader = _loader(torch.full((8, 1), 6.0), torch.zeros(8, dtype=torch.long), 4)
    none, some, every = activity.spike_deletion(model, loader, ILIF_T, "cpu", fractions=(0.0, 0.25, 1.0), seed=5)
    emitted = 4 * ILIF_T * 500  # per sample: 500 neurons at count 4 at both steps
    assert none["spikes_per_sample"] == none["emitted_spikes_per_sample"] == emitted
    assert every["spikes_per_sample"] == 0 and every["emitted_spikes_per_sample"] == emitted
    kept = torch.cat([p.flatten() for p in passed[2:4]])  # the 8000 counts the p = 0.25 run passed on
    frequencies = torch.bincount(kept.long(), minlength=5).double() / kept.numel()
    binomial = torch.tensor([math.comb(4, k) * 0.75 ** k * 0.25 ** (4 - k) for k in range(5)], dtype=torch.float64)
    assert kept.numel() == 8000 and (frequencies - binomial).abs().max() < 0.02  # < 4 standard errors (seeded)
    assert some["spikes_per_sample"] == pytest.approx(float(kept.sum()) / 8)
    assert some["spikes_per_sample"] == pytest.approx(0.75 * emitted, rel=0.02)
    assert activity.spike_deletion(model, loader, ILIF_T, "cpu", fractions=(0.25,), seed=5) == [some]  # seeded


def test_spike_deletion_draws_one_uniform_per_binary_spike():
    """Binary layers keep the draws of before I-LIF: spikes · (U >= p), one uniform per element from
    the seeded generator, so earlier results reproduce."""
    model = Tiny(T)
    passed = []
    model.fc2.register_forward_pre_hook(lambda m, inputs: passed.append(inputs[0]))
    activity.spike_deletion(model, _loader(HAND_X, HAND_Y, 2), T, "cpu", fractions=(0.5,), seed=7)
    with torch.no_grad():
        spikes = model.lif(model.fc1(direct_encode(HAND_X, T)))
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(passed[0], spikes * (torch.rand(spikes.shape, generator=generator) >= 0.5))


def test_tsne_features(digits):
    model, loader = digits
    result = activity.tsne_features(model, loader, T, "cpu", "features.0.1", [0, 3], n_samples=40, seed=1)
    assert result["layer"] == "features.0.1" and len(result["labels"]) == 40
    assert [step["t"] for step in result["timesteps"]] == [0, 3]
    assert all(np.asarray(step["points"]).shape == (40, 2) for step in result["timesteps"])
    again = activity.tsne_features(model, loader, T, "cpu", "features.0.1", [3], n_samples=40, seed=1)
    assert again["timesteps"] == result["timesteps"][1:] and again["labels"] == result["labels"]  # deterministic
    folded = activity.tsne_features(model, loader, T, "cpu", "features.0.0", [1], n_samples=20)  # conv-BN output
    assert np.asarray(folded["timesteps"][0]["points"]).shape == (20, 2)
    json.dumps(result)


def test_tsne_rejects_bad_arguments(digits):
    model, loader = digits
    with pytest.raises(ValueError, match="no module"):
        activity.tsne_features(model, loader, T, "cpu", "nope", [0])
    with pytest.raises(ValueError, match="timesteps"):
        activity.tsne_features(model, loader, T, "cpu", "features.0.1", [T])
    with pytest.raises(ValueError, match=r"\[T=4, B"):  # the conv inside the time fold sees [T*B, ...]
        activity.tsne_features(model, loader, T, "cpu", "features.0.0.0", [0])
    assert _no_hooks(model)


def test_hooks_removed_and_training_flags_restored(digits):
    model, loader = digits
    model.train()
    model.features[0][0].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    for run in (lambda: activity.spike_statistics(model, loader, T, "cpu", max_batches=1),
                lambda: activity.membrane_statistics(model, loader, T, "cpu", max_batches=1),
                lambda: activity.energy(model, activity.spike_statistics(model, loader, T, "cpu", 1), (1, 8, 8)),
                lambda: activity.spike_deletion(model, loader, T, "cpu", fractions=(0.5,), max_batches=1)):
        run()
        assert _no_hooks(model) and [m.training for m in model.modules()] == flags

    def failing():
        yield next(iter(loader))
        raise RuntimeError("loader failed")

    with pytest.raises(RuntimeError, match="loader failed"):
        activity.spike_deletion(model, failing(), T, "cpu")
    assert _no_hooks(model) and [m.training for m in model.modules()] == flags


def test_tsne_plot_says_which_colour_is_which_label(monkeypatch):
    figures = []
    monkeypatch.setattr(activity, "save_figure", lambda fig, path: figures.append(fig))
    points = [[0.0, 0.0], [1.0, 1.0], [2.0, 0.0], [3.0, 1.0]]
    activity.plot_tsne({"layer": "lif", "labels": [0, 1, 2, 1], "timesteps": [{"t": 0, "points": points},
                                                                              {"t": 1, "points": points}]}, "x.png")
    legend = figures[0].axes[-1].get_legend()
    assert legend.get_title().get_text() == "label"
    assert [text.get_text() for text in legend.get_texts()] == ["$\\mathdefault{0}$", "$\\mathdefault{1}$",
                                                                "$\\mathdefault{2}$"]


def test_plots_write_png(digits, tmp_path):
    model, loader = digits
    stats = activity.spike_statistics(model, loader, T, "cpu", max_batches=1)
    membrane = activity.membrane_statistics(model, loader, T, "cpu", max_batches=1)
    deletion = activity.spike_deletion(model, loader, T, "cpu", fractions=(0.0, 0.5), max_batches=1)
    tsne = activity.tsne_features(model, loader, T, "cpu", "features.0.1", [0, 3], n_samples=20)
    plots = {
        "distribution.png": lambda p: activity.plot_spike_distribution(stats, p),
        "rates.png": lambda p: activity.plot_firing_rates(stats, p),
        "weights.png": lambda p: activity.plot_weight_histograms(activity.weight_statistics(model), p),
        "membrane.png": lambda p: activity.plot_membrane_statistics(membrane, p),
        "deletion.png": lambda p: activity.plot_spike_deletion(deletion, p),
        "tsne.png": lambda p: activity.plot_tsne(tsne, p),
    }
    for name, plot in plots.items():
        plot(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(plots)  # no temporary files left


def test_ilif_plots_say_what_a_count_is(monkeypatch):
    """The spike-count axis runs to T·D and says it is a summed count, the rate axes say the rate is a
    mean count, and Theorem 2's panel marks the I-LIF layer n/a."""
    figures = []
    monkeypatch.setattr(activity, "save_figure", lambda fig, path: figures.append(fig))
    model, loader = tiny_ilif(), _loader(ILIF_X, HAND_Y, 2)
    stats = activity.spike_statistics(model, loader, ILIF_T, "cpu")
    activity.plot_spike_distribution(stats, "unused.png")
    (ax,) = figures[0].axes
    assert len(ax.patches) == 9 and ax.get_xlabel() == "summed count over T (I-LIF, D = 4)"
    activity.plot_firing_rates(stats, "unused.png")
    assert [ax.get_ylabel() for ax in figures[1].axes] == ["firing rate (I-LIF: mean count)",
                                                           "firing rate at t (I-LIF: mean count)"]
    activity.plot_membrane_statistics(activity.membrane_statistics(model, loader, ILIF_T, "cpu"), "unused.png")
    mu_ax, rmd_ax, thm_ax = figures[2].axes
    assert [text.get_text() for text in thm_ax.texts] == ["not applicable:\nI-LIF has D windows"]
    assert "n/a" in thm_ax.get_title()
    mixed = {"lif": activity.membrane_statistics(Tiny(T), _loader(HAND_X, HAND_Y, 2), T, "cpu")["lif"],
             "ilif": activity.membrane_statistics(model, loader, ILIF_T, "cpu")["lif"]}
    activity.plot_membrane_statistics(mixed, "unused.png")
    assert [text.get_text() for text in figures[3].axes[2].texts] == ["fails", "n/a"]  # one mark per layer
    assert rmd_ax.get_ylabel() == "RMD = (θ - μ_u) / σ_u"
    assert "I-LIF level thresholds" in [text.get_text() for text in mu_ax.get_legend().get_texts()]
