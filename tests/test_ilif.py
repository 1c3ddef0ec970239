"""ilif_multistep (Triton under the interpreter on CPU, the torch and inductor backends) against the
float64 reference and SpikingJelly's ILIFNode; nn.ILIF."""

import pytest
import torch

import a2sg_triton
from a2sg_triton import SURROGATES
from a2sg_triton.ops.ilif import ILIF_FWD, ILIFParams, ilif_fwd_torch
from a2sg_triton.nn import ILIF
from a2sg_triton.reference import ilif_multistep as ilif_ref
from helpers import KERNEL_DEVICE, assert_compiled_matches_eager, PER_STEP_BETA, compare_to_reference, ilif_edge_neurons, make_input, make_v0

LEVEL_BETA = [0.3, 0.55, 0.45, 0.2]
LEVEL_SCALE = [1.0, 0.8, 1.2, 0.6]


def beta_for(kind, T, D, device=KERNEL_DEVICE):
    """scalar, per level [D] or per timestep and level [T, D]."""
    if kind == "scalar":
        return 0.4
    if kind == "level":
        return torch.tensor(LEVEL_BETA[:D], device=device)
    return (torch.tensor(PER_STEP_BETA[:T])[:, None] * torch.tensor(LEVEL_SCALE[:D])).to(device)


def compare_ilif(x, beta, surrogate, *, levels=4, **kwargs):
    """The op against the float64 reference (helpers.compare_to_reference with I-LIF's edges: level
    thresholds and window edges); the counts must use every level."""
    ref, out = compare_to_reference(x, beta, surrogate, op=a2sg_triton.ilif_multistep, ref_op=ilif_ref,
                                    edges=ilif_edge_neurons, levels=levels, **kwargs)
    counts = ref[0]
    assert torch.equal(counts, counts.round()) and counts.min() == 0 and counts.max() == levels
    assert ((counts > 0) & (counts < levels)).any() or levels == 1, "the inputs reach no middle level"
    return ref, out


# -- the float64 reference: every surrogate x detach_reset; beta shapes and D ----------------------
# The interpreter is slow: the Triton kernels run the surrogates x detach_reset at D = 4 with [T, D]
# beta and every beta shape x D once; the torch backend runs the full product.


@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_triton_matches_reference(surrogate, detach_reset):
    compare_ilif(make_input(4), beta_for("step_level", 4, 4), surrogate, v0=make_v0(), detach_reset=detach_reset)


@pytest.mark.parametrize("D", [1, 4])
@pytest.mark.parametrize("beta_kind", ["scalar", "level", "step_level"])
def test_triton_beta_shapes_and_levels(beta_kind, D):
    compare_ilif(make_input(3), beta_for(beta_kind, 3, D), "asy", levels=D, v0=make_v0(), h=0.6)


@pytest.mark.parametrize("D", [1, 4])
@pytest.mark.parametrize("beta_kind", ["scalar", "level", "step_level"])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_torch_matches_reference(surrogate, detach_reset, beta_kind, D):
    compare_ilif(make_input(4, device="cpu"), beta_for(beta_kind, 4, D, "cpu"), surrogate, levels=D,
                 v0=make_v0(device="cpu"), backend="torch", detach_reset=detach_reset)


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("T, dtype, neuron", [
    (1, torch.float16, {}),
    (3, torch.float32, dict(decay=0.6, input_scale=0.8, v_th=0.7, h=0.7)),
], ids=["T1-fp16", "T3-other-constants"])
def test_lengths_dtypes_and_constants(T, dtype, neuron, backend):
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    compare_ilif(make_input(T, device=device), beta_for("step_level", T, 4, device), "tri", v0=make_v0(device=device),
                 dtype=dtype, backend=backend, **neuron)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_no_state(backend):
    """No v0 and no v_T: the kernels' HAS_V0 / STORE_V_LAST / HAS_GRAD_V_LAST / STORE_GRAD_V0 = False paths."""
    compare_ilif(make_input(4), beta_for("level", 4, 4), "sigmoid", with_v=False, backend=backend)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_outputs_fully_written(nan_outputs, backend):
    """Outputs start as NaN (fixture), so any element the kernels skip fails the comparison."""
    compare_ilif(make_input(4), beta_for("step_level", 4, 4), "atan", v0=make_v0(), backend=backend)


