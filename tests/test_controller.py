"""The A²SG controller: arming, the search inside backward, modes, checkpoints, torch.compile."""

import copy
import csv
import json

import pytest
import torch

import a2sg_triton
from a2sg_triton import A2SG, metrics
from a2sg_triton.nn import LIF, SearchedNeuron
from helpers import KERNEL_DEVICE

T = 4
SEARCH = dict(n_obs=12, n_eval=20)  # small: the GP is the slow part on the CPU


def two_layer_model(backend="torch", surrogate="asy", seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(10, 48), LIF(T, surrogate, backend=backend),
                                torch.nn.Linear(48, 16), LIF(T, surrogate, backend=backend))
    with torch.no_grad():  # large enough weights that the second layer's membranes reach its window
        model[2].weight.normal_(0.15, 0.4)
    return model


def batch(seed=1, device="cpu", n=12):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(T, n, 10, generator=g)).to(device)


def betas(model):
    return [m.beta.clone() for m in model.modules() if isinstance(m, SearchedNeuron)]


def step(model, x):
    model.zero_grad()
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()


def test_searches_only_at_armed_iterations():
    model = two_layer_model()
    a2 = A2SG(model, every=2, **SEARCH)
    x = batch()
    initial = betas(model)
    a2.begin_epoch(0)
    step(model, x)
    after_search = betas(model)
    assert all(not torch.equal(a, b) for a, b in zip(initial, after_search))
    assert len(a2.history) == 2 * T
    step(model, x)  # second iteration of epoch 0: not armed
    a2.begin_epoch(1)  # 1 % every != 0
    step(model, x)
    assert all(torch.equal(a, b) for a, b in zip(after_search, betas(model)))
    assert len(a2.history) == 2 * T
    with torch.no_grad():  # an armed layer is not consumed by a forward without gradients
        a2.begin_epoch(2)
        model(x)
    step(model, x)
    assert len(a2.history) == 4 * T


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("surrogate, reset", [("asy", "soft"), ("tri", "hard")])
def test_search_gradients_use_the_new_beta_and_tgc_references_it(backend, surrogate, reset):
    """A single LIF on a leaf input: delta[t] = grad_x[t] / input_scale is observable exactly.

    The armed backward's gradients must equal the float64 reference's with the chosen betas, and the
    metric recorded at the chosen beta_t must be SGV(delta[T-1]) or TGC(delta[t], delta[t+1]) of
    those very deltas -- the reference of step t is delta[t+1] under the beta just chosen for t+1.
    """
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    layer = LIF(T, surrogate, reset=reset, backend=backend).to(device)
    a2 = A2SG(layer, **SEARCH)
    x = (1.5 + 1.5 * torch.randn(T, 700, generator=torch.Generator().manual_seed(0))).to(device).requires_grad_()
    w = torch.randn(T, 700, generator=torch.Generator().manual_seed(1)).to(device)
    a2.begin_epoch(0)
    (layer(x) * w).sum().backward()
    chosen = layer.beta.clone()
    assert not torch.equal(chosen, torch.full((T,), 0.5, device=device))

    x64 = x.detach().double().requires_grad_()
    out = a2sg_triton.reference.lif_multistep(x64, chosen.double(), surrogate, reset=reset)
    (out * w.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5 * x64.grad.abs().max().item())

    delta = x64.grad / layer.input_scale
    for row in a2.history:
        t = row["t"]
        want = metrics.sgv(delta[t]) if t == T - 1 else metrics.tgc(delta[t], delta[t + 1])
        assert row["beta"] == pytest.approx(chosen[t].item(), abs=1e-7)
        assert row["metric_at_beta"] == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("adapt, metrics_by_t", [
    ("spatial", ["sgv"] * T),
    ("temporal", ["tgc"] * (T - 1) + [None]),
    ("spatiotemporal", ["tgc"] * (T - 1) + ["sgv"]),
    ("none", [None] * T),
])
def test_modes(adapt, metrics_by_t):
    model = two_layer_model()
    a2 = A2SG(model, adapt=adapt, **SEARCH)
    a2.begin_epoch(0)
    step(model, batch())
    for layer in (model[1], model[3]):
        name = "1" if layer is model[1] else "3"
        rows = {r["t"]: r["metric"] for r in a2.history if r["layer"] == name}
        assert [rows.get(t) for t in range(T)] == metrics_by_t
        for t, metric in enumerate(metrics_by_t):
            if metric is None:
                assert layer.beta[t] == 0.5  # kept
    # the layers are searched top-down, each over t = T-1 ... 0
    assert [(r["layer"], r["t"]) for r in a2.history] == [
        (name, t) for name in ("3", "1") for t in reversed(range(T)) if metrics_by_t[t] is not None]


