"""Datasets for training spiking networks with A²SG: the paper's CIFAR10/100, CIFAR10-DVS and
ImageNet-style folders, plus scikit-learn's digits as an embedded default that needs no files.

``build_datasets`` returns ``(train, test, DatasetInfo)``; ``batch_mixer`` returns the paper's
CutMix as a batch-level callable; ``stratified_order`` gives an order of a dataset's samples in
which every prefix holds every class (``dataset_labels`` reads the labels). The on-disk layouts and
the augmentation recipe are in docs/data.md. torchvision and timm (``pip install
'a2sg-triton[vision]'``) are imported only for augmentation, downloads, ``imagefolder`` and CutMix.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from ..files import StrPath

if TYPE_CHECKING:
    from PIL.Image import Image

DATASETS = ("digits", "cifar10", "cifar100", "cifar10-dvs", "imagefolder")

# Per-channel mean/std of the training images (pixels in [0, 1]).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name -> (folder under root, train files, test files, label key, archive URL)
_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                b"labels", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"],
                 b"fine_labels", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}
DVS_SIZE = 48
# The side of the square images (or event frames) each dataset yields, known before any file is read.
IMAGE_SIZES = {"digits": 8, "cifar10": 32, "cifar100": 32, "cifar10-dvs": DVS_SIZE, "imagefolder": 224}
_VISION_HINT = "pip install 'a2sg-triton[vision]'"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where they are expected; the message says how to get them."""


@dataclass
class DatasetInfo:
    """What a model needs to know of a dataset: its name, classes, image channels and side."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    sequence: bool  # True when samples are already event frames [T, C, H, W]


def build_datasets(name: str, root: Optional[StrPath] = None, *, T: Optional[int] = None, download: bool = False,
                   augment: bool = False, seed: int = 0) -> tuple[Dataset[Any], Dataset[Any], DatasetInfo]:
    """Returns ``(train_dataset, test_dataset, DatasetInfo)`` for one of ``DATASETS``.

    Samples are ``(x, label)`` with ``x`` float32 ``[C, H, W]`` (static images, which the model
    repeats over its T steps) or ``[T, C, H, W]`` (``cifar10-dvs``) and ``label`` int64.

    Args:
        name: one of ``DATASETS``.
        root: the folder that holds the dataset's files (docs/data.md); ignored for ``digits``.
        T: checked against the stored frames of ``cifar10-dvs``, ignored otherwise.
        download: download CIFAR (needs torchvision) when its files are missing.
        augment: crop, flip and RandAugment on the training images of
            ``cifar10``/``cifar100``/``imagefolder`` only.
        seed: chooses the ``digits`` split.

    Returns:
        (train dataset, test dataset, DatasetInfo).

    Raises:
        DatasetNotFoundError: the files are not there; the message says how to get them.
        ValueError: an unknown name, a missing root or frames that do not fit.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        return _digits(seed)
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=, the folder that holds its files "
                         "(see docs/data.md)")
    root = Path(root)
    if name in _CIFAR_FILES:
        return _cifar(name, root, download, augment)
    if download:
        raise ValueError(f"{name} cannot be downloaded automatically; see docs/data.md")
    if name == "cifar10-dvs":
        return _cifar10_dvs(root, T)
    return _imagefolder(root, augment)


def batch_mixer(info: DatasetInfo,
                augment: bool) -> Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """The paper's CutMix for a batch, or None (no augmentation, or event-frame data).

    timm requires an even batch size: use an even batch size and ``drop_last=True`` (a2sg-train
    does both).

    Args:
        info: the dataset's ``DatasetInfo`` (its class count; event frames are never mixed).
        augment: False gives None.

    Returns:
        timm's ``Mixup`` configured as pure CutMix: a callable ``(x, y) -> (x, soft_targets)``
        that mixes ``x`` [B, C, H, W] in place; ``soft_targets`` is float ``[B, num_classes]``, so
        the loss must accept class probabilities (``torch.nn.functional.cross_entropy`` does).
        None without augmentation or for event-frame data.
    """
    if not augment or info.sequence:
        return None
    mixup = _vision_import("timm.data", "CutMix")
    return mixup.Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0,
                       num_classes=info.num_classes)


def dataset_labels(dataset: Dataset[Any]) -> torch.Tensor:
    """The labels of ``dataset`` as an int64 tensor, read without loading the samples where the
    dataset keeps them: ours (``labels``), torchvision's ImageFolder (``targets``), a
    ``TensorDataset`` (its second tensor) or a ``Subset`` of one; any other dataset is read sample
    by sample."""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    for name in ("labels", "targets"):
        if hasattr(dataset, name):
            return torch.as_tensor(getattr(dataset, name), dtype=torch.int64)
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(cast(Sized, dataset)))], dtype=torch.int64)


