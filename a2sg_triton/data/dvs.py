"""Converts CIFAR10-DVS events into the frames that ``build_datasets("cifar10-dvs")`` reads.

    python -m a2sg_triton.data.dvs SRC DST --T 10 [--test-fraction 0.1] [--split index|random [--seed 0]] [--force]

SRC holds one ``.npz`` per sample with integer arrays ``t, x, y, p`` under ``SRC/<class_name>/``
(SpikingJelly's ``events_np`` layout of the original .aedat files: 128x128 sensor, p in {0, 1}).
Classes sorted alphabetically give the class indices. Each sample's events are split into T
slices of equal event count (SpikingJelly's ``split_by="number"``), counted per polarity into
``[T, 2, 128, 128]``, resized to 48x48 by area interpolation and saved as float32 to
``DST/{train,test}/<class_index>/<name>.npy``. The test samples of each class are, by default, its
last ``round(n × test_fraction)`` files in name order: the usual 9:1 split by index (SpikingJelly's
``split_to_train_test_set(0.9, ...)``); ``--split random`` draws them with ``--seed`` instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from tqdm import tqdm

from ..files import StrPath, atomic_write

SENSOR_SIZE = 128
FRAME_SIZE = 48
SPLITS = ("index", "random")


def events_to_frames(x: ArrayLike, y: ArrayLike, p: ArrayLike, T: int, size: int = SENSOR_SIZE) -> np.ndarray:
    """Event counts per slice, polarity and pixel: the events, in their stored (time) order, split
    into T slices of ``N // T`` events, the last slice taking the remainder.

    Args:
        x: N event columns, integers in [0, size).
        y: N event rows, likewise.
        p: N polarities, 0 or 1.
        T: slices (frames).
        size: the sensor's side.

    Returns:
        float32 counts [T, 2, size, size].
    """
    x, y, p = (np.asarray(a, dtype=np.int64) for a in (x, y, p))
    if len(x) and (x.min() < 0 or x.max() >= size or y.min() < 0 or y.max() >= size):
        raise ValueError(f"event coordinates outside the {size}x{size} sensor")
    if len(p) and not np.isin(p, (0, 1)).all():
        raise ValueError("event polarities must be 0 or 1")
    n = len(x)
    per_slice = n // T
    # As SpikingJelly: with fewer events than slices, all of them fall into the last slice.
    slices = np.minimum(np.arange(n) // per_slice, T - 1) if per_slice else np.full(n, T - 1)
    index = ((slices * 2 + p) * size + y) * size + x
    counts = np.bincount(index, minlength=T * 2 * size * size)
    return counts.reshape(T, 2, size, size).astype(np.float32)


def resize_frames(frames: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """``[T, 2, H, W]`` -> ``[T, 2, size, size]`` by area interpolation (averages over each cell)."""
    return F.interpolate(torch.from_numpy(frames), size=(size, size), mode="area").numpy()


def convert(src: StrPath, dst: StrPath, T: int, test_fraction: float = 0.1, seed: int = 0, force: bool = False,
            split: str = "index") -> dict[str, int]:
    """Converts every ``SRC/<class_name>/*.npz`` into frames [T, 2, 48, 48] under DST (module doc).

    Args:
        src: the folder of per-class folders of .npz event files.
        dst: the output folder; must be empty unless ``force``.
        T: frames per sample.
        test_fraction: the share of each class's samples that goes to test/.
        seed: seeds the permutation of ``split="random"``.
        force: replace DST/train and DST/test when DST is not empty.
        split: "index": each class's test samples are its last ``round(n × test_fraction)`` files
            in name order; "random": as many drawn by a permutation seeded with ``seed``.

    Returns:
        ``{"train": n, "test": n}``, the samples written.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"SRC {src} is not a directory")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir())
    per_class = [sorted((src / name).glob("*.npz")) for name in classes]
    if not any(per_class):
        raise FileNotFoundError(f"no .npz event files under {src}/<class_name>/")
    if dst.is_dir() and any(dst.iterdir()):
        if not force:
            raise FileExistsError(f"DST {dst} is not empty; pass --force to replace its train/ and test/")
        for split in ("train", "test"):
            shutil.rmtree(dst / split, ignore_errors=True)

    rng = np.random.default_rng(seed)
    jobs: list[tuple[Path, Path]] = []
    counts = {"train": 0, "test": 0}
    for c, files in enumerate(per_class):
        n_test = round(len(files) * test_fraction)
        is_test = np.zeros(len(files), dtype=bool)
        if split == "index":
            is_test[len(files) - n_test:] = True
        else:
            is_test[rng.permutation(len(files))[:n_test]] = True
        for f, test in zip(files, is_test):
            part = "test" if test else "train"
            jobs.append((f, dst / part / str(c) / f"{f.stem}.npy"))
            counts[part] += 1

    for src_file, out in tqdm(jobs, desc="cifar10-dvs", unit="sample"):
        with np.load(src_file) as events:
            try:
                frames = events_to_frames(events["x"], events["y"], events["p"], T)
            except (KeyError, ValueError) as err:  # a missing array or bad events
                raise ValueError(f"{src_file}: {err}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        frames = resize_frames(frames)
        atomic_write(out, lambda f: np.save(f, frames))  # a leftover .part is never read as a sample
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m a2sg_triton.data.dvs``; returns the exit status (2 on bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m a2sg_triton.data.dvs",
        description="Convert CIFAR10-DVS events (SRC/<class_name>/*.npz with t, x, y, p) into "
                    "float32 frames DST/{train,test}/<class_index>/<name>.npy of shape [T, 2, 48, 48].")
    parser.add_argument("src", metavar="SRC", help="folder of per-class folders of .npz event files")
    parser.add_argument("dst", metavar="DST", help="output folder (must be empty unless --force)")
    parser.add_argument("--T", type=int, required=True, help="number of frames per sample")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="fraction of each class put in test/ (default 0.1)")
    parser.add_argument("--split", choices=SPLITS, default="index",
                        help="index (default): each class's last files in name order are its test samples, the "
                             "usual 9:1 split; random: drawn with --seed")
    parser.add_argument("--seed", type=int, default=0, help="seed of --split random (default 0)")
    parser.add_argument("--force", action="store_true",
                        help="replace DST/train and DST/test when DST is not empty")
    args = parser.parse_args(argv)
    if args.T < 1:
        parser.error("--T must be >= 1")
    if not 0.0 <= args.test_fraction < 1.0:
        parser.error("--test-fraction must be in [0, 1)")
    try:
        counts = convert(args.src, args.dst, args.T, args.test_fraction, args.seed, args.force, args.split)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {counts['train']} train and {counts['test']} test samples to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