def test_inductor_matches_reference():
    """The inductor backend, both directions with state (one variant: compiling costs seconds; the
    compiled wrapper's other paths, dynamic N among them, are LIF's, tested in test_lif.py)."""
    compare_ilif(make_input(3, device="cpu"), beta_for("step_level", 3, 2, "cpu"), "asy", levels=2,
                 v0=make_v0(device="cpu"), backend="inductor")


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_small_and_empty_shapes(backend):
    for shape in [(37,), (2, 3, 1, 9)]:
        compare_ilif(make_input(3, shape=shape), 0.5, "box", levels=2, v0=make_v0(shape=shape), backend=backend)
    empty = torch.zeros(3, 0, device=KERNEL_DEVICE, requires_grad=True)
    counts, v = a2sg_triton.ilif_multistep(empty, 0.5, backend=backend, return_v=True)
    assert counts.shape == (3, 0) and v.shape == (0,)
    counts.sum().backward()
    assert empty.grad.shape == (3, 0)


@pytest.mark.parametrize("surrogate", ["box", "sigmoid"])
def test_float64_torch_backend_is_tight(surrogate):
    ref, out = compare_ilif(make_input(4, device="cpu"), beta_for("step_level", 4, 4, "cpu"), surrogate,
                            v0=make_v0(device="cpu"), dtype=torch.float64, backend="torch", v_th=0.7)
    assert torch.equal(out[0], ref[0])
    for got, want in zip(out[1:], ref[1:]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_counts_round_half_to_even_as_torch(backend):
    """T = 1, no v0, input_scale 1: u = x exactly on any device, so the count must be torch's
    round(clip(x / v_th, 0, D)) bit for bit, ties (exact halves) and near-ties included."""
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    ties = torch.tensor([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, -0.5, 0.49999997, 2.5000002, 1.0, 3.0, 7.0, -2.0])
    g = torch.Generator().manual_seed(5)
    x = torch.cat([ties, 6 * torch.rand(3000, generator=g) - 0.5])[None].to(device)
    for v_th in (1.0, 0.5, 0.7, 0.3):
        counts = a2sg_triton.ilif_multistep(x, 0.5, levels=5, v_th=v_th, backend=backend)
        assert torch.equal(counts, torch.round(torch.clamp(x / v_th, 0, 5))), v_th
    assert torch.equal(a2sg_triton.ilif_multistep(x[:, :13], 0.5, levels=5, backend=backend).cpu(),
                       torch.tensor([[0.0, 2, 2, 4, 4, 5, 0, 0, 3, 1, 3, 5, 0]]))


def test_gradcheck_torch_backend():
    """Finite differences against the analytic backward where every membrane stays outside the narrow
    box windows (checked): gradcheck then verifies the leak, input scale, reset, v0 and v_T chain."""
    g = torch.Generator().manual_seed(7)
    # input_scale x = k + [0, 0.1] and |decay v| <= 0.15: every u stays >= 0.25 from the thresholds k + 1/2
    x = (2.0 * torch.randint(0, 4, (4, 3, 5), generator=g) + 0.2 * torch.rand((4, 3, 5), generator=g)).double()
    v0 = (0.1 * torch.rand((3, 5), generator=g)).double()
    beta, neuron = 0.05, dict(levels=3, decay=0.3, input_scale=0.5, v_th=1.0)

    def fn(x, v0, detach_reset=False):
        return a2sg_triton.ilif_multistep(x, beta, "box", v0=v0, return_v=True, detach_reset=detach_reset,
                                          backend="torch", **neuron)

    assert 0 < fn(x, v0)[0].mean() < 3
    params = ILIFParams(SURROGATES.index("box"), 3, 0.3, 0.5, 1.0, False, 0.5)
    _, u, _ = ilif_fwd_torch(x.reshape(4, -1), v0.reshape(-1), params, False, torch.float64)
    assert ((u[..., None] - torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64)).abs() >= 2 * beta).all(), \
        "a membrane lies inside a window; gradcheck would be void"
    for detach_reset in (False, True):
        inputs = tuple(t.clone().requires_grad_() for t in (x, v0))
        assert torch.autograd.gradcheck(lambda x, v0: fn(x, v0, detach_reset), inputs, eps=1e-6, atol=1e-9,
                                        nondet_tol=0.0)


