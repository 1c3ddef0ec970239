"""Activation memory: spikes kept as bits and tdBN -> LIF recomputed in backward (saving.py;
docs/memory.md)."""

from .saving import SavedTensors, SavedView, active, mark_spikes, memory_saving, residual_add

__all__ = ["SavedTensors", "SavedView", "active", "mark_spikes", "memory_saving", "residual_add"]
