"""Datasets for a2sg-train and your own loops (datasets.py; docs/data.md) and the CIFAR10-DVS frame
conversion (dvs.py)."""

from .datasets import (
    CIFAR_STATS,
    DATASETS,
    DVS_SIZE,
    IMAGE_SIZES,
    DatasetInfo,
    DatasetNotFoundError,
    EventFramesDataset,
    ImageArrayDataset,
    batch_mixer,
    build_datasets,
    dataset_labels,
    stratified_order,
)

__all__ = ["CIFAR_STATS", "DATASETS", "DVS_SIZE", "IMAGE_SIZES", "DatasetInfo", "DatasetNotFoundError",
           "EventFramesDataset", "ImageArrayDataset", "batch_mixer", "build_datasets", "dataset_labels",
           "stratified_order"]