@pytest.mark.parametrize("save_dtype", [None, torch.bfloat16])
def test_only_u_is_saved(save_dtype):
    """Backward keeps exactly one [T, N] tensor (u, in save_dtype) and the [T, D] widths."""
    x = make_input(4, device="cpu").requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        a2sg_triton.ilif_multistep(x, 0.5, levels=3, backend="torch", save_dtype=save_dtype)
    shapes = sorted((tuple(t.shape), t.dtype) for t in saved)
    assert shapes == sorted([((4, 3), torch.float32), ((4, x[0].numel()), save_dtype or torch.float32)])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_non_contiguous_input_and_no_mutation(backend):
    device = KERNEL_DEVICE if backend == "triton" else "cpu"
    x = make_input(3, shape=(509, 5), device=device).transpose(1, 2)  # [T, 5, 509], not contiguous
    v0 = make_v0(shape=(509, 5), device=device).t()
    beta = beta_for("step_level", 3, 4, device)
    assert not x.is_contiguous()
    snapshots = [t.clone() for t in (x, v0, beta)]
    compare_ilif(x, beta, "tri", v0=v0, backend=backend)
    for before, after in zip(snapshots, (x, v0, beta)):
        assert torch.equal(before, after)


@pytest.mark.gpu
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
def test_bf16_saved_u_keeps_box_gradients(detach_reset):
    """save_dtype=bf16 on the GPU: the same counts; box's F depends on u only through which windows
    hold it, so the gradients are those of the fp32 save bit for bit, but for the neurons whose u
    (the kernel's own, rounded to bf16) crosses or lands on a window edge k v_th (beta = v_th / 2): left
    out (3% of the neurons over these 4 steps on the CPU's torch backend)."""
    x = make_input(4, device="cuda")
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).cuda()
    results = {}
    for save_dtype in (None, torch.bfloat16):
        xx = x.clone().requires_grad_()
        counts = a2sg_triton.ilif_multistep(xx, 0.5, "box", detach_reset=detach_reset, backend="triton",
                                            save_dtype=save_dtype)
        (counts * w).sum().backward()
        results[save_dtype] = counts, xx.grad
    params = ILIFParams(SURROGATES.index("box"), 4, 0.25, 1.0, 1.0, False, 0.5)
    _, u, _ = ILIF_FWD["triton"](x.reshape(4, -1), None, params, False, torch.float32)

    def window(u):  # the box window (0 ... 3) that holds u; -1 outside (0, 4) and on an edge k (bf16 often rounds to k)
        return torch.where((u > 0) & (u < 4) & (u != u.floor()), u.floor(), -1.0)

    near = (window(u) != window(u.bfloat16().float())).any(0).reshape(x.shape[1:])
    assert near.float().mean() < 0.05
    assert torch.equal(results[torch.bfloat16][0], results[None][0])
    torch.testing.assert_close(results[torch.bfloat16][1][:, ~near], results[None][1][:, ~near], rtol=0, atol=0)


def test_opcheck():
    from a2sg_triton.ops.ilif import ilif_bwd_op, ilif_fwd_op

    g = torch.Generator().manual_seed(0)
    x = (2 * torch.randn(3, 37, generator=g)).requires_grad_()
    v0 = torch.randn(37, generator=g).requires_grad_()
    beta = torch.rand(3, 4, generator=g) + 0.2
    for return_v, detach_reset in [(True, False), (False, True)]:
        torch.library.opcheck(ilif_fwd_op, (x, beta, v0, 2, 4, 0.25, 1.0, 0.8, detach_reset, 0.5, return_v,
                                            torch.float32, "torch", -1))
    torch.library.opcheck(ilif_fwd_op, (x, beta[:, :2], None, 0, 2, 0.5, 0.5, 1.0, False, 0.5, False, torch.float32,
                                        "torch", -1))
    u = 2 * torch.randn(3, 37, generator=g)
    torch.library.opcheck(ilif_bwd_op, (torch.randn(3, 37), u, beta, torch.randn(37), 1, 4, 0.25, 1.0, 0.8, False,
                                        0.5, True, "torch"))
    torch.library.opcheck(ilif_bwd_op, (torch.randn(3, 37), u, beta, None, 4, 4, 0.25, 1.0, 0.8, True, 0.5, False,
                                        "torch"))


def test_torch_compile_fullgraph_cpu():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), ILIF(3, backend="torch"), torch.nn.Linear(16, 8),
                                ILIF(3, "asy", levels=2, v_th=0.5, detach_reset=True, backend="torch"))
    with torch.no_grad():  # weights large enough that the second layer counts too
        model[2].weight.normal_(0.1, 0.5)
    assert_compiled_matches_eager(model, 3 * torch.randn(3, 5, 6))


