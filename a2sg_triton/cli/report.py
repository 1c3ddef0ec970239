"""What a2sg-train shows of a run: the figures, the closing summary and the TensorBoard log."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from .config import TrainError
from ..figures import new_figure, save_figure

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

BETA_COLUMNS = 6  # beta.png: one panel per spiking layer, this many to a row


def beta_series(betas: Sequence[Union[float, list[float]]]) -> Iterator[tuple[str, float]]:
    """(label, width) pairs of one layer's logged widths: "t0", "t1", ... for a [T] list, "t0/level1",
    ... for I-LIF's [T, D] nested list."""
    for t, beta in enumerate(betas):
        if isinstance(beta, list):
            yield from ((f"t{t}/level{i + 1}", b) for i, b in enumerate(beta))
        else:
            yield f"t{t}", beta


def plot_run(out: Path, history: Sequence[Mapping[str, Any]], cutmix: bool = False) -> None:
    """beta.png: every spiking layer's beta per timestep (and I-LIF level) over the epochs (a panel
    each, titled with the layer's name); accuracy.png: the accuracy curves.

    Args:
        out: the run folder the PNGs are written to.
        history: the metrics rows, one per epoch (at least one).
        cutmix: the train accuracy was measured on CutMix-mixed images against each image's own
            label, which the legend says (it is not comparable with the test accuracy on clean images).
    """
    epochs = [row["epoch"] + 1 for row in history]
    layers = list(history[0]["beta"])
    columns = min(len(layers), BETA_COLUMNS)
    fig, axes = new_figure(-(-len(layers) // columns), columns, panel_size=(3, 3), sharey=True)
    panels = axes.flatten()
    for ax, name in zip(panels, layers):
        series: dict[str, list[float]] = {}
        for row in history:
            for label, beta in beta_series(row["beta"][name]):
                series.setdefault(label, []).append(beta)
        for label, values in series.items():
            ax.plot(epochs, values, label=label)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("epoch")
    for ax in panels[len(layers):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("β")
    panels[len(layers) - 1].legend(fontsize="small")
    save_figure(fig, out / "beta.png")
    fig, axes = new_figure(panel_size=(5, 3.5))
    ax = axes[0][0]
    train_label = "train (CutMix-mixed images, each against its own label)" if cutmix else "train"
    ax.plot(epochs, [row["train_acc"] for row in history], label=train_label)
    ax.plot(epochs, [row["test_acc"] for row in history], label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
    save_figure(fig, out / "accuracy.png")


def summary(config: Mapping[str, Any], out: Path, history: Sequence[Mapping[str, Any]]) -> str:
    """The closing summary a2sg-train prints: accuracy, spikes, time and the search's share, one
    line each."""
    last, best = history[-1], max(history, key=lambda row: row["test_acc"])
    total = sum(row["epoch_seconds"] for row in history)
    search = sum(row["search_seconds"] for row in history)
    return "\n".join([
        f"{config['model']} on {config['dataset']}, {config['neuron']}, {config['surrogate']} + {config['adapt']}, "
        f"T={config['T']}" + (f", RMP-loss lambda {config['rmp_loss']:g}" if config["rmp_loss"] else ""),
        f"test accuracy {last['test_acc']:.4f} (best {best['test_acc']:.4f} at epoch {best['epoch'] + 1})",
        f"spikes per sample {sum(last['spikes_per_sample'].values()):.1f}, "
        f"mean firing rate {last['firing_rate_mean']:.4f}",
        f"training {total:.1f}s, of which search {search:.1f}s ({100 * search / max(total, 1e-9):.1f}%)",
        *_search_lines(history),
        f"run folder {out}",
    ])


def _search_lines(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """The search log over the run (rows written before it existed have none)."""
    logs = [row["search"] for row in history if "search" in row]
    if not logs or not sum(log["searches"] for log in logs):
        return []
    last = logs[-1]
    return [f"searches {sum(log['searches'] for log in logs)}: {sum(log['fell_back'] for log in logs)} GP choices "
            f"fell back, {sum(log['flat'] for log in logs)} flat curves (width kept); widths at the range ends "
            f"now: {last['at_lower_end']} low, {last['at_upper_end']} high of {last['widths']}"]


def tensorboard_writer(out: Path) -> SummaryWriter:
    """A SummaryWriter logging to OUT/tensorboard; TrainError without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("--tensorboard needs the tensorboard package: pip install 'a2sg-triton[tensorboard]'")
    return SummaryWriter(out / "tensorboard")


def log_epoch(writer: Optional[SummaryWriter], row: Mapping[str, Any]) -> None:
    """One metrics row as TensorBoard scalars (its epoch as the step); nothing without a writer."""
    if writer is None:
        return
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "firing_rate_mean", "search_seconds",
                "train_rmp_loss"):
        if key in row:
            writer.add_scalar(key, row[key], row["epoch"])
    for name, betas in row["beta"].items():
        for label, beta in beta_series(betas):
            writer.add_scalar(f"beta/{name}/{label}", beta, row["epoch"])
