"""Argument checks and backend choice shared by the ops."""

import math
import os
import shutil
import tempfile
import types

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # e.g. macOS: only the torch backend is available
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch", "inductor")
RESETS = ("soft", "hard")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SAVE_DTYPES = (torch.float32, torch.bfloat16)


def _cpu_auto_backend():
    """What backend="auto" runs on CPU tensors: "inductor" (fused C++ loops compiled by
    torch.compile) where a C++ compiler exists, else "torch". A2SG_CPU_BACKEND=torch|inductor
    overrides it (the test suite sets torch: compiling every variant it tries would take too long)."""
    choice = os.environ.get("A2SG_CPU_BACKEND")
    if choice in ("torch", "inductor"):
        return choice
    if choice:
        raise ValueError(f"A2SG_CPU_BACKEND must be 'torch' or 'inductor', got {choice!r}")
    compiler = os.environ.get("CXX") or next(filter(shutil.which, ("g++", "c++", "clang++")), None)
    return "inductor" if compiler else "torch"


CPU_AUTO_BACKEND = _cpu_auto_backend()
_COMPILED = {}


# Below this many elements per call a compiled CPU loop runs on one thread: an OpenMP team costs
# more than it saves there, and when another process holds a core the team waits for a thread that
# is not scheduled (22 ms instead of 0.12 ms for 4 x 256 neurons with one core busy, measured).
PARALLEL_MIN_NUMEL = 2**18


def compiled_variant(fn, *key, numel=None):
    """``torch.compile(fn)`` for one variant (``key``: everything but the tensors' sizes), compiled
    once, single-threaded when the call's ``numel`` is below PARALLEL_MIN_NUMEL. Each variant gets a code object of its
    own, so dynamo's per-code recompile limit never counts one variant against another; a variant
    recompiles only once more, when a second size makes the neuron count dynamic.

    The variant is called with its tensor arguments detached (positional arguments, as every caller
    passes them): dynamo guards on a view's base (its rank, strides and 0/1-specialised sizes) and on
    requires_grad, and the neuron layers of one network hand in [T, N] views of many bases, with and
    without grad, which recompiled a variant per combination until the recompile limit failed it.
    Every caller runs outside autograd (an op's or autograd.Function's forward, a backward computed by
    hand, statistics of detached tensors)."""
    key = (fn, numel is None or numel >= PARALLEL_MIN_NUMEL, *key)
    compiled = _COMPILED.get(key)
    if compiled is None:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_variant{len(_COMPILED)}")
        clone = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        options = {} if key[1] else {"cpp.threads": 1}
        compiled = _COMPILED[key] = _detached_call(torch.compile(clone, fullgraph=True, options=options))
    return compiled


def _detached_call(compiled):
    def call(*args):
        return compiled(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    return call


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_compiling() -> bool:
    return torch.compiler.is_compiling()


def math_dtype(dtype):
    """The dtype the ops compute in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(name, value, *, device=None, allow_float64=True):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not allow_float64 and value.dtype == torch.float64:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}; move them to one device")


def check_real(name, value, *, minimum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_reset(reset):
    if not isinstance(reset, str) or reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    return reset == "hard"


def check_beta(beta, T, device, dtype, levels=None):
    """beta as a float or a tensor of shape [T] (or 0-d) -> [T] tensor of ``dtype``; with ``levels`` = D
    (I-LIF: one width per timestep and level) a float or a tensor of shape [D] or [T, D] -> [T, D].

    A tensor that is already right (contiguous [T] or [T, D] of ``dtype``) is used as it is, not copied:
    backward keeps it, and autograd's version counter refuses a backward after it was changed in
    place. Values of a tensor beta are checked when it lives on the CPU; on a GPU that check would
    force a device-to-host sync on every call, so there only its shape, dtype and device are checked.
    """
    shape = (T,) if levels is None else (T, levels)
    if isinstance(beta, torch.Tensor):
        check_tensor("beta", beta, device=device)
        if beta.requires_grad:
            raise ValueError("beta must not require grad: the surrogate width is not learnable here (A2SG "
                             "searches it); pass beta.detach()")
        if levels is None and (beta.dim() > 1 or (beta.dim() == 1 and beta.shape[0] != T)):
            raise ValueError(f"beta must be a float or a tensor of shape [T] = [{T}], got shape {list(beta.shape)}")
        if levels is not None and beta.dim() > 0 and beta.shape not in ((levels,), shape):
            raise ValueError(f"beta must be a float or a tensor of shape [D] = [{levels}] or [T, D] = "
                             f"[{T}, {levels}], got shape {list(beta.shape)}")
        if beta.device.type == "cpu" and not is_compiling():
            low, high = torch.aminmax(beta)
            if not (bool(low > 0) and bool(high < math.inf)):  # NaN fails both
                raise ValueError(f"beta must be finite and > 0, got {beta.tolist()}")
        if beta.dtype == dtype and beta.shape == shape and beta.is_contiguous():
            return beta
        return beta.to(dtype).expand(shape).contiguous()
    value = check_real("beta", beta)
    if value <= 0:
        raise ValueError(f"beta must be > 0, got {value}")
    return torch.full(shape, value, dtype=dtype, device=device)


def check_save_dtype(save_dtype):
    if save_dtype is not None and save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be None, torch.float32 or torch.bfloat16, got {save_dtype}")


def resolve_backend(backend, x):
    """'auto' -> 'triton' for CUDA tensors of a kernel dtype, CPU_AUTO_BACKEND for CPU tensors, else 'torch'."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if x.is_cuda:
            return "triton" if HAS_TRITON and x.dtype in TRITON_DTYPES else "torch"
        return CPU_AUTO_BACKEND if x.device.type == "cpu" else "torch"
    if backend == "triton":
        if not HAS_TRITON:
            raise ValueError("backend='triton' needs the triton package; use backend='torch'")
        if not (x.is_cuda or (x.device.type == "cpu" and triton_interpreting())):
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), x is on {x.device}"
            )
        if x.dtype not in TRITON_DTYPES:
            raise TypeError(f"backend='triton' takes x in float32, float16 or bfloat16, got {x.dtype}")
    return backend


def unwrap_model(model):
    """The plain module under DistributedDataParallel and torch.compile wrappers (any nesting)."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model


def atomic_write(path, write, binary=True):
    """Writes a file through ``write(file)`` into a temporary file and a rename, so a crash never
    leaves half a file. The temporary name starts with ".tmp-" and ends in ".part"."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def new_figure(rows=1, columns=1, panel_size=(4.5, 3.5), sharey=False):
    """A matplotlib Figure and its [rows, columns] axes, without pyplot: no global state, and
    PNGs render with Agg whatever backend the caller's matplotlib has selected."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    return fig, fig.subplots(rows, columns, sharey=sharey, squeeze=False)


def save_figure(fig, path):
    """Writes a matplotlib Figure as PNG, atomically."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
