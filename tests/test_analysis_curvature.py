"""a2sg_triton.analysis.curvature: Fisher eigenvalues, loss landscapes, SGV/TGC against beta, the search
history and the figures (CPU, small models)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import a2sg_triton
from a2sg_triton.analysis import curvature
from a2sg_triton.ops.ilif import MultiLevelSurrogate, ilif_multistep_ref
from a2sg_triton.search.metrics import sgv, tgc
from a2sg_triton.models import build_model
from a2sg_triton.nn import ILIF
from a2sg_triton.reference import lif_multistep as lif_ref

T = 4


def digits_model(surrogate="asy", seed=0, neuron="lif"):
    """digits_cnn whose batch norms hold the statistics of a random batch, so it also spikes in eval mode.
    With PLIF neurons each leak is moved off its initial 1/2 (k = sigmoid(0.4))."""
    torch.manual_seed(seed)
    model = build_model("digits_cnn", num_classes=10, in_channels=1, T=T, surrogate=surrogate, backend="torch",
                        neuron=neuron)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one forward sets the running statistics
        if isinstance(module, a2sg_triton.nn.PLIF):
            with torch.no_grad():
                module.w.fill_(0.4)
    with torch.no_grad():
        model(a2sg_triton.models.direct_encode(torch.rand(64, 1, 8, 8) * 4, T))
    return model


def digits_loader(n_batches=2, batch=12, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(batch, 1, 8, 8, generator=generator) * 4, torch.randint(0, 10, (batch,), generator=generator))
            for _ in range(n_batches)]


def snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def assert_bit_identical(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


class LinearToy(nn.Module):
    """logits = W mean_t(x) + b: the per-sample gradient of CE w.r.t. W is (softmax - onehot) ⊗ x."""

    def __init__(self, features, classes):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x):
        return self.linear(x.mean(0).flatten(1))


# -- 1. Fisher ----------------------------------------------------------------------------------


def layer_input_and_output_grad(model, layer, x, y):
    """({"x": the layer's input, "out": its output}, float64 dL/d(output)) of the model's
    cross-entropy on (x, y), from a forward hook."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, inputs, out: captured.update(x=inputs[0].detach(), out=out))
    loss = nn.functional.cross_entropy(model(a2sg_triton.models.direct_encode(x, T)), y)
    handle.remove()
    return captured, torch.autograd.grad(loss, captured["out"])[0].double()


def test_fisher_equals_numpy_on_a_linear_toy(monkeypatch):
    torch.manual_seed(0)
    model = LinearToy(7, 3)
    x, y = torch.randn(10, 7, 1, 1), torch.randint(0, 3, (10,))  # [B, C, H, W]: repeated over T
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    inputs = x[:, :, 0, 0].double().numpy()
    with torch.no_grad():
        probs = torch.softmax(model.linear(x[:, :, 0, 0]), 1).double().numpy()
    gamma = np.stack([np.outer(p - np.eye(3)[label], xi).ravel() for p, label, xi in zip(probs, y.numpy(), inputs)])

    def numpy_fisher(n):
        return gamma[:n].T @ gamma[:n] / n

    exact = curvature.fisher_max_eigenvalue(model, loader, T, "cpu", n_samples=9)
    layer = exact["layers"]["linear"]
    assert exact["n_samples"] == 9 and layer["method"] == "gram" and layer["n_params"] == 21
    assert layer["lambda_max"] == pytest.approx(np.linalg.eigvalsh(numpy_fisher(9))[-1], rel=1e-5)
    assert layer["trace"] == pytest.approx(np.trace(numpy_fisher(9)), rel=1e-5)

    monkeypatch.setattr(curvature, "GRAM_MAX_ELEMENTS", 0)  # auto: a big layer takes power iteration
    power = curvature.fisher_max_eigenvalue(model, loader, T, "cpu", n_samples=100, iters=500)
    assert power["n_samples"] == 10 and power["layers"]["linear"]["method"] == "power"  # the loader ran out
    assert power["layers"]["linear"]["lambda_max"] == pytest.approx(np.linalg.eigvalsh(numpy_fisher(10))[-1],
                                                                    rel=1e-5)


def test_fisher_gram_and_power_agree_and_model_is_restored():
    model = digits_model()
    model.train()
    before = snapshot(model)
    loader = digits_loader()
    gram = curvature.fisher_max_eigenvalue(model, loader, T, "cpu", n_samples=16, method="gram")
    power = curvature.fisher_max_eigenvalue(model, loader, T, "cpu", n_samples=16, method="power", iters=100)
    assert list(gram["layers"]) == ["features.0.0.0", "features.2.0.0", "classifier.1"]
    for name, layer in gram["layers"].items():
        assert layer["lambda_max"] > 0
        assert layer["trace"] / 16 <= layer["lambda_max"] * (1 + 1e-6) and layer["lambda_max"] <= layer["trace"]
        assert power["layers"][name]["lambda_max"] == pytest.approx(layer["lambda_max"], rel=1e-5)
        assert power["layers"][name]["method"] == "power"
    json.dumps(gram)
    assert model.training
    assert_bit_identical(model, before)


# -- 2. Loss landscapes -------------------------------------------------------------------------


def test_filter_normalised_direction():
    model = digits_model()
    direction = curvature._filter_normalised_direction(model, torch.Generator().manual_seed(0), None)
    for name, param in model.named_parameters():
        if param.dim() <= 1:  # biases, batch-norm scale and shift: not perturbed
            assert not direction[name].any(), name
        else:
            torch.testing.assert_close(direction[name].flatten(1).norm(dim=1), param.flatten(1).norm(dim=1))
    only = curvature._filter_normalised_direction(model, torch.Generator().manual_seed(0), ["classifier.1"])
    assert [name for name, d in only.items() if d.any()] == ["classifier.1.weight"]


def test_loss_landscape_1d_centre_is_the_plain_loss_and_parameters_are_restored():
    model = digits_model()
    model.train()
    before = snapshot(model)
    loader = digits_loader()
    result = curvature.loss_landscape_1d(model, loader, T, "cpu", steps=5, span=0.5, max_batches=1)
    assert result["alphas"] == [-0.5, -0.25, 0.0, 0.25, 0.5]
    model.eval()
    with torch.no_grad():
        x, y = loader[0]
        logits = model(a2sg_triton.models.direct_encode(x, T))
        plain_loss = float(nn.functional.cross_entropy(logits, y))
        plain_accuracy = float((logits.argmax(1) == y).float().mean())
    model.train()
    assert result["loss"][2] == pytest.approx(plain_loss, rel=1e-6)
    assert result["accuracy"][2] == plain_accuracy
    assert len(set(result["loss"])) == 5  # the perturbation changes the loss
    json.dumps(result)
    assert model.training
    assert_bit_identical(model, before)


def test_loss_landscape_2d_grid_and_restoration_on_error():
    model = digits_model()
    before = snapshot(model)
    loader = digits_loader(n_batches=1)
    result = curvature.loss_landscape_2d(model, loader, T, "cpu", steps=3, span=0.5, layers=["features.2.0.0"])
    line = curvature.loss_landscape_1d(model, loader, T, "cpu", steps=3, span=0.5, layers=["features.2.0.0"])
    assert result["alphas"] == result["betas"] == [-0.5, 0.0, 0.5]
    assert len(result["loss"]) == 3 and all(len(row) == 3 for row in result["loss"])
    assert result["loss"][1][1] == line["loss"][1]  # both centres: the unperturbed model
    assert_bit_identical(model, before)

    bad = [(loader[0][0], torch.full((12,), 99))]  # an invalid label fails at the first, perturbed point
    with pytest.raises((IndexError, RuntimeError)):
        curvature.loss_landscape_1d(model, bad, T, "cpu", steps=3)
    assert model.training
    assert_bit_identical(model, before)


# -- 3. SGV and TGC against beta ----------------------------------------------------------------


@pytest.mark.parametrize("surrogate, neuron", [("asy", "lif"), ("tri", "lif"), ("asy", "plif")])
@pytest.mark.parametrize("layer_name, t", [("features.0.1", 0), ("features.2.1", 1), ("features.2.1", T - 1)])
def test_metric_vs_beta_matches_brute_force(surrogate, neuron, layer_name, t):
    model = digits_model(surrogate, neuron=neuron)
    lif = dict(model.named_modules())[layer_name]
    with torch.no_grad():
        lif.beta.copy_(torch.tensor([0.3, 0.7, 0.45, 0.6]))
    armed_before = lif.search_armed = True  # an armed A²SG search must neither run nor be consumed
    before = snapshot(model)
    x, y = digits_loader(n_batches=1)[0]
    betas = [0.1, 0.35, 0.8]
    result = curvature.metric_vs_beta(model, x, y, layer_name, t, betas)
    assert lif.search_armed == armed_before
    assert_bit_identical(model, before)

    # Brute force: the layer's input and dL/ds from hooks, then for each beta autograd through the
    # float64 reference LIF with beta[t] replaced; delta = dL/du = dL/dx / input_scale.
    lif.search_armed = False
    captured, grad_s = layer_input_and_output_grad(model, lif, x, y)
    # PLIF is LIF with decay 1 - k and input_scale k
    with torch.no_grad():
        decay, input_scale = (float(v) for v in lif.leak(torch.float64))
    assert decay == input_scale == 0.5 if neuron == "lif" else input_scale == pytest.approx(1 / (1 + np.exp(-0.4)))
    for k, beta in enumerate(betas):
        beta_vector = lif.beta.double().clone()
        beta_vector[t] = beta
        inputs = captured["x"].double().requires_grad_()
        spikes = lif_ref(inputs, beta_vector, surrogate, decay=decay, input_scale=input_scale,
                         v_th=lif.v_th, reset=lif.reset, v_reset=lif.v_reset, detach_reset=lif.detach_reset, h=lif.h)
        (spikes * grad_s).sum().backward()
        delta = inputs.grad / input_scale
        assert result["sgv"][k] == pytest.approx(float(sgv(delta[t])), rel=1e-9)
        if t < T - 1:
            assert result["tgc"][k] == pytest.approx(float(tgc(delta[t], delta[t + 1])), rel=1e-9, abs=1e-12)
    assert result["tgc"] is None if t == T - 1 else len(result["tgc"]) == 3
    assert result["betas"] == betas and result["current_beta"] == pytest.approx(float(lif.beta[t]))
    assert result["layer"] == layer_name and result["t"] == t
    json.dumps(result)


def test_metric_vs_beta_rejects_a_non_lif_layer():
    model = digits_model()
    x, y = digits_loader(n_batches=1)[0]
    with pytest.raises(ValueError, match="not an a2sg_triton.nn.LIF, nn.PLIF or nn.ILIF layer"):
        curvature.metric_vs_beta(model, x, y, "features.0.0.0", 0, [0.5])
    with pytest.raises(ValueError, match="t must be"):
        curvature.metric_vs_beta(model, x, y, "features.0.1", T, [0.5])
    with pytest.raises(ValueError, match="level is for nn.ILIF layers; 'features.0.1' is an nn.LIF"):
        curvature.metric_vs_beta(model, x, y, "features.0.1", 0, [0.5], level=1)


def ilif_window_delta(u, grad_q, carry, theta, width, surrogate, v_th, h, detach_reset):
    """dL/du of one I-LIF step, L = <g, q> + <c, v>, whose count has one window, at theta, of the given
    width: autograd through the reference's surrogate with D = 1 (its only window at v_th/2), shifted."""
    uu = u.detach().clone().requires_grad_()
    q = MultiLevelSurrogate.apply(uu - theta + 0.5 * v_th, width.reshape(1), surrogate, 1, v_th, h)
    v = uu - v_th * (q.detach() if detach_reset else q)
    loss = (grad_q * q).sum() + (0 if carry is None else (carry * v).sum())
    return torch.autograd.grad(loss, uu)[0]


@pytest.mark.parametrize("surrogate, detach_reset", [("box", False), ("asy", False), ("tri", True)])
@pytest.mark.parametrize("layer_name, t, level", [("features.2.1", T - 1, 4), ("features.2.1", T - 1, 2),
                                                  ("features.2.1", 1, 4), ("features.0.1", 0, 1)])
def test_ilif_metric_vs_beta_matches_brute_force(surrogate, detach_reset, layer_name, t, level):
    """I-LIF site (t, level) as docs/search.md defines it, by autograd in float64: the local gradient
    with level's window alone, the carry dL/dv[t] through the reference's later steps, and the
    reference the delta of the site visited before, (t, level + 1) or (t + 1, 1)."""
    model = digits_model(surrogate, neuron="ilif")
    ilif = dict(model.named_modules())[layer_name]
    widths = torch.tensor([[0.3, 0.7, 0.45, 0.6], [0.5, 0.35, 0.8, 0.4], [0.25, 0.55, 0.65, 0.5],
                           [0.6, 0.3, 0.5, 0.75]])
    for module in model.modules():
        if isinstance(module, ILIF):
            module.detach_reset = detach_reset
            module.beta.copy_(widths)
    ilif.search_armed = True  # an armed A²SG search must neither run nor be consumed
    before = snapshot(model)
    x, y = digits_loader(n_batches=1)[0]
    betas = [0.1, 0.35, 0.8]
    result = curvature.metric_vs_beta(model, x, y, layer_name, t, betas, level=level)
    assert ilif.search_armed
    assert_bit_identical(model, before)

    ilif.search_armed = False
    captured, grad_q = layer_input_and_output_grad(model, ilif, x, y)
    inputs, widths = captured["x"].double(), widths.double()
    assert captured["out"].max() > 1  # counts above 1: the levels matter
    neuron = dict(levels=4, decay=ilif.decay, input_scale=ilif.input_scale, v_th=ilif.v_th, detach_reset=detach_reset,
                  h=ilif.h)

    def state(step):  # v[step] after the reset, from v = 0
        if step < 0:
            return torch.zeros_like(inputs[0])
        return ilif_multistep_ref(inputs[:step + 1], widths[:step + 1], surrogate, return_v=True, **neuron)[1]

    def carry(step):  # dL/dv[step] by autograd through the later steps, with the layer's widths
        if step == T - 1:
            return None
        v = state(step).requires_grad_()
        counts = ilif_multistep_ref(inputs[step + 1:], widths[step + 1:], surrogate, v0=v, **neuron)
        return torch.autograd.grad((counts * grad_q[step + 1:]).sum(), v)[0]

    def delta(step, i, width):
        u = ilif.decay * state(step - 1) + ilif.input_scale * inputs[step]
        return ilif_window_delta(u, grad_q[step], carry(step), (i - 0.5) * ilif.v_th, width, surrogate, ilif.v_th,
                                 ilif.h, detach_reset)

    ref = None  # the site visited before (t, level)
    if level < 4:
        ref = delta(t, level + 1, widths[t, level])
    elif t < T - 1:
        ref = delta(t + 1, 1, widths[t + 1, 0])
    for k, beta in enumerate(betas):
        local = delta(t, level, torch.tensor(beta, dtype=torch.float64))
        assert local.abs().sum() > 0
        assert result["sgv"][k] == pytest.approx(float(sgv(local)), rel=1e-9)
        if ref is not None:
            assert result["tgc"][k] == pytest.approx(float(tgc(local, ref)), rel=1e-9, abs=1e-12)
    assert result["tgc"] is None if ref is None else len(result["tgc"]) == 3
    assert (result["layer"], result["t"], result["level"]) == (layer_name, t, level)
    assert result["betas"] == betas and result["current_beta"] == pytest.approx(float(widths[t, level - 1]))
    json.dumps(result)


class LinearILIF(nn.Module):
    """Linear -> nn.ILIF (T = 3, D = 3, tri) -> Linear, logits the mean over T."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 40), nn.Linear(40, 4)
        self.ilif = ILIF(3, "tri", levels=3, decay=0.5, backend="torch")

    def forward(self, x):
        return self.fc2(self.ilif(self.fc1(x))).mean(0)


def ilif_search(epochs):
    """A float64 LinearILIF searched by A2SG (grid) on one batch per epoch: (model, controller, x, y)."""
    torch.manual_seed(0)
    model = LinearILIF().double()
    with torch.no_grad():
        model.fc1.weight.mul_(4)
    controller = a2sg_triton.A2SG(model, strategy="grid", n_obs=8, n_eval=8)
    x, y = 2 * torch.rand(32, 6, dtype=torch.float64), torch.randint(0, 4, (32,))
    for epoch in range(epochs):
        controller.begin_epoch(epoch)
        nn.functional.cross_entropy(model(a2sg_triton.models.direct_encode(x, 3)), y).backward()
    return model, controller, x, y


def test_ilif_metric_vs_beta_is_what_the_search_measured():
    """After a search, each site's curve at the chosen width is the metric the controller recorded
    there (metric_at_beta): the same window-alone local gradient, carry and reference. The model runs
    in float64, but metric_vs_beta takes the cross-entropy of fp32 logits and the layer stores the
    widths the search chose in float64 as fp32: they agree to ~1e-7 (measured), hence rel 1e-6."""
    model, controller, x, y = ilif_search(epochs=1)
    rows = controller.history
    assert [(row["t"], row["level"]) for row in rows] == [(t, level) for t in (2, 1, 0) for level in (3, 2, 1)]
    for row in rows:
        result = curvature.metric_vs_beta(model, x, y, "ilif", row["t"], [row["beta"]], level=row["level"])
        assert result[row["metric"]][0] == pytest.approx(row["metric_at_beta"], rel=1e-6)
        assert result["current_beta"] == pytest.approx(row["beta"], rel=1e-6)
        assert (result["tgc"] is None) == (row["metric"] == "sgv") == ((row["t"], row["level"]) == (2, 3))


def test_metric_vs_beta_level_of_an_ilif_layer_is_checked():
    model, _, x, y = ilif_search(epochs=0)
    with pytest.raises(TypeError, match=r"level must be an int in \[1, 3\] for the nn.ILIF layer 'ilif', got None"):
        curvature.metric_vs_beta(model, x, y, "ilif", 0, [0.5])
    for level in (0, 4):
        with pytest.raises(ValueError, match=r"level must be in \[1, 3\]"):
            curvature.metric_vs_beta(model, x, y, "ilif", 0, [0.5], level=level)


# -- 4. Search history --------------------------------------------------------------------------


def test_search_history_metrics_of_an_ilif_search_keep_the_levels_apart():
    """An I-LIF layer has one search site per (t, level): each gets its own series (the levels of one
    t are not merged into one TGC series), and the figure names them."""
    _, controller, _, _ = ilif_search(epochs=2)
    series = curvature.search_history_metrics(controller.history)
    assert list(series) == ["ilif"] and sorted(series["ilif"]) == [0, 1, 2]
    for t, per_level in series["ilif"].items():
        assert sorted(per_level) == [1, 2, 3]
        for level, per_metric in per_level.items():
            metric = "sgv" if (t, level) == (2, 3) else "tgc"
            assert list(per_metric) == [metric] and per_metric[metric]["epochs"] == [0, 1]
            assert per_metric[metric]["beta"][-1] == pytest.approx(float(controller.layers["ilif"].beta[t, level - 1]))
    json.dumps(series)
    labels = [label for label, _ in curvature._site_series(json.loads(json.dumps(series))["ilif"])]
    assert labels[:3] == ["t=0 level=3 TGC", "t=0 level=2 TGC", "t=0 level=1 TGC"] and len(labels) == 9
    assert "t=2 level=3 SGV" in labels


def test_search_history_metrics_from_a_real_search():
    model = digits_model()
    controller = a2sg_triton.A2SG(model, strategy="grid", n_obs=8, n_eval=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for epoch, (x, y) in enumerate(digits_loader(n_batches=2)):
        controller.begin_epoch(epoch)
        nn.functional.cross_entropy(model(a2sg_triton.models.direct_encode(x, T)), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    series = curvature.search_history_metrics(list(reversed(controller.history)))  # any row order
    assert set(series) == set(controller.layers)
    for name, per_t in series.items():
        assert sorted(per_t) == list(range(T))
        for t, per_metric in per_t.items():
            assert list(per_metric) == ["sgv" if t == T - 1 else "tgc"]
            entry = per_metric["sgv" if t == T - 1 else "tgc"]
            assert entry["epochs"] == [0, 1]
            assert entry["beta"][-1] == pytest.approx(float(controller.layers[name].beta[t]))
            assert len(entry["metric_at_beta"]) == len(entry["best_value"]) == 2
    json.dumps(series)


# -- 5. Figures ---------------------------------------------------------------------------------


def test_metric_vs_beta_legends_and_colours(monkeypatch):
    """Both panels name their curves, and a curve keeps its colour across them although TGC has no
    curve at t = T-1 (analyze.py plots t = 0 and t = T-1 of every layer)."""
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    at_t = {"betas": [0.1, 0.5, 0.9], "sgv": [0.3, 0.2, 0.25], "tgc": [0.5, 0.7, 0.6], "current_beta": 0.5}
    last_t = dict(at_t, tgc=None)
    curvature.plot_metric_vs_beta({"a t=3": last_t, "a t=0": at_t, "b t=3": last_t, "b t=0": at_t}, "unused.png")
    sgv, tgc = figures[0].axes
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines() if not line.get_label().startswith("_")}
               for ax in (sgv, tgc)]
    assert list(colours[0]) == ["a t=3", "a t=0", "b t=3", "b t=0"] and list(colours[1]) == ["a t=0", "b t=0"]
    assert len(set(colours[0].values())) == 4 and all(colours[0][k] == v for k, v in colours[1].items())
    for ax, colour in zip((sgv, tgc), colours):
        assert [text.get_text() for text in ax.get_legend().get_texts()] == list(colour)


def test_metric_vs_beta_plot_has_a_row_per_ilif_level(monkeypatch):
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    first = {"betas": [0.1, 0.5, 0.9], "sgv": [0.3, 0.2, 0.25], "tgc": None, "current_beta": 0.5, "level": 4}
    later = dict(first, tgc=[0.5, 0.7, 0.6], level=3)
    curvature.plot_metric_vs_beta({"a t=0 level=4": first, "b t=0 level=4": first, "a t=0 level=3": later}, "x.png")
    axes = figures[0].axes
    assert [ax.get_title() for ax in axes] == ["I-LIF level 4: SGV (dashed: the current β)",
                                               "I-LIF level 4: TGC (dashed: the current β)",
                                               "I-LIF level 3: SGV (dashed: the current β)",
                                               "I-LIF level 3: TGC (dashed: the current β)"]
    assert [text.get_text() for text in axes[1].texts] == ["no TGC: the first site searched takes SGV"]
    assert [text.get_text() for text in axes[0].get_legend().get_texts()] == ["a t=0 level=4", "b t=0 level=4"]
    assert [line.get_label() for line in axes[3].get_lines() if not line.get_label().startswith("_")] == [
        "a t=0 level=3"]
    # sdt3 has 23 I-LIF layers: a row of that many curves gets its legends beside the panels
    figures.clear()
    curvature.plot_metric_vs_beta({**{f"layer{i} t=0 level=4": first for i in range(23)},
                                   **{f"layer{i} t=0 level=3": later for i in range(23)}}, "x.png")
    fig = figures[0]
    fig.draw_without_rendering()
    assert fig.get_size_inches()[0] == 2 * 8.0 and fig.get_size_inches()[1] > 2 * 3.5  # wider, taller panels
    assert fig.axes[1].get_legend() is None  # level 4 has no TGC curve to name
    for ax in (fig.axes[0], *fig.axes[2:]):
        assert len(ax.get_legend().get_texts()) == 23
        assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1


def test_search_history_legend_in_both_panels(monkeypatch):
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"epoch": e, "layer": "lif", "t": t, "metric": "sgv" if t == 1 else "tgc", "beta": 0.5,
                "metric_at_beta": 0.2, "best_value": 0.2} for e in range(2) for t in range(2)]
    curvature.plot_search_history(curvature.search_history_metrics(history), "unused.png")
    for ax in figures[0].axes:
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["t=0 TGC", "t=1 SGV"]


def test_plots_write_png_files(tmp_path):
    fisher = {"layers": {"conv1": {"lambda_max": 2.0}, "fc": {"lambda_max": 0.5}}}
    line = {"alphas": [-1.0, 0.0, 1.0], "loss": [3.0, 1.0, 2.5], "accuracy": [0.1, 0.9, 0.2]}
    plane = {"alphas": [-1.0, 0.0, 1.0], "betas": [-1.0, 0.0, 1.0],
             "loss": [[3.0, 2.0, 3.5], [2.0, 1.0, 2.2], [3.1, 2.4, 3.9]]}
    at_t = {"layer": "lif", "t": 0, "betas": [0.1, 0.5, 0.9], "sgv": [0.3, 0.2, 0.25], "tgc": [0.5, 0.7, 0.6],
            "current_beta": 0.5}
    last_t = dict(at_t, t=3, tgc=None)
    history = [{"epoch": e, "layer": "lif", "t": t, "metric": "sgv" if t == 1 else "tgc", "beta": 0.5 + 0.1 * e,
                "metric_at_beta": 0.2 - 0.01 * e, "best_value": 0.2} for e in range(3) for t in range(2)]
    figures = {
        "fisher.png": lambda p: curvature.plot_fisher_eigenvalues({"box": fisher, "asy": fisher}, p),
        "fisher_one.png": lambda p: curvature.plot_fisher_eigenvalues(fisher, p),
        "line.png": lambda p: curvature.plot_loss_landscape_1d({"tri": line, "box": line}, p),
        "plane.png": lambda p: curvature.plot_loss_landscape_2d(plane, p),
        "beta.png": lambda p: curvature.plot_metric_vs_beta({"epoch 1": at_t, "epoch 2": at_t}, p),
        "beta_last.png": lambda p: curvature.plot_metric_vs_beta(last_t, p),
        "history.png": lambda p: curvature.plot_search_history(curvature.search_history_metrics(history), p),
    }
    for name, plot in figures.items():
        plot(tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(figures)  # no temporary file left


def test_metric_vs_beta_marks_values_that_are_not_finite(monkeypatch):
    """SGV = +inf (no gradient in a narrow window) is drawn as a triangle at the top edge in the
    curve's colour and named in the legend, not left as a silent gap; "inf" from analysis.json too."""
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    result = {"betas": [0.05, 0.1, 0.5, 0.9], "sgv": [float("inf"), "inf", 0.2, 0.25], "tgc": None,
              "current_beta": 0.5}
    curvature.plot_metric_vs_beta({"a t=3": result, "b t=3": dict(result, sgv=[0.3, 0.2, 0.2, 0.25])}, "unused.png")
    (ax,) = figures[0].axes
    markers = [line for line in ax.get_lines() if line.get_marker() == "^"]
    assert len(markers) == 1 and list(markers[0].get_xdata()) == [0.05, 0.1] and markers[0].get_color() == "C0"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == [
        "a t=3", "b t=3", "SGV not finite (mean |δ| = 0)"]
    figures.clear()
    curvature.plot_metric_vs_beta(result, "unused.png")  # one result: the legend explains the marker alone
    assert [text.get_text() for text in figures[0].axes[0].get_legend().get_texts()] == [
        "SGV not finite (mean |δ| = 0)"]


def test_fisher_plot_shows_zero_eigenvalues_on_its_log_scale(monkeypatch):
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    fisher = {"layers": {"conv1": {"lambda_max": 2.0}, "conv2": {"lambda_max": 0.0}, "fc": {"lambda_max": 0.5}}}
    curvature.plot_fisher_eigenvalues(fisher, "unused.png")
    (ax,) = figures[0].axes
    heights = [bar.get_height() for bar in ax.patches]
    assert heights == [2.0, 0.05, 0.5]  # 0 drawn at a decade below the smallest positive value
    assert [bar.get_hatch() for bar in ax.patches] == [None, "//", None]
    assert [text.get_text() for text in ax.texts] == ["λ = 0"]
    assert "λ_max = 0" in ax.get_title()
    figures.clear()
    curvature.plot_fisher_eigenvalues({"layers": {"conv1": {"lambda_max": 2.0}}}, "unused.png")
    assert not figures[0].axes[0].texts and not figures[0].axes[0].get_title()


def test_landscape_2d_axes_are_not_named_for_the_surrogate_width(monkeypatch):
    figures = []
    monkeypatch.setattr(curvature, "save_figure", lambda fig, path: figures.append(fig))
    plane = {"alphas": [-1.0, 0.0, 1.0], "betas": [-1.0, 0.0, 1.0],
             "loss": [[3.0, 2.0, 3.5], [2.0, 1.0, 2.2], [3.1, 2.4, 3.9]]}
    curvature.plot_loss_landscape_2d(plane, "unused.png")
    ax = figures[0].axes[0]
    assert ax.get_xlabel() == "step along direction 1 (filter-normalised)"
    assert ax.get_ylabel() == "step along direction 2 (filter-normalised)"
