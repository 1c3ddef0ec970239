"""Activation memory: what a spiking network keeps for backward (docs/memory.md).

``memory_saving()`` is a context manager for the forward pass. Inside it:

- **Spikes are kept as bits.** Every tensor that an ``nn.LIF`` or ``nn.PLIF`` layer emits is marked
  as spikes; when an op saves a marked tensor (or a view of it) for backward -- a conv or linear layer its input,
  average pooling its input -- autograd keeps it bit-packed (``a2sg_triton.ops.bitpack``), 1 bit per
  element instead of 32, and unpacks it exactly in backward. Nothing is inspected: the mark comes
  from the layer that made the spikes, so no pass over the data decides what is binary, and a
  tensor that was changed in place after the LIF made it (its version counter moved) is saved as
  it is. ``mark_spikes`` marks tensors of one's own spiking function.
- **tdBN -> LIF recomputes.** A ``TdBatchNorm2d`` in training mode computes its output with an
  explicit formula and records how (a recipe); a LIF layer whose input is that output (or its
  time-unfolded view, or ``residual_add`` of it and another tensor) keeps the conv output and the
  statistics instead of u - v_th and recomputes both in backward, bit for bit
  (``a2sg_triton.ops.tdbn_lif``).

Outside the context, and under torch.compile, everything runs as before. ``SavedTensors`` measures
what autograd keeps.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from ..ops.bitpack import pack_backend, pack_bits, unpack_bits
from ..ops.tdbn_lif import SumRecipe, UnflattenRecipe
from ..ops.backend import BACKENDS
from ..ops.checks import check_flag, check_tensor

if TYPE_CHECKING:
    from ..ops.tdbn_lif import TdBNRecipe

    # How a LIF input is recomputed in backward from the tensors kept with it.
    Recipe = Union[TdBNRecipe, UnflattenRecipe, SumRecipe]

_LOCAL = threading.local()  # .contexts: active MemorySaving objects; .meters: active SavedTensors


def _stack(name: str) -> list[Any]:
    stack = getattr(_LOCAL, name, None)
    if stack is None:
        stack = []
        setattr(_LOCAL, name, stack)
    return stack


def active() -> Optional[MemorySaving]:
    """The innermost active ``memory_saving`` context of this thread, or None."""
    contexts = _stack("contexts")
    return contexts[-1] if contexts else None


def _base(t: torch.Tensor) -> torch.Tensor:
    return t if t._base is None else t._base


class PackedSpikes:
    """A marked spike tensor (contiguous) kept as bits; ``unpack`` gives a new tensor equal to it."""

    def __init__(self, spikes: torch.Tensor, backend: str) -> None:
        self.shape, self.dtype, self.backend = spikes.shape, spikes.dtype, backend
        self.bits = pack_bits(spikes, backend)

    def unpack(self) -> torch.Tensor:
        """The spike tensor, unpacked (a new tensor)."""
        return unpack_bits(self.bits, self.shape, self.dtype, self.backend)


class SavedView:
    """What autograd keeps of one saved view of a packed spike tensor: the bits and the view's geometry."""

    def __init__(self, packed: PackedSpikes, t: torch.Tensor, base: torch.Tensor) -> None:
        self.packed, self.size, self.stride = packed, t.shape, t.stride()
        self.offset = t.storage_offset() - base.storage_offset()

    def unpack(self) -> torch.Tensor:
        """The saved view, unpacked: a new tensor equal to it, with its size, stride and offset."""
        return self.packed.unpack().as_strided(self.size, self.stride, self.offset)


def _unpack_hook(saved: Any) -> Any:
    return saved.unpack() if isinstance(saved, SavedView) else saved


class _Registry:
    """Tensors keyed by object identity, each dropped as soon as its tensor is freed."""

    def __init__(self) -> None:
        self.entries: dict[int, list[Any]] = {}

    def add(self, t: torch.Tensor, *values: Any) -> None:
        key, entries = id(t), self.entries

        def forget(ref: weakref.ref[torch.Tensor]) -> None:
            if entries.get(key, (None,))[0] is ref:
                del entries[key]

        entries[key] = [weakref.ref(t, forget), t._version, *values]

    def get(self, t: torch.Tensor) -> Optional[list[Any]]:
        """The entry of t, if t is registered and has not been changed in place since."""
        entry = self.entries.get(id(t))
        if entry is None or entry[0]() is not t or t._version != entry[1]:
            return None
        return entry

    def clear(self) -> None:
        self.entries.clear()


