"""A²SG on I-LIF: the per-(t, level) search of docs/neurons.md, checked against float64 by hand."""

import pytest
import torch

import a2sg_triton
from a2sg_triton import A2SG, metrics
from a2sg_triton.nn import ILIF, LIF
from a2sg_triton.ops.surrogate import surrogate_grad
from helpers import KERNEL_DEVICE

T, D = 3, 4
SEARCH = dict(n_obs=12, n_eval=20)  # small: the GP is the slow part on the CPU


def level_deltas(x, grad_counts, beta, surrogate, decay, v_th, h=0.5):
    """float64 [T, D, N]: delta_i[t], the local gradient with level i's window alone, and [T, N]:
    delta[t] with every window, from the I-LIF recurrence written out (DESIGN §3.8)."""
    x, grad_counts, beta = x.double(), grad_counts.double(), beta.double()
    levels = beta.shape[1]
    v, us = torch.zeros_like(x[0]), []
    for t in range(x.shape[0]):
        u = decay * v + x[t]
        v = u - v_th * torch.round(torch.clamp(u / v_th, 0, levels))
        us.append(u)
    carry = torch.zeros_like(x[0])
    per_level, full = [None] * x.shape[0], [None] * x.shape[0]
    for t in reversed(range(x.shape[0])):
        f = torch.stack([surrogate_grad(us[t], beta[t, i], surrogate, v_th=(i + 0.5) * v_th, h=h)
                         for i in range(levels)])
        per_level[t] = grad_counts[t] * f + carry * (1 - v_th * f)
        full[t] = grad_counts[t] * f.sum(0) + carry * (1 - v_th * f.sum(0))
        carry = decay * full[t]
    return torch.stack(per_level), torch.stack(full)


def leaf_input(device, n=700, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (1.2 + 1.8 * torch.rand(T, n, generator=g) * D / 2).to(device).requires_grad_()
    w = torch.randn(T, n, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    return x, w


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("surrogate", ["box", "asy"])
def test_search_visits_levels_in_order_and_records_the_window_alone_metrics(backend, surrogate):
    """Sites run t = T-1 ... 0 and, within t, level D ... 1; SGV at the first, TGC against the site
    before it everywhere else. The gradients equal the float64 reference with the chosen widths and
    every row's metric is that of delta_i[t] computed by hand with them."""
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    layer = ILIF(T, surrogate, levels=D, backend=backend).to(device)
    a2 = A2SG(layer, **SEARCH)
    x, w = leaf_input(device)
    a2.begin_epoch(0)
    (layer(x) * w).sum().backward()
    chosen = layer.beta.clone()
    assert chosen.shape == (T, D) and not torch.equal(chosen, torch.full((T, D), 0.5, device=device))
    assert [(r["t"], r["level"], r["metric"]) for r in a2.history] == [
        (t, i, "sgv" if (t, i) == (T - 1, D) else "tgc") for t in reversed(range(T)) for i in range(D, 0, -1)]

    x64 = x.detach().double().requires_grad_()
    out = a2sg_triton.reference.ilif_multistep(x64, chosen.double(), surrogate, levels=D)
    (out * w.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5 * x64.grad.abs().max().item())

    per_level, full = level_deltas(x.detach(), w, chosen, surrogate, decay=layer.decay, v_th=layer.v_th)
    torch.testing.assert_close(full, x64.grad, rtol=1e-9, atol=1e-9)  # the hand recurrence is the op's
    previous = None
    for row in a2.history:
        delta = per_level[row["t"], row["level"] - 1]
        want = metrics.sgv(delta) if previous is None else metrics.tgc(delta, previous)
        assert row["beta"] == pytest.approx(chosen[row["t"], row["level"] - 1].item(), abs=1e-7)
        assert row["metric_at_beta"] == pytest.approx(want.item(), rel=1e-5, abs=1e-9)
        previous = delta


@pytest.mark.parametrize("adapt, first, rest", [("spatial", "sgv", "sgv"), ("temporal", None, "tgc"),
                                                 ("none", None, None)])
def test_modes_per_level(adapt, first, rest):
    layer = ILIF(T, levels=D)
    a2 = A2SG(layer, adapt=adapt, **SEARCH)
    x, w = leaf_input("cpu")
    a2.begin_epoch(0)
    (layer(x) * w).sum().backward()
    rows = {(r["t"], r["level"]): r["metric"] for r in a2.history}
    for t in range(T):
        for i in range(1, D + 1):
            want = first if (t, i) == (T - 1, D) else rest
            assert rows.get((t, i)) == want
            if want is None:
                assert layer.beta[t, i - 1] == 0.5  # kept


def test_mixed_model_state_dict_round_trip_and_search_log():
    """LIF and I-LIF under one controller: a GP per width, the state_dict names them "layer/t" and
    "layer/t/column", a fresh controller resumes the same searches, search_log counts every width."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 32), LIF(T, "box"), torch.nn.Linear(32, 16), ILIF(T, levels=2))

    def run(net, a2, epochs):
        x = 3 * torch.randn(T, 8, 6, generator=torch.Generator().manual_seed(5))
        for epoch in epochs:
            a2.begin_epoch(epoch)
            net.zero_grad()
            (net(x) * torch.linspace(-1, 1, 16)).sum().backward()

    a, b = model(), model()
    a2a, a2b = A2SG(a, **SEARCH), A2SG(b, **SEARCH)
    assert {"1/0", "3/0/0", "3/2/1"} <= set(a2a.state_dict()["gp_states"])
    run(a, a2a, [0, 1])
    run(b, a2b, [0])
    state = a2b.state_dict()
    b2 = model()
    b2.load_state_dict(b.state_dict())
    resumed = A2SG(b2, **SEARCH)
    resumed.load_state_dict(state)
    run(b2, resumed, [1])
    torch.testing.assert_close(b2[3].beta, a[3].beta, rtol=0, atol=0)
    torch.testing.assert_close(b2[1].beta, a[1].beta, rtol=0, atol=0)
    log = a2a.search_log()
    assert log["widths"] == T + 2 * T and log["searches"] == 2 * (T + 2 * T)


def test_compiled_ilif_searches_like_eager():
    torch._dynamo.reset()

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 24), ILIF(T, "asy", levels=2))

    x = 3 * torch.randn(T, 10, 6, generator=torch.Generator().manual_seed(2))
    eager, compiled = build(), build()
    a2e, a2c = A2SG(eager, **SEARCH), A2SG(compiled, **SEARCH)
    run = torch.compile(compiled, fullgraph=True)
    for epoch in range(2):
        for a2 in (a2e, a2c):
            a2.begin_epoch(epoch)
        for _ in range(2):  # armed, then plain
            for model, call in ((eager, eager), (compiled, run)):
                model.zero_grad()
                (call(x) * torch.linspace(-1, 1, 24)).sum().backward()
            assert torch.equal(compiled[1].beta, eager[1].beta)
            torch.testing.assert_close(compiled[0].weight.grad, eager[0].weight.grad)
    assert len(a2c.history) == len(a2e.history) == 2 * T * 2
