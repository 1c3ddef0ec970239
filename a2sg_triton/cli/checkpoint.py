"""a2sg-train's run folder: the checkpoint written after every epoch, and reading it back to resume.

``save_epoch`` writes OUT/checkpoint.pt, then OUT/metrics.jsonl from the checkpoint's copy of the
metrics, each atomically, so the two always describe the same epochs. ``load_checkpoint`` reads
and checks a checkpoint without writing anything; ``restore_checkpoint`` loads it into the run.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .config import LEGACY_SETTINGS, RESUMABLE, TrainError
from ..files import atomic_write

if TYPE_CHECKING:
    from torch.optim.lr_scheduler import LRScheduler

    from ..search.controller import A2SG

CHECKPOINT_FORMAT = "a2sg-train/1"


class _Stateful(Protocol):
    """What a checkpoint saves and restores: a model, optimizer, scheduler or A²SG controller."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> object: ...


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds objects other than tensors and plain data."""


def read_checkpoint(path: Path) -> Any:
    """The contents of a checkpoint file, loaded with ``torch.load(weights_only=True)``: tensors and
    plain Python data only. Run folders travel between people, and a full pickle runs whatever code
    it names when it is loaded, so anything else is refused.

    Args:
        path: the checkpoint file.

    Returns:
        What the file holds.

    Raises:
        UnsafeCheckpoint: the file holds other objects (one line naming the first).
        Exception: whatever torch.load raises on a truncated or foreign file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f"it names {named[1]}" if named else " ".join(str(error).split())[:200]
        raise UnsafeCheckpoint(f"{path.name} holds objects other than tensors and plain data, refused: loading it "
                               f"could run code ({detail})") from None


def load_checkpoint(out: Path, config: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """Reads OUT/checkpoint.pt and checks it belongs to this run; writes nothing.

    Args:
        out: the run folder.
        config: the config resolved from this command line (not read: the checkpoint has its own).
        flags: the flags given explicitly; any but ``RESUMABLE`` must equal the checkpoint's.

    Returns:
        The checkpoint: format, config, epoch, model, optimizer, scheduler, controller, metrics.

    Raises:
        TrainError: no checkpoint, an unreadable one, or one for other settings.
    """
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"--resume {out}: no checkpoint.pt there")
    try:
        state = read_checkpoint(path)
    except UnsafeCheckpoint as error:
        raise TrainError(f"--resume {out}: {error}")
    except Exception as error:  # a truncated or foreign file: pickle, zip and EOF errors alike
        raise TrainError(f"--resume {out}: checkpoint.pt is unreadable ({type(error).__name__}: {error})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"--resume {out}: checkpoint.pt is not an a2sg-train checkpoint")
    saved = {**LEGACY_SETTINGS, **state["config"]}
    for key, value in flags.items():
        if key not in RESUMABLE and value != saved.get(key):
            allowed = ", ".join(f"--{name.replace('_', '-')}" for name in RESUMABLE)
            raise TrainError(f"--resume {out}: the checkpoint is for {key}={saved.get(key)!r}, not {value!r}; a "
                             f"resumed run keeps its settings (only {allowed} may change)")
    return state


def restore_checkpoint(state: Mapping[str, Any], out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                       scheduler: LRScheduler, controller: A2SG) -> tuple[list[dict[str, Any]], int]:
    """Loads a checkpoint that ``load_checkpoint`` read into the run's objects.

    No RNG state is restored: a2sg-train seeds every RNG at the start of each epoch from (seed,
    epoch, rank), so an epoch draws the same whether or not the run stopped before it (older
    checkpoints' RNG states go unused). The model and the A²SG controller are the unwrapped ones
    (no DDP ``module.``, no torch.compile ``_orig_mod.`` in their names), so a checkpoint resumes
    under torchrun, --compile or neither, whichever wrote it.

    Args:
        state: what ``load_checkpoint`` returned.
        out: the run folder (for messages).
        model: the unwrapped model.
        optimizer: the run's optimizer.
        scheduler: the run's learning-rate scheduler.
        controller: the run's A²SG controller.

    Returns:
        (the metrics rows so far, the epoch to continue with).

    Raises:
        TrainError: a part of the checkpoint does not fit this run's objects.
    """
    targets: tuple[tuple[str, _Stateful], ...] = (("model", model), ("optimizer", optimizer),
                                                   ("scheduler", scheduler), ("controller", controller))
    for part, target in targets:
        try:
            target.load_state_dict(state[part])
        except (KeyError, ValueError, RuntimeError) as error:  # torch's messages span lines: one line here
            detail = " ".join(str(error).split())
            raise TrainError(f"--resume {out}: the checkpoint's {part} state does not fit this run ({detail})")
    return state["metrics"], state["epoch"] + 1


def prepare_out_dir(out: Path, resume: bool, force: bool) -> None:
    """Creates the run folder OUT; refuses one that holds another run unless ``force``.

    Args:
        out: the run folder.
        resume: a resumed run: nothing to do.
        force: reuse a folder that holds another run.

    Raises:
        TrainError: OUT holds another run and ``force`` is False.
    """
    if resume:
        return
    if out.exists() and any((out / name).exists() for name in ("checkpoint.pt", "config.json", "metrics.jsonl")):
        if not force:
            raise TrainError(f"--out {out} holds another run; use --resume {out} to continue it or --force to "
                             "overwrite it")
    out.mkdir(parents=True, exist_ok=True)


def save_epoch(out: Path, config: Mapping[str, Any], epoch: int, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: LRScheduler, controller: A2SG,
               history: Sequence[Mapping[str, Any]]) -> None:
    """Checkpoint first, then the metrics file that mirrors it: both always describe the same epochs.

    Args:
        out: the run folder.
        config: the run's settings.
        epoch: the epoch just finished (0-based).
        model: the unwrapped model.
        optimizer: the run's optimizer.
        scheduler: the run's learning-rate scheduler.
        controller: the run's A²SG controller.
        history: every metrics row so far, one per epoch.
    """
    atomic_write(out / "checkpoint.pt", lambda f: torch.save({
        "format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "controller": controller.state_dict(), "metrics": history,
    }, f))
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(out / "metrics.jsonl", lambda f: f.write(text), binary=False)
