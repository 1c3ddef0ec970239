"""Matplotlib figures without pyplot, saved atomically."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .files import StrPath, atomic_write

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


def new_figure(rows: int = 1, columns: int = 1, panel_size: tuple[float, float] = (4.5, 3.5),
               sharey: bool = False) -> tuple[Figure, np.ndarray]:
    """A matplotlib Figure and its [rows, columns] axes, without pyplot: no global state, and
    PNGs render with Agg whatever backend the caller's matplotlib has selected.

    Args:
        rows: panel rows.
        columns: panel columns.
        panel_size: (width, height) of one panel in inches.
        sharey: the panels share their y axis.

    Returns:
        (figure, axes), axes a [rows, columns] object array of matplotlib Axes (never squeezed).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    return fig, fig.subplots(rows, columns, sharey=sharey, squeeze=False)


def save_figure(fig: Figure, path: StrPath) -> None:
    """Writes a matplotlib Figure as PNG (100 dpi, tight layout), atomically (``atomic_write``)."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
