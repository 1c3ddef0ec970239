"""Which backend runs an op, and the compiled (inductor) variants of the eager functions."""

import os
import shutil
import types
from collections.abc import Callable, Hashable
from typing import Any, Optional, cast

import torch

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # e.g. macOS: only the torch backend is available
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch", "inductor")
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cpu_auto_backend() -> str:
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
_COMPILED: dict[tuple[Hashable, ...], Callable[..., Any]] = {}


# Below this many elements per call a compiled CPU loop runs on one thread: an OpenMP team costs
# more than it saves there, and when another process holds a core the team waits for a thread that
# is not scheduled (22 ms instead of 0.12 ms for 4 x 256 neurons with one core busy, measured).
PARALLEL_MIN_NUMEL = 2**18


def compiled_variant(fn: Callable[..., Any], *key: Hashable, numel: Optional[int] = None) -> Callable[..., Any]:
    """``torch.compile(fn)`` for one variant (``key``: everything but the tensors' sizes), compiled
    once, single-threaded when the call's ``numel`` is below PARALLEL_MIN_NUMEL. Each variant gets a
    code object of its own, so dynamo's per-code recompile limit never counts one variant against another; a variant
    recompiles only once more, when a second size makes the neuron count dynamic.

    The variant is called with its positional tensor arguments detached (keyword arguments are
    options, never tensors): dynamo guards on a view's base (its rank, strides and 0/1-specialised
    sizes) and on requires_grad, and the neuron layers of one network hand in [T, N] views of many
    bases, with and without grad, which recompiled a variant per combination until the recompile limit failed it.
    Every caller runs outside autograd (an op's or autograd.Function's forward, a backward computed by
    hand, statistics of detached tensors).

    Args:
        fn: a plain Python function of torch ops (its code object is cloned).
        *key: the variant: everything the compiled graph depends on but the tensors' sizes.
        numel: the call's element count; below PARALLEL_MIN_NUMEL the variant runs on one thread.

    Returns:
        The compiled variant, which detaches its positional tensor arguments.
    """
    key = (fn, numel is None or numel >= PARALLEL_MIN_NUMEL, *key)
    compiled = _COMPILED.get(key)
    if compiled is None:
        function = cast(types.FunctionType, fn)  # a def: it has a code object to clone
        code = function.__code__.replace(co_name=f"{function.__name__}_variant{len(_COMPILED)}")
        clone = types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__,
                                   function.__closure__)
        clone.__kwdefaults__ = function.__kwdefaults__
        options: dict[str, Any] = {} if key[1] else {"cpp.threads": 1}
        compiled = _COMPILED[key] = _detached_call(torch.compile(clone, fullgraph=True, options=options))
    return compiled


def _detached_call(compiled: Callable[..., Any]) -> Callable[..., Any]:
    """``compiled`` called with its positional tensor arguments detached."""

    def call(*args: Any, **options: Any) -> Any:
        return compiled(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args), **options)
    return call


def triton_interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def is_compiling() -> bool:
    """Whether torch.compile (dynamo) is tracing the caller."""
    return torch.compiler.is_compiling()


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in: float64 for float64 input, else float32.

    Args:
        dtype: the input's dtype.

    Returns:
        torch.float64 or torch.float32.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """'auto' -> 'triton' for CUDA tensors of a kernel dtype, CPU_AUTO_BACKEND for CPU tensors, else 'torch'.

    Args:
        backend: one of BACKENDS.
        x: the op's input (its device and dtype decide).

    Returns:
        "triton", "torch" or "inductor".

    Raises:
        ValueError: an unknown backend, or "triton" where it cannot run.
        TypeError: "triton" for a dtype the kernels do not take.
    """
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
