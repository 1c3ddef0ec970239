"""Matplotlib figures without pyplot, saved atomically."""

from .files import atomic_write


def new_figure(rows=1, columns=1, panel_size=(4.5, 3.5), sharey=False):
    """A matplotlib Figure and its [rows, columns] axes, without pyplot: no global state, and
    PNGs render with Agg whatever backend the caller's matplotlib has selected."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows))
    return fig, fig.subplots(rows, columns, sharey=sharey, squeeze=False)


def save_figure(fig, path):
    """Writes a matplotlib Figure as PNG, atomically."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
