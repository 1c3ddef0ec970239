"""a2sg_triton.data and a2sg_triton.data.dvs on small files generated here in the real formats (no network)."""

import importlib
import pickle
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from a2sg_triton.data import dvs
from torch.utils.data import Dataset, Subset, TensorDataset

from a2sg_triton.data import (CIFAR_STATS, DATASETS, DatasetInfo, DatasetNotFoundError, batch_mixer,
                              build_datasets, dataset_labels, stratified_order)


def _importable(name):
    try:
        importlib.import_module(name)
        return True
    except Exception:
        return False


HAS_TORCHVISION, HAS_TIMM = _importable("torchvision"), _importable("timm")


@pytest.fixture
def no_vision(monkeypatch):
    """torchvision and timm fail to import, whether or not they are installed."""
    for name in ("torchvision", "timm"):
        monkeypatch.setitem(sys.modules, name, None)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*digits, cifar10, cifar100"):
        build_datasets("mnist")


def test_file_datasets_need_root():
    with pytest.raises(ValueError, match="needs root="):
        build_datasets("cifar10")


# --- digits ------------------------------------------------------------------------------------

def test_digits_shapes_and_split():
    train, test, info = build_datasets("digits")
    assert info == DatasetInfo("digits", 10, 1, 8, False)
    assert (len(train), len(test)) == (1437, 360)  # 1797 samples, 80/20
    x, y = train.tensors
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    # Stratified: each class's share of the test split is its share of the whole set, +-1 sample.
    all_y = torch.cat([y, test.tensors[1]])
    expected = torch.bincount(all_y, minlength=10) * 0.2
    assert (torch.bincount(test.tensors[1], minlength=10) - expected).abs().max() <= 1


def test_digits_normalised_with_train_statistics():
    train, test, _ = build_datasets("digits")
    x = train.tensors[0]
    assert abs(x.mean().item()) < 1e-5 and abs(x.std().item() - 1) < 1e-3
    # The test split uses the train statistics, so it is close to but not exactly standardised.
    assert abs(test.tensors[0].mean().item()) < 0.1


def test_digits_split_is_seeded():
    a, _, _ = build_datasets("digits", seed=0)
    b, _, _ = build_datasets("digits", seed=0)
    c, _, _ = build_datasets("digits", seed=1)
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])


# --- CIFAR -------------------------------------------------------------------------------------

def _write_pickle(path, data, **labels):
    batch = {b"batch_label": b"generated", b"data": data, b"filenames": [b"x.png"] * len(data)}
    batch.update({key.encode(): list(map(int, v)) for key, v in labels.items()})
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def write_cifar10(root, per_batch=4, n_test=3):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        _write_pickle(folder / name, data, labels=labels)
        written[name] = (data, labels)
    return written


def write_cifar100(root, n_train=6, n_test=3):
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        _write_pickle(folder / name, data, fine_labels=fine, coarse_labels=fine // 5)
        written[name] = (data, fine)
    return written


def _expected_image(row, name):
    mean, std = (torch.tensor(s).view(3, 1, 1) for s in CIFAR_STATS[name])
    return (torch.from_numpy(row.reshape(3, 32, 32)).float() / 255 - mean) / std


def test_cifar10_reader(tmp_path):
    written = write_cifar10(tmp_path)
    train, test, info = build_datasets("cifar10", tmp_path)
    assert info == DatasetInfo("cifar10", 10, 3, 32, False)
    assert (len(train), len(test)) == (20, 3)
    data, labels = written["data_batch_3"]  # training samples 8..11, in batch order
    x, y = train[9]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.item() == labels[1]
    torch.testing.assert_close(x, _expected_image(data[1], "cifar10"))
    data, labels = written["test_batch"]
    x, y = test[2]
    assert y.item() == labels[2]
    torch.testing.assert_close(x, _expected_image(data[2], "cifar10"))


def test_cifar100_reader_uses_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    train, test, info = build_datasets("cifar100", tmp_path)
    assert info == DatasetInfo("cifar100", 100, 3, 32, False)
    assert (len(train), len(test)) == (6, 3)
    for split, ds in (("train", train), ("test", test)):
        data, fine = written[split]
        assert [ds[i][1].item() for i in range(len(ds))] == list(fine)
        torch.testing.assert_close(ds[0][0], _expected_image(data[0], "cifar100"))


@pytest.mark.parametrize("name, missing", [("cifar10", "cifar-10-batches-py/data_batch_1"),
                                           ("cifar100", "cifar-100-python/train")])
def test_cifar_missing_files(tmp_path, name, missing):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / missing)) as err:
        build_datasets(name, tmp_path)
    assert "download=True" in str(err.value) and "cs.toronto.edu" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