def stratified_order(labels: Union[torch.Tensor, Sequence[int]], seed: int = 0) -> list[int]:
    """A seeded order of all samples (a list of indices) in which the classes take turns: turn k holds
    the k-th sample, in a seeded shuffle, of every class that has one, in shuffled order. So the first
    k·C samples hold k of each of C classes (while every class has k), whatever the order of the
    dataset: test sets stored class by class (CIFAR10-DVS, ImageFolder) give every class to an
    instrument that takes the first n samples or to an evaluation limited to its first batches."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    shuffled = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = torch.argsort(labels[shuffled], stable=True)  # positions in shuffled, grouped by class
    grouped = labels[shuffled][by_class]
    turn = torch.empty_like(by_class)
    turn[by_class] = torch.arange(len(labels)) - torch.searchsorted(grouped, grouped)  # rank within its class
    return shuffled[torch.argsort(turn, stable=True)].tolist()


class ImageArrayDataset(Dataset):
    """uint8 images ``[N, C, H, W]`` kept as bytes (4x smaller than floats), normalised per item.

    Args:
        images: uint8 array [N, C, H, W].
        labels: N class indices.
        mean: per-channel mean of the images scaled to [0, 1].
        std: per-channel standard deviation, likewise.
        augment: if given, maps a PIL image to a PIL image (crop, flip, RandAugment).
    """

    def __init__(self, images: np.ndarray, labels: Union[Sequence[int], np.ndarray, torch.Tensor],
                 mean: Sequence[float], std: Sequence[float],
                 augment: Optional[Callable[[Image], Image]] = None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalised float32 image [C, H, W], int64 label)."""
        image = self.images[i]
        if self.augment is not None:
            from PIL import Image  # installed with torchvision, which augment needs anyway
            image = np.asarray(self.augment(Image.fromarray(image.transpose(1, 2, 0)))).transpose(2, 0, 1)
        x = torch.from_numpy(np.ascontiguousarray(image)).float().div_(255)
        return (x - self.mean) / self.std, self.labels[i]


class EventFramesDataset(Dataset):
    """Event frames stored one ``.npy`` ``[T, 2, H, W]`` per sample, loaded when indexed.

    Args:
        files: one .npy file per sample.
        labels: a class index per file.
        shape: the shape every file must hold, (T, 2, H, W).
    """

    def __init__(self, files: Sequence[StrPath], labels: Union[Sequence[int], np.ndarray, torch.Tensor],
                 shape: tuple[int, ...]) -> None:
        self.files = files
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.shape = shape

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 frames [T, 2, H, W], int64 label); ValueError if the file has another shape."""
        frames = np.load(self.files[i])
        if frames.shape != self.shape:
            raise ValueError(f"{self.files[i]} has shape {frames.shape}, expected {self.shape} "
                             "like the rest of the dataset")
        return torch.from_numpy(frames.astype(np.float32, copy=False)), self.labels[i]


def _digits(seed: int) -> tuple[TensorDataset, TensorDataset, DatasetInfo]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, stratify=digits.target, random_state=seed)
    mean, std = x_train.mean(), x_train.std()  # the train split's statistics, applied to both
    split = [TensorDataset(torch.from_numpy((xs - mean) / std), torch.from_numpy(ys).long())
             for xs, ys in ((x_train, y_train), (x_test, y_test))]
    return split[0], split[1], DatasetInfo("digits", 10, 1, IMAGE_SIZES["digits"], False)


def _cifar(name: str, root: Path, download: bool,
           augment: bool) -> tuple[ImageArrayDataset, ImageArrayDataset, DatasetInfo]:
    folder, train_files, test_files, label_key, url = _CIFAR_FILES[name]
    base = root / folder
    if download and not all((base / f).is_file() for f in train_files + test_files):
        # torchvision verifies the archive's md5; we then read the extracted pickles ourselves.
        datasets = _vision_import("torchvision.datasets", f"{name} download=True",
                                  f"or download {url} and extract it into {root} (giving {base})")
        getattr(datasets, name.upper())(str(root), train=True, download=True)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        images: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for f in files:
            path = base / f
            if not path.is_file():
                raise DatasetNotFoundError(
                    f"{name}: {path} not found. Pass download=True ({_VISION_HINT}), or download "
                    f"{url} and extract it into {root} so that {base} holds "
                    f"{', '.join(train_files + test_files)}.")
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    mean, std = CIFAR_STATS[name]
    train = ImageArrayDataset(*read(train_files), mean, std,
                              _cifar_augment(mean) if augment else None)
    test = ImageArrayDataset(*read(test_files), mean, std)
    return train, test, DatasetInfo(name, 10 if name == "cifar10" else 100, 3, IMAGE_SIZES[name], False)


def _cifar_augment(mean: Sequence[float]) -> Any:
    """Random crop 32 (padding 4), horizontal flip, then the paper's RandAugment."""
    transforms = _vision_import("torchvision.transforms", "augment=True")
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        _rand_augment(32, mean),
    ])