def test_grid_strategy_and_history_export(tmp_path):
    model = two_layer_model()
    a2 = A2SG(model, strategy="grid", **SEARCH)
    a2.begin_epoch(0)
    step(model, batch())
    assert all(r["predicted"] is None and r["gp_seconds"] == 0 for r in a2.history)
    a2.export_history(tmp_path / "h.json")
    a2.export_history(tmp_path / "h.csv")
    assert json.loads((tmp_path / "h.json").read_text()) == a2.history
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert [float(r["beta"]) for r in rows] == [r["beta"] for r in a2.history]
    with pytest.raises(ValueError, match=".json or .csv"):
        a2.export_history(tmp_path / "h.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.csv", "h.json"]  # no temporary files left


def train(model, a2, optimizer, epochs, x_by_epoch):
    for epoch in epochs:
        a2.begin_epoch(epoch)
        for x in x_by_epoch[epoch]:
            step(model, x)
            optimizer.step()


def test_resumed_equals_uninterrupted(tmp_path):
    data = {e: [batch(seed=10 * e + i) for i in range(2)] for e in range(3)}
    model = two_layer_model()
    a2 = A2SG(model, **SEARCH)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    train(model, a2, opt, range(3), data)

    model_b = two_layer_model()
    a2_b = A2SG(model_b, **SEARCH)
    opt_b = torch.optim.SGD(model_b.parameters(), lr=0.05)
    train(model_b, a2_b, opt_b, range(2), data)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "a2": a2_b.state_dict()}, path)

    state = torch.load(path, weights_only=False)
    model_c = two_layer_model(seed=123)  # different weights, overwritten by the checkpoint
    a2_c = A2SG(model_c, seed=99, **SEARCH)  # different RNG, overwritten too
    opt_c = torch.optim.SGD(model_c.parameters(), lr=0.05)
    model_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["opt"])
    a2_c.load_state_dict(state["a2"])
    train(model_c, a2_c, opt_c, [2], data)

    for a, b in zip(model.state_dict().values(), model_c.state_dict().values()):
        assert torch.equal(a, b)
    untimed = [[{k: v for k, v in row.items() if "seconds" not in k} for row in h] for h in (a2.history, a2_c.history)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 3 * 2 * T


def test_state_dict_mismatches_are_refused():
    a2 = A2SG(two_layer_model(), **SEARCH)
    other = A2SG(torch.nn.Sequential(LIF(T), torch.nn.Linear(3, 3), LIF(T)), **SEARCH)
    with pytest.raises(ValueError, match="holds layers"):
        a2.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="adapt"):
        A2SG(two_layer_model(), adapt="spatial", **SEARCH).load_state_dict(a2.state_dict())
    with pytest.raises(ValueError, match="search config"):
        A2SG(two_layer_model(), n_obs=13, n_eval=20).load_state_dict(a2.state_dict())
    with pytest.raises(ValueError, match="shape"):
        A2SG(torch.nn.Sequential(torch.nn.Linear(10, 48), LIF(T + 1), torch.nn.Linear(48, 16), LIF(T)),
             **SEARCH).load_state_dict(a2.state_dict())


