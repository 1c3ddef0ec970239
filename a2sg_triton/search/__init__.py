"""The β search: SGV/TGC definitions (metrics.py), one Bayesian-optimisation search of one width
(bo.py) and the A²SG controller that runs it inside every neuron layer's backward (controller.py)."""

from .bo import GP_FITS, STRATEGIES, GPState, SearchConfig, SearchResult, search_beta

__all__ = ["GP_FITS", "GPState", "STRATEGIES", "SearchConfig", "SearchResult", "search_beta"]