def _rand_augment(size: int, mean: Sequence[float]) -> Any:
    """The paper's RandAugment (A.10) on PIL images: one op, magnitude 1, magnitude std 0.4, each op
    applied with probability 0.5 (timm's default); timm's hparams for a ``size``-px image with the
    dataset's mean as fill colour."""
    auto_augment = _vision_import("timm.data.auto_augment", "augment=True")
    hparams = dict(translate_const=int(size * 0.45), img_mean=tuple(round(255 * m) for m in mean))
    return auto_augment.rand_augment_transform("rand-m1-n1-mstd0.4", hparams)


def _cifar10_dvs(root: Path, T: Optional[int]) -> tuple[EventFramesDataset, EventFramesDataset, DatasetInfo]:
    hint = (f"convert the CIFAR10-DVS events with `python -m a2sg_triton.data.dvs SRC {root} --T {T or 4}` "
            "(see docs/data.md)")
    splits: dict[str, EventFramesDataset] = {}
    for split in ("train", "test"):
        files = sorted((root / split).glob("*/*.npy"))
        if not files:
            raise DatasetNotFoundError(
                f"cifar10-dvs: no frames under {root / split}/<class_index>/*.npy; {hint}")
        labels = [int(f.parent.name) for f in files if f.parent.name.isdigit()]
        if len(labels) != len(files) or not all(0 <= c < 10 for c in labels):
            raise ValueError(f"cifar10-dvs: the folders under {root / split} must be class "
                             "indices 0..9")
        shape = np.load(files[0], mmap_mode="r").shape  # reads only the header
        if len(shape) != 4 or shape[1:] != (2, DVS_SIZE, DVS_SIZE):
            raise ValueError(f"cifar10-dvs: {files[0]} has shape {shape}, expected "
                             f"[T, 2, {DVS_SIZE}, {DVS_SIZE}]; {hint}")
        if T is not None and shape[0] != T:
            raise ValueError(f"cifar10-dvs: T={T} was asked for but the frames under {root} "
                             f"hold T={shape[0]}; reconvert with --T {T} or pass T={shape[0]}")
        splits[split] = EventFramesDataset(files, labels, shape)
    if splits["train"].shape != splits["test"].shape:
        raise ValueError(f"cifar10-dvs: train frames {splits['train'].shape} and test frames "
                         f"{splits['test'].shape} differ")
    return splits["train"], splits["test"], DatasetInfo("cifar10-dvs", 10, 2, IMAGE_SIZES["cifar10-dvs"], True)


def _imagefolder(root: Path, augment: bool) -> tuple[Any, Any, DatasetInfo]:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetNotFoundError(
                f"imagefolder: {root / split} not found; expected {root}/train/<class>/*.jpg and "
                f"{root}/val/<class>/*.jpg (the ImageNet layout, see docs/data.md)")
    datasets = _vision_import("torchvision.datasets", "imagefolder")
    transforms = _vision_import("torchvision.transforms", "imagefolder")
    size = IMAGE_SIZES["imagefolder"]
    normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluate = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(size), *normalize])
    train_tf = evaluate
    if augment:
        train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                       _rand_augment(size, IMAGENET_MEAN), *normalize])
    train = datasets.ImageFolder(str(root / "train"), train_tf)
    test = datasets.ImageFolder(str(root / "val"), evaluate)
    if train.classes != test.classes:
        raise ValueError(f"imagefolder: {root}/train and {root}/val hold different classes")
    return train, test, DatasetInfo("imagefolder", len(train.classes), 3, size, False)


def _vision_import(module: str, purpose: str, alternative: str = "") -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ImportError(f"{purpose} needs {package}, which is not installed: {_VISION_HINT}"
                          + (f", {alternative}" if alternative else "")) from err
