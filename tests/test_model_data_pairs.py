"""a2sg-train with every model on every dataset it offers (tiny sizes, small files written here in the
real formats): a pair trains, or it is refused up front with one line that says what would work."""

import json

import numpy as np
import pytest

from a2sg_triton.data import DATASETS, IMAGE_SIZES, build_datasets
from a2sg_triton.models import MODELS, accepts_image_size
from a2sg_triton.cli.train import main
from test_data import HAS_TORCHVISION, write_cifar10, write_cifar100, write_imagefolder

T = 1
# the grid strategy searches every layer (candidate statistics on its real shapes) without BoTorch's cost
TINY = ["--epochs", "1", "--limit-batches", "1", "--batch-size", "2", "--T", str(T), "--strategy", "grid", "--n-obs",
        "4", "--n-eval", "4", "--device", "cpu", "--backend", "torch"]
# docs/training.md's table: the VGG-style models need the image size their classifier is built for.
REFUSED = [("vgg16", "digits"), ("vgg16", "imagefolder"),
           ("vggsnn", "digits"), ("vggsnn", "cifar10"), ("vggsnn", "cifar100"), ("vggsnn", "imagefolder"),
           ("digits_cnn", "cifar10"), ("digits_cnn", "cifar100"), ("digits_cnn", "cifar10-dvs"),
           ("digits_cnn", "imagefolder"),
           ("digits_vgg", "cifar10"), ("digits_vgg", "cifar100"), ("digits_vgg", "cifar10-dvs"),
           ("digits_vgg", "imagefolder")]
FITS = [(m, d) for m in MODELS for d in DATASETS if (m, d) not in REFUSED]


def write_dvs_frames(root):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in (0, 1):
            (root / split / str(label)).mkdir(parents=True)
            frames = rng.poisson(0.5, (T, 2, IMAGE_SIZES["cifar10-dvs"], IMAGE_SIZES["cifar10-dvs"]))
            np.save(root / split / str(label) / "sample.npy", frames.astype(np.float32))


WRITERS = {"cifar10": write_cifar10, "cifar100": write_cifar100, "cifar10-dvs": write_dvs_frames,
           "imagefolder": write_imagefolder}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    dirs = {}
    for name, write in WRITERS.items():
        dirs[name] = tmp_path_factory.mktemp(name)
        write(dirs[name])
    return dirs


def data_args(dataset, data_dirs):
    return ["--dataset", dataset, *(["--data", str(data_dirs[dataset])] if dataset in data_dirs else [])]


def needs_torchvision(dataset):
    if dataset == "imagefolder" and not HAS_TORCHVISION:
        pytest.skip("the imagefolder pipeline needs torchvision")


def test_every_pair_is_listed():
    assert sorted(REFUSED + FITS) == sorted((m, d) for m in MODELS for d in DATASETS)
    assert [pair for pair in REFUSED + FITS if not accepts_image_size(pair[0], IMAGE_SIZES[pair[1]])] == REFUSED


@pytest.mark.parametrize("dataset", DATASETS)
def test_image_sizes_are_the_datas(dataset, data_dirs):
    needs_torchvision(dataset)
    _, test_set, info = build_datasets(dataset, data_dirs.get(dataset), T=T)
    assert info.image_size == IMAGE_SIZES[dataset] and test_set[0][0].shape[-2:] == (info.image_size,) * 2


@pytest.mark.parametrize("model, dataset", REFUSED)
def test_pair_refused_in_one_line(model, dataset, data_dirs, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--model", model, *data_args(dataset, data_dirs), *TINY, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"a2sg-train: error: --model {model} cannot take the ")
    working = [m for m, d in FITS if d == dataset]
    assert f"use --model {' / '.join(working)};" in lines[0]
    assert f"{model} trains on --dataset {' / '.join(d for m, d in FITS if m == model)}" in lines[0]
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("model, dataset", FITS)
def test_pair_trains(model, dataset, data_dirs, tmp_path, monkeypatch):
    needs_torchvision(dataset)
    # the end-of-run figures (half of a run's time here) do not depend on the data; test_train.py draws them
    monkeypatch.setattr("a2sg_triton.cli.train.plot_run", lambda out, history, cutmix: None)
    out = tmp_path / "run"
    assert main(["--model", model, *data_args(dataset, data_dirs), *TINY, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["train_loss"] > 0 and rows[0]["search_seconds"] > 0
