"""a2sg_triton: fused Triton kernels for spiking neural networks trained with A²SG."""

from . import memory, metrics, nn, reference, search
from .stats import CandidateStats, candidate_stats
from .controller import A2SG
from .convert import from_spikingjelly
from .ilif import ilif_multistep
from .lif import lif_multistep
from .plif import plif_multistep
from .search import SearchConfig, SearchResult, search_beta
from .surrogate import SURROGATES, surrogate_grad

__all__ = ["A2SG", "CandidateStats", "SURROGATES", "SearchConfig", "SearchResult", "candidate_stats",
           "from_spikingjelly", "ilif_multistep", "lif_multistep", "memory", "metrics", "nn", "plif_multistep",
           "reference", "search", "search_beta", "surrogate_grad"]
__version__ = "0.1.0"
