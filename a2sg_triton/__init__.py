"""a2sg_triton: fused Triton kernels for spiking neural networks trained with A²SG."""

from . import memory, nn, reference, search
from .search import metrics  # a2sg_triton.metrics: the SGV/TGC definitions
from .ops.stats import CandidateStats, candidate_stats
from .search.controller import A2SG
from .convert import from_spikingjelly
from .ops.ilif import ilif_multistep
from .ops.lif import lif_multistep
from .ops.plif import plif_multistep
from .search.bo import SearchConfig, SearchResult, search_beta
from .ops.surrogate import SURROGATES, surrogate_grad

__all__ = ["A2SG", "CandidateStats", "SURROGATES", "SearchConfig", "SearchResult", "candidate_stats",
           "from_spikingjelly", "ilif_multistep", "lif_multistep", "memory", "metrics", "nn", "plif_multistep",
           "reference", "search", "search_beta", "surrogate_grad"]
__version__ = "0.1.0"