# -- arguments ----------------------------------------------------------------------------------

X = torch.randn(3, 5)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((torch.ones(3, 5, dtype=torch.int32), 0.5), {}, TypeError, "x must be a floating-point tensor"),
    ((torch.ones(0, 5), 0.5), {}, ValueError, r"T >= 1"),
    ((X, 0.5), {"levels": 0}, ValueError, r"levels \(the largest count\) must be >= 1"),
    ((X, 0.5), {"levels": True}, TypeError, r"levels \(the largest count\) must be an int"),
    ((X, 0.5), {"levels": 2.0}, TypeError, r"levels \(the largest count\) must be an int"),
    ((X, -0.1), {}, ValueError, "beta must be > 0"),
    ((X, float("nan")), {}, ValueError, "beta must be finite"),
    ((X, torch.tensor([0.5, float("inf"), 0.5, 0.5])), {}, ValueError, "beta must be finite and > 0"),
    ((X, torch.ones(3)), {}, ValueError, r"beta must be a float or a tensor of shape \[D\] = \[4\] or \[T, D\] = "
                                         r"\[3, 4\], got shape \[3\]"),
    ((X, torch.ones(4, 3)), {}, ValueError, r"shape \[D\] = \[4\] or \[T, D\]"),
    ((X, torch.ones(4, requires_grad=True)), {}, ValueError, "beta must not require grad"),
    ((X, 0.5), {"surrogate": "gauss"}, ValueError, "surrogate must be one of"),
    ((X, 0.5), {"surrogate": "asy", "h": 0.3}, ValueError, "h must be >= 0.5"),
    ((X, 0.5), {"v0": torch.zeros(4)}, ValueError, "v0 must have shape"),
    ((X, 0.5), {"v0": torch.zeros(5, device="meta")}, ValueError, "v0 is on meta but x is on cpu"),
    ((X, torch.ones(4, device="meta")), {}, ValueError, "beta is on meta but x is on cpu"),
    ((X, 0.5), {"decay": float("inf")}, ValueError, "decay must be finite"),
    ((X, 0.5), {"input_scale": float("nan")}, ValueError, "input_scale must be finite"),
    ((X, 0.5), {"v_th": 0.0}, ValueError, r"v_th must be > 0"),
    ((X, 0.5), {"v_th": float("inf")}, ValueError, "v_th must be finite"),
    ((X, 0.5), {"detach_reset": 1}, TypeError, "detach_reset must be a bool"),
    ((X, 0.5), {"save_dtype": torch.float16}, ValueError, "save_dtype must be"),
    ((X, 0.5), {"backend": "cuda"}, ValueError, "backend must be one of"),
])
def test_bad_input_raises_before_any_kernel(args, kwargs, error, match, monkeypatch):
    def no_kernel(*a, **k):
        raise AssertionError("a kernel ran before the argument check")

    for backend in ILIF_FWD:
        monkeypatch.setitem(ILIF_FWD, backend, no_kernel)
    with pytest.raises(error, match=match):
        a2sg_triton.ilif_multistep(*args, **kwargs)
    if not {"backend", "save_dtype"} & kwargs.keys():  # the reference takes the math's arguments alike
        with pytest.raises(error, match=match):
            ilif_ref(*args, **kwargs)


# -- SpikingJelly 2.0's ILIFNode: the same neuron, its rectangular STE = box with beta = v_th / 2 ----


