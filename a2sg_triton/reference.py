"""Readable eager references of the fused ops, for tests and for reading the math."""

from .ops.ilif import ilif_multistep_ref as ilif_multistep
from .ops.lif import lif_multistep_ref as lif_multistep
from .ops.plif import plif_multistep_ref as plif_multistep

__all__ = ["ilif_multistep", "lif_multistep", "plif_multistep"]
