"""a2sg_triton: fused Triton kernels for spiking neural networks trained with A²SG."""

from . import nn, reference
from .lif import lif_multistep
from .surrogate import SURROGATES, surrogate_grad

__all__ = ["SURROGATES", "lif_multistep", "nn", "reference", "surrogate_grad"]
__version__ = "0.1.0"
