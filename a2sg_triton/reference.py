"""Readable eager references of the fused ops, for tests and for reading the math."""

from .lif import lif_multistep_ref as lif_multistep
from .plif import plif_multistep_ref as plif_multistep

__all__ = ["lif_multistep", "plif_multistep"]