class MemorySaving:
    """The state of one ``memory_saving`` context: marked spikes and their packed copies, recipes."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.spikes = _Registry()  # base tensor -> [ref, version, PackedSpikes or None]
        self.recipes = _Registry()  # LIF-input candidate -> [ref, version, recipe, tensors]

    def mark_spikes(self, spikes: torch.Tensor) -> None:
        """Marks ``spikes`` (a contiguous tensor or a view of one) to be kept as bits when saved."""
        base = _base(spikes)
        if base.is_contiguous() and base.dtype == spikes.dtype:
            self.spikes.add(base, None)

    def pack(self, t: torch.Tensor) -> Union[torch.Tensor, SavedView]:
        """The saved-tensor pack hook: marked spikes become bits, anything else is kept as it is."""
        kept: Union[torch.Tensor, SavedView] = t
        base = _base(t)
        entry = self.spikes.get(base) if t.dtype == base.dtype else None
        if entry is not None:
            if entry[2] is None:
                entry[2] = PackedSpikes(base, pack_backend(self.backend, base))
            kept = SavedView(entry[2], t, base)
        for meter in _stack("meters"):
            meter.record(kept)
        return kept

    def add_recipe(self, z: torch.Tensor, recipe: Recipe, tensors: Iterable[torch.Tensor]) -> None:
        """Registers z as recomputable: ``recipe.recompute(tensors)`` gives z bit for bit."""
        self.recipes.add(z, recipe, tuple(tensors))

    def recipe_for(self, x: torch.Tensor) -> Optional[tuple[Recipe, tuple[torch.Tensor, ...]]]:
        """(recipe, tensors) that recompute x, if x is a registered tensor or its time-unfolded view
        ([T*B, ...] -> [T, B, ...]) and neither was changed in place; else None."""
        base = _base(x)
        entry = self.recipes.get(base)
        if entry is None or x.data_ptr() != base.data_ptr():
            return None
        recipe, tensors = entry[2], entry[3]
        if x.shape == base.shape and x.stride() == base.stride():
            return recipe, tensors
        if (x.dim() == base.dim() + 1 and x.shape[0] * x.shape[1] == base.shape[0] and x.shape[2:] == base.shape[1:]
                and x.stride()[2:] == base.stride()[1:] and x.stride(1) == base.stride(0)
                and x.stride(0) == base.stride(0) * x.shape[1]):
            return UnflattenRecipe(recipe, x.shape[:2]), tensors
        return None

    def add_sum(self, total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        """Registers total = a + b when a is recomputable (b: recomputable too, or kept as it is)."""
        found_a = self.recipe_for(a)
        if found_a is None or a.shape != b.shape or a.dtype != b.dtype:
            return
        found_b = self.recipe_for(b)
        if found_b is None:
            self.add_recipe(total, SumRecipe(found_a[0], None), (*found_a[1], b))
        else:
            self.add_recipe(total, SumRecipe(found_a[0], found_b[0]), found_a[1] + found_b[1])

    def clear(self) -> None:
        """Forgets every marked tensor and recipe."""
        self.spikes.clear()
        self.recipes.clear()


@contextmanager
def memory_saving(enabled: bool = True, *, backend: str = "auto") -> Iterator[Optional[MemorySaving]]:
    """Runs the forward inside it with bit-packed spikes and tdBN -> LIF recomputation (module doc).

    Backward may run after the context has closed.

    Args:
        enabled: False does nothing (yields None), for a flag; so does torch.compile tracing.
        backend: packs the spikes: "auto" (Triton on CUDA, torch on the CPU), "triton" or "torch".

    Yields:
        The context's ``MemorySaving`` state, or None when disabled.
    """
    check_flag("enabled", enabled)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not enabled or torch.compiler.is_compiling():
        yield None
        return
    context = MemorySaving(backend)
    contexts = _stack("contexts")
    with torch.autograd.graph.saved_tensors_hooks(context.pack, _unpack_hook):
        contexts.append(context)
        try:
            yield context
        finally:
            contexts.remove(context)
            context.clear()


def mark_spikes(spikes: torch.Tensor) -> torch.Tensor:
    """Marks ``spikes`` so that what autograd saves of it is kept as bits, inside ``memory_saving``.

    ``nn.LIF`` and ``nn.PLIF`` mark their output themselves. Only a contiguous tensor, or a view of
    one, is packed (others are saved as they are). Outside ``memory_saving`` nothing happens.

    Args:
        spikes: any shape, elements exactly 0 or 1 (not checked).

    Returns:
        ``spikes`` itself.
    """
    check_tensor("spikes", spikes)
    context = active()
    if context is not None:
        context.mark_spikes(spikes)
    return spikes


def residual_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b; inside ``memory_saving``, a LIF layer fed by the sum recomputes it when a is a tdBN
    output (and b another one, or any tensor, kept as autograd would keep it: bits if spikes).

    Args:
        a: e.g. a residual branch's tdBN output [T, B, ...].
        b: the shortcut, a's shape.

    Returns:
        a + b.
    """
    total = a + b
    context = active()
    if context is not None and torch.is_grad_enabled():
        context.add_sum(total, a, b)
    return total


class SavedTensors:
    """Counts what autograd keeps for backward while the context is active: every saved tensor's
    storage (bit-packed spikes: the bits) once, however many ops or views save it. Storages of
    ``exclude`` (e.g. ``model.parameters()``, which exist anyway) are left out. The storages are held
    until the meter is freed, so that two of them can never share an address."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages: dict[int, torch.UntypedStorage] = {}

    def record(self, kept: Union[torch.Tensor, SavedView]) -> None:
        """Counts the storage of one saved tensor (of a packed view: its bits)."""
        tensor = kept.packed.bits if isinstance(kept, SavedView) else kept
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct storages recorded so far."""
        return sum(storage.nbytes() for storage in self.storages.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.record(t)
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        _stack("meters").append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _stack("meters").remove(self)
        return self._hooks.__exit__(*exc)