@pytest.mark.parametrize("break_it, match", [
    (lambda s: s.pop("rng"), "missing"),
    (lambda s: s.update(rng=torch.zeros(3)), "rng"),
    (lambda s: s.update(betas="garbage"), "must be dicts"),
    (lambda s: s["betas"].update({k: torch.full_like(v, float("nan")) for k, v in s["betas"].items()}), "finite"),
    (lambda s: next(iter(s["gp_states"].values())).update(lengthscale=-1.0), "lengthscale"),
    (lambda s: next(iter(s["gp_states"].values())).update(noise=float("inf")), "noise"),
    (lambda s: s.update(epoch="three"), "epoch"),
    (lambda s: s.update(history=[1, 2]), "history"),
])
def test_load_state_dict_changes_nothing_unless_all_of_it_is_valid(break_it, match):
    """A bad part anywhere is refused with a ValueError before the model's widths, the RNG, the GP
    states or the history change."""
    a2 = A2SG(two_layer_model(), **SEARCH)
    state = a2.state_dict()
    with torch.no_grad():
        for layer in a2.layers.values():
            layer.beta.fill_(0.3)
    state["gp_states"] = {key: dict(value, lengthscale=0.2) for key, value in state["gp_states"].items()}
    before = copy.deepcopy(a2.state_dict())
    break_it(state)
    with pytest.raises(ValueError, match=match):
        a2.load_state_dict(state)
    after = a2.state_dict()
    assert all(torch.equal(after["betas"][k], before["betas"][k]) for k in before["betas"])
    assert torch.equal(after["rng"], before["rng"]) and after["gp_states"] == before["gp_states"]
    assert after["history"] == before["history"] and after["epoch"] == before["epoch"]