def test_cifar_one_batch_missing(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_4 not found"):
        build_datasets("cifar10", tmp_path)


def test_cifar_download_without_torchvision(tmp_path, no_vision):
    with pytest.raises(ImportError, match=r"needs torchvision.*a2sg-triton\[vision\].*cifar-10-python"):
        build_datasets("cifar10", tmp_path, download=True)


def test_augment_without_vision_libraries(tmp_path, no_vision):
    write_cifar10(tmp_path)
    with pytest.raises(ImportError, match=r"augment=True needs torchvision.*a2sg-triton\[vision\]"):
        build_datasets("cifar10", tmp_path, augment=True)


def test_paper_recipe_calls(tmp_path, monkeypatch):
    """With stand-ins for torchvision and timm: the exact transforms and CutMix of A.10."""
    calls = {}

    def recorder(name):
        def call(*args, **kwargs):
            calls[name] = (args, kwargs)
            return name
        return call

    fakes = {
        "torchvision.transforms": SimpleNamespace(**{n: recorder(n) for n in (
            "Compose", "RandomCrop", "RandomHorizontalFlip")}),
        "timm.data.auto_augment": SimpleNamespace(rand_augment_transform=recorder("RandAugment")),
        "timm.data": SimpleNamespace(Mixup=recorder("Mixup")),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    write_cifar10(tmp_path)
    train, test, info = build_datasets("cifar10", tmp_path, augment=True)
    assert calls["Compose"] == ((["RandomCrop", "RandomHorizontalFlip", "RandAugment"],), {})
    assert calls["RandomCrop"] == ((32,), {"padding": 4})
    assert calls["RandAugment"] == (("rand-m1-n1-mstd0.4", {"translate_const": 14,
                                                            "img_mean": (125, 123, 114)}), {})
    assert train.augment == "Compose" and test.augment is None
    assert batch_mixer(info, augment=True) == "Mixup"
    assert calls["Mixup"] == ((), dict(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0,
                                       label_smoothing=0.0, num_classes=10))


def test_imagefolder_augment_is_rand_augment(tmp_path, monkeypatch):
    """With stand-ins for torchvision and timm: --augment on ImageFolder is what the help says, crop and
    flip then the paper's RandAugment (timm's hparams for 224 px, ImageNet's mean as fill)."""
    calls = []

    def recorder(name):
        def call(*args, **kwargs):
            calls.append((name, args, kwargs))
            return name
        return call

    class ImageFolder:
        def __init__(self, root, transform):
            self.classes, self.transform = ["ants", "bees"], transform

    transforms = SimpleNamespace(**{n: recorder(n) for n in (
        "Compose", "RandomResizedCrop", "RandomHorizontalFlip", "Resize", "CenterCrop", "ToTensor", "Normalize")})
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", SimpleNamespace(ImageFolder=ImageFolder))
    monkeypatch.setitem(sys.modules, "timm.data.auto_augment",
                        SimpleNamespace(rand_augment_transform=recorder("RandAugment")))
    for split in ("train", "val"):
        (tmp_path / split).mkdir()
    build_datasets("imagefolder", tmp_path, augment=True)
    composed = [args[0] for name, args, _ in calls if name == "Compose"]
    assert composed[-1] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandAugment", "ToTensor", "Normalize"]
    assert ("RandAugment", ("rand-m1-n1-mstd0.4", {"translate_const": 100, "img_mean": (124, 116, 104)}), {}) in calls
    assert composed[0] == ["Resize", "CenterCrop", "ToTensor", "Normalize"]  # evaluation: never augmented


@pytest.mark.skipif(not (HAS_TORCHVISION and HAS_TIMM), reason="needs torchvision and timm")
def test_cifar_augment(tmp_path):
    write_cifar10(tmp_path)
    train, test, _ = build_datasets("cifar10", tmp_path, augment=True)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert test.augment is None


# --- CIFAR10-DVS -------------------------------------------------------------------------------

def _random_events(rng, n):
    return dict(t=np.sort(rng.integers(0, 10**6, n)), x=rng.integers(0, 128, n),
                y=rng.integers(0, 128, n), p=rng.integers(0, 2, n))


def test_events_to_frames_counts_each_slice_per_polarity():
    rng = np.random.default_rng(0)
    ev = _random_events(rng, 1003)
    frames = dvs.events_to_frames(ev["x"], ev["y"], ev["p"], T=4)
    assert frames.shape == (4, 2, 128, 128) and frames.dtype == np.float32
    expected = np.zeros((4, 2, 128, 128), dtype=np.float32)
    for i in range(1003):  # slices of 1003 // 4 = 250 events, the last one 253
        expected[min(i // 250, 3), ev["p"][i], ev["y"][i], ev["x"][i]] += 1
    np.testing.assert_array_equal(frames, expected)
    assert frames.sum(axis=(2, 3)).sum(axis=1).tolist() == [250, 250, 250, 253]


def test_events_to_frames_rejects_bad_events():
    with pytest.raises(ValueError, match="outside the 128x128"):
        dvs.events_to_frames([128], [0], [0], T=1)
    with pytest.raises(ValueError, match="polarities"):
        dvs.events_to_frames([0], [0], [2], T=1)


def test_resize_frames_is_area_interpolation():
    frames = dvs.events_to_frames(*(_random_events(np.random.default_rng(1), 5000)[k]
                                    for k in "xyp"), T=3)
    small = dvs.resize_frames(frames)
    assert small.shape == (3, 2, 48, 48) and small.dtype == np.float32
    np.testing.assert_allclose(small, F.adaptive_avg_pool2d(torch.from_numpy(frames), 48).numpy())
    # Each output cell is a mean of input cells, so a uniform field keeps its value.
    np.testing.assert_allclose(dvs.resize_frames(np.full((1, 2, 128, 128), 3.0, np.float32)), 3.0)


@pytest.fixture
def dvs_src(tmp_path):
    """Three classes (stored out of alphabetical order) of five samples each."""
    rng = np.random.default_rng(2)
    src = tmp_path / "events"
    for name in ("cat", "airplane", "bird"):
        (src / name).mkdir(parents=True)
        for k in range(5):
            np.savez(src / name / f"{name}_{k}.npz", **_random_events(rng, 400 + k))
    return src


def _split(dst):
    return {split: sorted(p.relative_to(dst / split).as_posix() for p in (dst / split).glob("*/*.npy"))
            for split in ("train", "test")}


def test_dvs_conversion_and_loading(tmp_path, dvs_src):
    dst = tmp_path / "frames"
    assert dvs.main([str(dvs_src), str(dst), "--T", "4", "--test-fraction", "0.2"]) == 0
    split = _split(dst)
    assert len(split["train"]) == 12 and len(split["test"]) == 3
    for c, name in enumerate(("airplane", "bird", "cat")):  # alphabetical class indices
        assert sum(f.startswith(f"{c}/{name}_") for f in split["test"]) == 1
    out = np.load(dst / "train" / split["train"][0])
    ev = np.load(dvs_src / "airplane" / (split["train"][0].split("/")[1][:-4] + ".npz"))
    np.testing.assert_array_equal(
        out, dvs.resize_frames(dvs.events_to_frames(ev["x"], ev["y"], ev["p"], T=4)))
    assert not list(dst.rglob(".tmp-*"))

    train, test, info = build_datasets("cifar10-dvs", dst, T=4)
    assert info == DatasetInfo("cifar10-dvs", 10, 2, 48, True)
    assert (len(train), len(test)) == (12, 3)
    x, y = test[2]
    assert x.shape == (4, 2, 48, 48) and x.dtype == torch.float32 and y.item() == 2
    assert torch.equal(build_datasets("cifar10-dvs", dst)[0][0][0], train[0][0])  # T=None: stored T
    with pytest.raises(ValueError, match="T=6 was asked for.*hold T=4"):
        build_datasets("cifar10-dvs", dst, T=6)


def test_dvs_split_is_by_index_per_class(tmp_path, dvs_src):
    """The usual 9:1 convention (here 3:2): each class's last files in name order are its test
    samples, whatever the seed."""
    assert dvs.main([str(dvs_src), str(tmp_path / "a"), "--T", "2", "--test-fraction", "0.4", "--seed", "3"]) == 0
    assert _split(tmp_path / "a")["test"] == [f"{c}/{name}_{k}.npy" for c, name in
                                              enumerate(("airplane", "bird", "cat")) for k in (3, 4)]
    with pytest.raises(ValueError, match="split must be one of"):
        dvs.convert(dvs_src, tmp_path / "b", T=2, split="first")


def test_dvs_random_split_is_seeded(tmp_path, dvs_src):
    def split(seed, name):
        dvs.convert(dvs_src, tmp_path / name, T=2, test_fraction=0.4, seed=seed, split="random")
        return _split(tmp_path / name)

    first = split(0, "a")
    assert split(0, "b") == first
    assert any(split(seed, f"s{seed}") != first for seed in (1, 2, 3))
    assert all(sum(f.startswith(f"{c}/") for f in first["test"]) == 2 for c in range(3))


def test_dvs_cli_errors(tmp_path, dvs_src, capsys):
    assert dvs.main([str(tmp_path / "nowhere"), str(tmp_path / "out"), "--T", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere is not a directory" in err
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    assert dvs.main([str(tmp_path / "empty"), str(tmp_path / "out"), "--T", "2"]) == 2
    assert "no .npz event files" in capsys.readouterr().err

    dst = tmp_path / "frames"
    dst.mkdir()
    (dst / "keep.txt").write_text("x")
    assert dvs.main([str(dvs_src), str(dst), "--T", "2"]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert dvs.main([str(dvs_src), str(dst), "--T", "2", "--force"]) == 0
    assert (dst / "keep.txt").exists() and len(_split(dst)["train"]) > 0


def test_dvs_missing_or_wrong_frames(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "train") + ".*python -m a2sg_triton.data.dvs"):
        build_datasets("cifar10-dvs", tmp_path)
    (tmp_path / "train" / "0").mkdir(parents=True)
    np.save(tmp_path / "train" / "0" / "a.npy", np.zeros((2, 2, 32, 32), np.float32))
    (tmp_path / "test" / "0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"expected \[T, 2, 48, 48\]"):
        build_datasets("cifar10-dvs", tmp_path)
    with pytest.raises(ValueError, match="cannot be downloaded"):
        build_datasets("cifar10-dvs", tmp_path, download=True)


# --- ImageFolder and CutMix --------------------------------------------------------------------

def write_imagefolder(root):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("ants", "bees", "wasps"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (300, 260), (40, 80, 120)).save(root / split / cls / "a.jpg")


def test_imagefolder_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "train") + " not found"):
        build_datasets("imagefolder", tmp_path)


def test_imagefolder_without_torchvision(tmp_path, no_vision):
    write_imagefolder(tmp_path)
    with pytest.raises(ImportError, match=r"imagefolder needs torchvision.*a2sg-triton\[vision\]"):
        build_datasets("imagefolder", tmp_path)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="needs torchvision")
@pytest.mark.parametrize("augment", [False, True])
def test_imagefolder(tmp_path, augment):
    write_imagefolder(tmp_path)
    train, test, info = build_datasets("imagefolder", tmp_path, augment=augment)
    assert info == DatasetInfo("imagefolder", 3, 3, 224, False)
    assert (len(train), len(test)) == (3, 3)
    assert train[1][0].shape == test[1][0].shape == (3, 224, 224) and test[1][1] == 1


def test_batch_mixer_off():
    info = DatasetInfo("cifar10", 10, 3, 32, False)
    assert batch_mixer(info, augment=False) is None
    assert batch_mixer(DatasetInfo("cifar10-dvs", 10, 2, 48, True), augment=True) is None


def test_batch_mixer_without_timm(no_vision):
    with pytest.raises(ImportError, match=r"CutMix needs timm.*a2sg-triton\[vision\]"):
        batch_mixer(DatasetInfo("cifar10", 10, 3, 32, False), augment=True)


@pytest.mark.skipif(not HAS_TIMM, reason="needs timm")
def test_cutmix_soft_targets():
    mixer = batch_mixer(DatasetInfo("cifar10", 10, 3, 32, False), augment=True)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8)
    mixed, soft = mixer(x.clone(), y)
    assert mixed.shape == x.shape and soft.shape == (8, 10)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    F.cross_entropy(torch.randn(8, 10), soft)  # the loss accepts the soft targets


# --- Labels and the stratified order --------------------------------------------------------------

def test_stratified_order_gives_every_class_in_every_prefix():
    labels = torch.arange(10).repeat_interleave(torch.tensor([30, 30, 30, 30, 30, 30, 30, 30, 30, 5]))
    order = stratified_order(labels, seed=0)
    assert sorted(order) == list(range(len(labels)))  # a permutation
    for k in (1, 3, 5):  # the first k*10 samples: k of every class
        assert torch.bincount(labels[order[:10 * k]], minlength=10).tolist() == [k] * 10
    assert torch.bincount(labels[order[:59]], minlength=10).tolist() == [6] * 9 + [5]  # class 9 has only 5
    assert stratified_order(labels, seed=0) == order and stratified_order(labels, seed=1) != order


class Pairs(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(1), 2 - i


def test_dataset_labels():
    assert dataset_labels(TensorDataset(torch.zeros(3, 1), torch.tensor([2, 0, 1]))).tolist() == [2, 0, 1]
    assert dataset_labels(SimpleNamespace(targets=[1, 1, 0])).tolist() == [1, 1, 0]
    assert dataset_labels(Pairs()).tolist() == [2, 1, 0]  # read sample by sample
    assert dataset_labels(Subset(Pairs(), [2, 0])).tolist() == [0, 2]
    _, test, _ = build_datasets("digits")
    assert torch.equal(dataset_labels(test), test.tensors[1])


def test_datasets_tuple():
    assert DATASETS == ("digits", "cifar10", "cifar100", "cifar10-dvs", "imagefolder")