@pytest.mark.parametrize("D", [1, 4])
@pytest.mark.parametrize("v_th", [1.0, 0.7])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["attached", "detached"])
def test_matches_spikingjelly(D, v_th, detach_reset):
    """float64, multi-step, from a given v0, loss on the counts and v_T: identical counts and v_T,
    gradients for x and v0 to 1e-12. SpikingJelly passes dq/du = 1/v_th on the closed window
    0 <= u / v_th <= D; our D box windows of width v_th / 2 tile it but for their edges (u an
    integer multiple of v_th), which random float64 inputs do not hit."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import neuron, surrogate

    tau = 4.0 / 3.0
    node = neuron.ILIFNode(tau=tau, v_threshold=v_th, surrogate_function=surrogate.MultiLevelSpikeCount(D),
                           detach_reset=detach_reset, step_mode="m")
    g = torch.Generator().manual_seed(4)
    x = v_th * (1.5 + 1.5 * torch.randn(5, 3, 40, generator=g, dtype=torch.float64))
    v0 = v_th * 0.5 * torch.randn(3, 40, generator=g, dtype=torch.float64)
    w_q, w_v = torch.randn(x.shape, generator=g, dtype=torch.float64), torch.randn(v0.shape, generator=g,
                                                                                 dtype=torch.float64)
    x_sj, v0_sj = x.clone().requires_grad_(), v0.clone().requires_grad_()
    node.v = v0_sj
    counts_sj = node(x_sj)
    ((counts_sj * w_q).sum() + (node.v * w_v).sum()).backward()
    x_ours, v0_ours = x.clone().requires_grad_(), v0.clone().requires_grad_()
    counts, v_last = a2sg_triton.ilif_multistep(x_ours, v_th / 2, "box", levels=D, decay=1.0 - 1.0 / tau, v_th=v_th,
                                                detach_reset=detach_reset, v0=v0_ours, return_v=True, backend="torch")
    ((counts * w_q).sum() + (v_last * w_v).sum()).backward()
    assert counts.max() == D and (D == 1 or ((counts > 0) & (counts < D)).any())
    assert torch.equal(counts, counts_sj) and torch.equal(v_last, node.v)
    assert (x_sj.grad != 0).float().mean() > 0.3  # many neurons inside the window
    torch.testing.assert_close(x_ours.grad, x_sj.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v0_ours.grad, v0_sj.grad, rtol=1e-12, atol=1e-12)


# -- nn.ILIF -------------------------------------------------------------------------------------


def test_module_beta_buffer_and_forward():
    layer = ILIF(3, "tri", levels=2, v_th=0.8, beta_init=torch.tensor([0.3, 0.4]))
    assert layer.levels == 2 and layer.beta.shape == (3, 2) and layer.beta.dtype == torch.float32
    assert torch.equal(layer.beta, torch.tensor([[0.3, 0.4]] * 3))
    assert "beta" in dict(layer.named_buffers()) and "levels=2" in repr(layer) and "v_th=0.8" in repr(layer)
    assert torch.equal(ILIF(3).beta, torch.full((3, 4), 0.5))
    per_step = torch.rand(3, 4) + 0.1
    assert torch.equal(ILIF(3, beta_init=per_step).beta, per_step)
    x = make_input(3, device="cpu").requires_grad_()
    out = layer(x)
    out.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    want = a2sg_triton.ilif_multistep(x2, layer.beta, "tri", levels=2, v_th=0.8, backend="torch")
    want.sum().backward()
    assert torch.equal(out, want) and torch.equal(x.grad, x2.grad)


def test_module_state_dict_dtype_and_saved_beta():
    layer = ILIF(2, levels=3, backend="torch")
    with torch.no_grad():
        layer.beta.copy_(torch.tensor([[0.2, 0.3, 0.4], [0.5, 0.6, 0.7]]))
    fresh = ILIF(2, levels=3)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.beta, layer.beta)
    layer.half()
    assert layer.beta.dtype == torch.float32
    x = make_input(2, device="cpu").half().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer(x)
    assert out.dtype == torch.float16
    assert any(t.data_ptr() == layer.beta.data_ptr() for t in saved)  # the buffer itself, no copy per call


def test_module_bad_arguments():
    for kwargs, error, match in [({"T": 0}, ValueError, "T must be an int"),
                                 ({"levels": 0}, ValueError, r"levels \(the largest count\) must be >= 1"),
                                 ({"levels": 1.5}, TypeError, r"levels \(the largest count\) must be an int"),
                                 ({"v_th": -1.0}, ValueError, "v_th must be > 0"),
                                 ({"beta_init": torch.ones(5)}, ValueError, r"shape \[D\] = \[4\] or \[T, D\]"),
                                 ({"beta_init": 0.0}, ValueError, "beta must be > 0"),
                                 ({"surrogate": "x"}, ValueError, "surrogate must be one of"),
                                 ({"surrogate": "asy", "h": 0.2}, ValueError, "h must be >= 0.5"),
                                 ({"decay": float("nan")}, ValueError, "decay must be finite"),
                                 ({"detach_reset": None}, TypeError, "detach_reset must be a bool"),
                                 ({"backend": "x"}, ValueError, "backend must be one of")]:
        with pytest.raises(error, match=match):
            ILIF(**({"T": 3} | kwargs))
    with pytest.raises(ValueError, match=r"ILIF expects input \[T=3"):
        ILIF(3)(torch.randn(2, 4))