def test_compiled_model_searches_like_eager():
    torch._dynamo.reset()
    eager = two_layer_model()
    compiled_model = copy.deepcopy(eager)
    a2_eager, a2_compiled = A2SG(eager, **SEARCH), A2SG(compiled_model, **SEARCH)
    compiled = torch.compile(compiled_model, fullgraph=True)
    for epoch in range(2):
        x = batch(seed=epoch)
        for a2 in (a2_eager, a2_compiled):
            a2.begin_epoch(epoch)
        for _ in range(2):  # armed, then plain
            step(eager, x)
            step(compiled, x)
            for a, b in zip(betas(eager), betas(compiled_model)):
                assert torch.equal(a, b)
            for p, q in zip(eager.parameters(), compiled_model.parameters()):
                torch.testing.assert_close(p.grad, q.grad)
    assert len(a2_compiled.history) == len(a2_eager.history) == 4 * T


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(adapt="both"), ValueError, "adapt must be one of"),
    (dict(strategy="random"), ValueError, "strategy must be one of"),
    (dict(n_obs=1), ValueError, "n_obs must be >= 2"),
    (dict(n_eval=0), ValueError, "n_eval must be >= 1"),
    (dict(beta_range=(1.0, 0.05)), ValueError, "beta_range"),
    (dict(beta_range=(0.0, 1.0)), ValueError, "beta_range"),
    (dict(radius=0.0), ValueError, "radius"),
    (dict(every=0), ValueError, "every must be"),
    (dict(seed=-1), ValueError, "seed must be"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        A2SG(two_layer_model(), **kwargs)


def test_model_without_lif_and_bad_epoch():
    with pytest.raises(ValueError, match="no a2sg_triton.nn.LIF"):
        A2SG(torch.nn.Linear(3, 3))
    with pytest.raises(TypeError, match="model must be"):
        A2SG("model")
    with pytest.raises(ValueError, match="epoch must be"):
        A2SG(two_layer_model()).begin_epoch(-1)


@pytest.mark.parametrize("gp_fit", ["fit", "warm"])
def test_gp_fits_run_inside_the_backward(gp_fit):
    """A hyperparameter fit needs autograd, which is off inside the searching custom op (a worker
    thread runs the fit then); the search must still fit and choose."""
    model = two_layer_model()
    a2 = A2SG(model, gp_fit=gp_fit, **SEARCH)
    for epoch in range(2):  # "warm": a full fit first, then a short one from it
        a2.begin_epoch(epoch)
        step(model, batch(seed=epoch))
    fitted = [state for state in a2.gp_states.values() if state.fitted]
    assert fitted and len(a2.history) == 4 * T
    assert any(row["gp_seconds"] > 0 and row["predicted"] is not None for row in a2.history)


# -- identity: a controller searches its own layers only -----------------------------------------


def test_a_copied_model_never_searches_for_its_original():
    m1 = two_layer_model()
    a2_1 = A2SG(m1, **SEARCH)
    m2 = copy.deepcopy(m1)
    a2_2 = A2SG(m2, **SEARCH)
    a2_1.begin_epoch(0)
    step(m1, batch())
    assert all(not torch.equal(b, torch.full((T,), 0.5)) for b in betas(m1))  # m1 searched ...
    assert all(torch.equal(b, torch.full((T,), 0.5)) for b in betas(m2))  # ... for itself only
    assert len(a2_1.history) == 2 * T and a2_2.history == []
    a2_2.begin_epoch(0)  # both alive: each searches its own model
    step(m2, batch())
    assert len(a2_2.history) == 2 * T and len(a2_1.history) == 2 * T


def test_an_armed_model_copied_or_reloaded_is_a_new_unarmed_model(tmp_path):
    model = two_layer_model()
    a2 = A2SG(model, **SEARCH)
    a2.begin_epoch(0)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    for clone in (copy.deepcopy(model), torch.load(path, weights_only=False)):
        layers = [m for m in clone.modules() if isinstance(m, LIF)]
        assert all(layer.search_key == -1 and not layer.search_armed for layer in layers)
        before = betas(clone)
        step(clone, batch())  # trains without searching, for anyone
        assert all(torch.equal(a, b) for a, b in zip(before, betas(clone))) and a2.history == []
        A2SG(clone, **SEARCH)  # and can get a controller of its own
    step(model, batch())  # the original is still armed, for its own controller
    assert len(a2.history) == 2 * T


def test_a_newer_controller_takes_the_layers_over():
    model = two_layer_model()
    old, new = A2SG(model, **SEARCH), A2SG(model, **SEARCH)
    with pytest.raises(RuntimeError, match="adapted by another A2SG controller"):
        old.begin_epoch(0)
    new.begin_epoch(0)
    step(model, batch())
    assert len(new.history) == 2 * T and old.history == []


def test_an_unregistered_armed_layer_refuses_to_search():
    layer = LIF(T, "asy")
    layer.search_armed = True  # by hand, without a controller
    with pytest.raises(RuntimeError, match="not registered"):
        layer(torch.randn(T, 3))
    model = two_layer_model()
    a2 = A2SG(model, **SEARCH)
    a2.begin_epoch(0)
    del a2  # the controller is gone: its layers' sites with it
    with pytest.raises(RuntimeError, match="not registered"):
        model(batch())


def test_data_parallel_is_refused_with_a_pointer_to_ddp():
    model = two_layer_model()
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        A2SG(torch.nn.DataParallel(model), **SEARCH)
    a2 = A2SG(model, **SEARCH)
    a2.begin_epoch(0)
    replica = model[1]._replicate_for_data_parallel()  # what DataParallel runs on each GPU
    with pytest.raises(RuntimeError, match="DataParallel"):
        replica(torch.randn(T, 2, 48))


def test_layer_names_are_the_plain_models_under_wrappers():
    model = two_layer_model()
    compiled = torch.compile(model)
    a2 = A2SG(compiled, **SEARCH)
    assert list(a2.layers) == ["1", "3"]
    state = a2.state_dict()
    # a state saved by a controller built on a wrapper (older checkpoints) loads into a plain one
    prefixed = dict(state, betas={f"module._orig_mod.{k}": v for k, v in state["betas"].items()},
                    armed={f"module.{k}": v for k, v in state["armed"].items()},
                    gp_states={f"_orig_mod.{k}": v for k, v in state["gp_states"].items()})
    A2SG(two_layer_model(), **SEARCH).load_state_dict(prefixed)


# -- the armed backward's host syncs and CUDA graphs ----------------------------------------------


@pytest.mark.parametrize("strategy, per_search", [("bo", 1), ("grid", 2)])
def test_one_device_to_host_transfer_per_evaluation(strategy, per_search, monkeypatch):
    """The metric at the chosen beta and the previous beta reach the host with the next search's
    transfer (or when the history is read), not with transfers of their own."""
    calls = []
    fetch = A2SG._fetch
    monkeypatch.setattr(A2SG, "_fetch", lambda self, values: calls.append(values is not None) or fetch(self, values))
    model = two_layer_model()
    a2 = A2SG(model, strategy=strategy, **SEARCH)
    a2.begin_epoch(0)
    step(model, batch())
    assert calls == [True] * (per_search * 2 * T)  # no other transfer during the backward
    rows = a2.history  # reading the history fetches what is still pending (the last search's values): one transfer
    assert calls.count(True) == per_search * 2 * T + 1 and len(rows) == 2 * T
    assert all(row[key] is not None for row in rows for key in ("beta", "previous_beta", "metric_at_beta"))


def test_nothing_finite_keeps_beta_on_the_device():
    """Every delta zero (membranes far outside every window, no carry): SGV is +inf for every
    candidate, beta_t is kept, and the history says so once it is read."""
    layer = LIF(T, "box")
    a2 = A2SG(layer, adapt="spatial", **SEARCH)
    a2.begin_epoch(0)
    x = torch.full((T, 50), -8.0, requires_grad=True)  # u far below the threshold: f = 0, no spike
    layer(x).sum().backward()
    assert torch.equal(layer.beta, torch.full((T,), 0.5)) and torch.equal(x.grad, torch.zeros_like(x))
    for row in a2.history:
        assert row["beta"] == row["best_beta"] == row["previous_beta"] == 0.5 and row["fell_back"]
        assert row["metric_at_beta"] == float("inf")


def test_an_empty_batch_searches_nothing():
    layer = LIF(T, "asy")
    a2 = A2SG(layer, **SEARCH)
    a2.begin_epoch(0)
    x = torch.zeros(T, 0, 7, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.shape == x.shape and a2.history == [] and torch.equal(layer.beta, torch.full((T,), 0.5))


def test_searching_ops_are_tagged_cudagraph_unsafe():
    if not hasattr(torch.Tag, "cudagraph_unsafe"):
        pytest.skip("this torch has no cudagraph_unsafe tag")
    assert torch.Tag.cudagraph_unsafe in torch.ops.a2sg_triton.lif_bwd_search.default.tags
    assert torch.Tag.cudagraph_unsafe in torch.ops.a2sg_triton.plif_bwd_search.default.tags


def test_flat_tgc_keeps_beta_and_the_search_log_counts_it():
    """A loss on the last step only and a detached reset: for t < T-1, delta[t] = decay * delta[t+1]
    whatever beta_t, so TGC is 1 for every candidate: three flat curves, beta kept, no GP."""
    layer = LIF(T, "box", detach_reset=True)
    a2 = A2SG(layer, adapt="temporal", **SEARCH)
    g = torch.Generator().manual_seed(0)
    x = (1.5 * torch.randn(T, 300, generator=g)).requires_grad_()
    w = torch.zeros(T, 300)
    w[-1] = torch.randn(300, generator=g)
    a2.begin_epoch(0)
    (layer(x) * w).sum().backward()
    rows = a2.history
    assert [row["t"] for row in rows] == [2, 1, 0] and all(row["flat"] and not row["fell_back"] for row in rows)
    assert all(row["beta"] == row["previous_beta"] == 0.5 for row in rows)
    assert torch.equal(layer.beta, torch.full((T,), 0.5))
    log = a2.search_log()
    assert log == {"searches": 3, "fell_back": 0, "flat": 3, "at_lower_end": 0, "at_upper_end": 0, "widths": T}
    assert a2.search_log(since=3)["searches"] == 0
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([0.05, 1.0, 0.5, 0.059]))  # the range is [0.05, 1]: 1% is 0.0095
    assert (a2.search_log()["at_lower_end"], a2.search_log()["at_upper_end"]) == (2, 1)
