"""Instruments for trained spiking models (the paper's Tables A1-A3, Figs. 1 and 3-7).

activity.py: spike statistics, energy, membrane statistics, weights, spike deletion, t-SNE.
curvature.py: Fisher eigenvalues, loss landscapes, SGV/TGC against beta and over the search history.
"""

from .activity import *  # noqa: F401,F403
from .activity import __all__ as _activity_all
from .curvature import (
    fisher_max_eigenvalue,
    loss_landscape_1d,
    loss_landscape_2d,
    metric_vs_beta,
    plot_fisher_eigenvalues,
    plot_loss_landscape_1d,
    plot_loss_landscape_2d,
    plot_metric_vs_beta,
    plot_search_history,
    search_history_metrics,
)

__all__ = [*_activity_all, "fisher_max_eigenvalue", "loss_landscape_1d", "loss_landscape_2d", "metric_vs_beta",
           "plot_fisher_eigenvalues", "plot_loss_landscape_1d", "plot_loss_landscape_2d", "plot_metric_vs_beta",
           "plot_search_history", "search_history_metrics"]
