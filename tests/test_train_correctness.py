"""a2sg-train's correctness on tiny digits runs: CutMix with an odd last batch, the logged learning
rate, seeded RNGs and workers, exact resume with workers, AdamW's parameter groups, limited
evaluation on a class-ordered test set, what --resume accepts and refuses, DDP evaluation."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import a2sg_triton.cli.train as train_module
from a2sg_triton.cli.checkpoint import CHECKPOINT_FORMAT
from a2sg_triton.cli.config import DEFAULTS, TrainError
from a2sg_triton.data import build_datasets
from a2sg_triton.models import build_model
from a2sg_triton.cli.train import WorkerSeeder, make_loaders, parameter_groups, run_epoch, seed_rngs

TINY = ["--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--n-obs", "8", "--n-eval", "8",
        "--device", "cpu", "--backend", "torch"]


def run(args, capsys=None):
    code = train_module.main([str(a) for a in args])
    return code, (capsys.readouterr() if capsys is not None else None)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def untimed(metrics):
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in metrics]


def checkpoint(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)


class StandInCutMix:
    """timm's ``Mixup`` as a2sg-train calls it (timm is not installed here), reduced to what these
    tests need: it refuses an odd batch with timm's assertion, and draws its mixing weight from numpy
    and its partner order from Python's random, the two RNGs timm's CutMix and RandAugment use."""

    batches = []

    def __init__(self, num_classes, **kwargs):
        self.num_classes = num_classes

    def __call__(self, x, y):
        assert len(x) % 2 == 0, "Batch size should be even when using this"
        StandInCutMix.batches.append(len(x))
        lam = float(np.random.beta(1.0, 1.0))
        partner = torch.arange(len(x)).flip(0) if random.random() < 0.5 else torch.arange(len(x)).roll(1)
        mixed = lam * x + (1 - lam) * x[partner]
        one_hot = F.one_hot(y, self.num_classes).float()
        return mixed, lam * one_hot + (1 - lam) * one_hot[partner]


@pytest.fixture
def cutmix(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.data", SimpleNamespace(Mixup=StandInCutMix))
    StandInCutMix.batches = []
    return StandInCutMix


class RecordingWriter:
    """torch.utils.tensorboard's SummaryWriter (tensorboard is not installed here): records scalars."""

    scalars = []

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def add_scalar(self, tag, value, step):
        RecordingWriter.scalars.append((tag, value, step))

    def close(self):
        pass


@pytest.fixture
def tensorboard(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", SimpleNamespace(SummaryWriter=RecordingWriter))
    RecordingWriter.scalars = []
    return RecordingWriter


def loader_config(**overrides):
    return dict(DEFAULTS, **overrides)


# -- 1. CutMix and the odd last batch ---------------------------------------------------------------


def test_cutmix_run_drops_the_odd_last_batch(tmp_path, cutmix):
    """1437 digits in batches of 200 leave 37: with CutMix that batch is dropped, not a crash."""
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "1", "--limit-batches", "100", "--batch-size", "200", "--augment",
                "--out", out])[0] == 0
    assert cutmix.batches == [200] * 7
    assert rows(out)[0]["train_acc"] > 0


@pytest.mark.parametrize("world", [1, 3, 7])
def test_mixing_loaders_give_even_batches_on_every_rank(world):
    """Under a DistributedSampler with 3 or 7 ranks too, every rank's batches are full (so even) and
    the ranks have as many batches each (DDP steps together)."""
    train_set = TensorDataset(torch.zeros(1437, 1), torch.zeros(1437, dtype=torch.int64))
    test_set = TensorDataset(torch.zeros(10, 1), torch.arange(10))
    config = loader_config(batch_size=32)
    counts = set()
    for rank in range(world):
        train, _, _ = make_loaders(train_set, test_set, config, rank, world, torch.Generator().manual_seed(0),
                                   WorkerSeeder(0, rank), mixing=True)
        sizes = [len(y) for _, y in train]
        assert sizes and set(sizes) == {32}
        counts.add(len(sizes))
    assert len(counts) == 1


def test_no_full_batch_to_mix_is_an_error():
    train_set = TensorDataset(torch.zeros(20, 1), torch.zeros(20, dtype=torch.int64))
    with pytest.raises(TrainError, match="--batch-size 32 is larger than the 10 training samples of a process"):
        make_loaders(train_set, train_set, loader_config(batch_size=32), 0, 2, torch.Generator(), WorkerSeeder(0, 0),
                     mixing=True)


def test_odd_batch_size_with_augment_is_refused(tmp_path, capsys, cutmix):
    code, captured = run([*TINY, "--batch-size", "15", "--augment", "--out", tmp_path / "x"], capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "--batch-size must be even with --augment" in lines[0] and "got 15" in lines[0]
    assert not (tmp_path / "x").exists()


# -- 2. The logged learning rate ----------------------------------------------------------------------


def test_logged_lr_is_the_rate_each_epoch_trained_at(tmp_path, tensorboard):
    """Warm-up over 2 of 3 epochs from 1e-4 to 5e-3: the optimizer trains at 1e-4, 2.55e-3, 5e-3, and
    metrics.jsonl and TensorBoard say so (not the next epoch's 2.55e-3, 5e-3, 0)."""
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "3", "--warmup-epochs", "2", "--lr", "5e-3", "--lr-start", "1e-4",
                "--limit-batches", "1", "--tensorboard", "--out", out])[0] == 0
    expected = [1e-4, 2.55e-3, 5e-3]
    assert [row["lr"] for row in rows(out)] == pytest.approx(expected, rel=1e-12)
    logged = [(step, value) for tag, value, step in tensorboard.scalars if tag == "lr"]
    assert logged == [(0, pytest.approx(1e-4, rel=1e-12)), (1, pytest.approx(2.55e-3, rel=1e-12)),
                      (2, pytest.approx(5e-3, rel=1e-12))]


# -- 3. Seeded RNGs, also in the loader's workers -------------------------------------------------------


def test_augment_runs_with_one_seed_are_identical(tmp_path, cutmix):
    """The stand-in CutMix draws from numpy and random: both are seeded, so two runs agree."""
    metrics = []
    for name in ("a", "b"):
        assert run([*TINY, "--augment", "--out", tmp_path / name])[0] == 0
        metrics.append(untimed(rows(tmp_path / name)))
    assert metrics[0] == metrics[1]


class Draws(Dataset):
    """Each sample is what the worker's torch, numpy and random draw, and the worker's id."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([torch.rand(()).item(), np.random.rand(), random.random(), info.id], dtype=torch.float64)


def test_worker_rngs_are_seeded_from_seed_epoch_rank_and_worker():
    """A worker's first draws are those of seed_rngs(seed, epoch, rank, worker id); another epoch draws
    others. (Batches of 2 of 4 samples: each of the 2 workers makes one batch.)"""
    seeder = WorkerSeeder(seed=5, rank=1)
    seeder.epoch = 3
    first = {int(b[0, 3]): b[0, :3].tolist() for b in DataLoader(Draws(), batch_size=2, num_workers=2,
                                                                  worker_init_fn=seeder)}
    assert sorted(first) == [0, 1]
    for worker, draws in first.items():
        seed_rngs(5, 3, 1, worker)
        assert draws == [torch.rand(()).item(), np.random.rand(), random.random()]
    seeder.epoch = 4
    later = {int(b[0, 3]): b[0, :3].tolist() for b in DataLoader(Draws(), batch_size=2, num_workers=2,
                                                                  worker_init_fn=seeder)}
    assert all(later[w] != first[w] for w in first)


# -- 4. Exact resume with workers -------------------------------------------------------------------------


def test_resume_equals_uninterrupted_with_a_worker(tmp_path, cutmix):
    """--workers 1 and CutMix: 2 epochs straight == 1 epoch, resume, 1 epoch, bit for bit."""
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    extra = ["--workers", "1", "--augment"]
    assert run([*TINY, *extra, "--out", straight])[0] == 0
    assert run([*TINY, *extra, "--out", staged, "--stop-after", "1"])[0] == 0
    assert run(["--resume", staged, "--workers", "1"])[0] == 0
    a, b = checkpoint(straight), checkpoint(staged)
    assert untimed(a["metrics"]) == untimed(b["metrics"])
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


# -- 5. AdamW's parameter groups ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, decayed, not_decayed", [("vgg16", 14, 27), ("resnet19", 21, 41)])
def test_norms_and_biases_are_not_decayed(name, decayed, not_decayed):
    model = build_model(name, num_classes=10, in_channels=3, T=1, backend="torch")
    groups = parameter_groups(model, 0.02)
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(decayed, 0.02), (not_decayed, 0.0)]
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() <= 1 for p in groups[1]["params"])
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].endswith((".weight", ".bias")) for p in groups[1]["params"])
    assert [(len(g["params"]), g["weight_decay"]) for g in parameter_groups(model, 0.02, True)] == [
        (decayed + not_decayed, 0.02)]


def test_decay_groups_in_a_run_and_the_old_behaviour(tmp_path):
    out = tmp_path / "run"
    assert run([*TINY, "--epochs", "1", "--out", out])[0] == 0
    assert [g["weight_decay"] for g in checkpoint(out)["optimizer"]["param_groups"]] == [1e-2, 0.0]
    old = tmp_path / "old"
    assert run([*TINY, "--decay-norm-and-bias", "--stop-after", "1", "--out", old])[0] == 0
    assert [g["weight_decay"] for g in checkpoint(old)["optimizer"]["param_groups"]] == [1e-2]
    # a checkpoint from before the flag existed (its config lacks it) resumes with its one group
    state = checkpoint(old)
    del state["config"]["decay_norm_and_bias"]
    torch.save(state, old / "checkpoint.pt")
    assert run(["--resume", old])[0] == 0
    assert len(checkpoint(old)["optimizer"]["param_groups"]) == 1 and checkpoint(old)["epoch"] == 1


# -- 6. Limited evaluation on a class-ordered test set --------------------------------------------------------


def test_limited_evaluation_sees_every_class_of_a_class_ordered_test_set():
    labels = torch.arange(10).repeat_interleave(30)  # stored class by class, as CIFAR10-DVS and ImageFolder
    test_set = TensorDataset(torch.zeros(300, 1), labels)
    train_set = TensorDataset(torch.zeros(64, 1), torch.zeros(64, dtype=torch.int64))
    for world in (1, 2):  # the first batch of every rank: together, 2 samples of every class per rank
        first = [next(iter(make_loaders(train_set, test_set, loader_config(batch_size=20, limit_batches=1), rank,
                                        world, torch.Generator(), WorkerSeeder(0, rank), mixing=False)[1]))[1]
                 for rank in range(world)]
        assert torch.bincount(torch.cat(first), minlength=10).tolist() == [2 * world] * 10
    # without a limit every sample is evaluated once, over the ranks
    seen = [y for rank in range(2) for _, y in make_loaders(train_set, test_set, loader_config(batch_size=20), rank, 2,
                                                           torch.Generator(), WorkerSeeder(0, rank), False)[1]]
    assert torch.cat(seen).sort().values.tolist() == labels.tolist()


# -- 7. What --resume accepts and refuses ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run"
    assert run([*TINY, "--stop-after", "1", "--out", out])[0] == 0
    return out


@pytest.mark.parametrize("args, message", [
    (["--lr", "1"], "the checkpoint is for lr=0.005, not 1.0"),
    (["--weight-decay", ".5"], "the checkpoint is for weight_decay=0.01, not 0.5"),
    (["--amp", "bf16"], "the checkpoint is for amp='auto', not 'bf16'"),
    (["--augment"], "the checkpoint is for augment=False, not True"),
    (["--decay-norm-and-bias"], "decay_norm_and_bias=False, not True"),
    (["--seed", "3"], "the checkpoint is for seed=0, not 3"),
    (["--neuron", "plif"], "the checkpoint is for neuron='lif', not 'plif'"),
    (["--rmp-loss", "0.1"], "the checkpoint is for rmp_loss=0.0, not 0.1"),
    (["--model", "spikformer"], "the checkpoint is for model='digits_cnn', not 'spikformer'"),
    (["--preset", "digits"], "--preset cannot be given with --resume"),
    (["--force"], "--force cannot be given with --resume"),
    (["--out", "elsewhere"], "--out cannot be given with --resume"),
])
def test_resume_refuses_flags_that_change_the_run(stopped_run, args, message, capsys):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir()}
    code, captured = run(["--resume", stopped_run, *args], capsys)
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("a2sg-train: error:") and message in lines[0]
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir()} == before


def test_resume_accepts_machine_options_and_unchanged_settings(tmp_path, monkeypatch, tensorboard):
    """--data (a moved dataset), --workers, --device and --tensorboard take effect; a run setting given
    with its own value is accepted."""
    roots = []

    def recording_build_datasets(name, root=None, **kwargs):
        roots.append(root)
        return build_datasets(name, root, **kwargs)

    monkeypatch.setattr(train_module, "build_datasets", recording_build_datasets)
    old_data, new_data = tmp_path / "old", tmp_path / "new"
    old_data.mkdir()
    new_data.mkdir()
    out = tmp_path / "run"
    assert run([*TINY, "--data", old_data, "--stop-after", "1", "--out", out])[0] == 0
    assert run(["--resume", out, "--data", new_data, "--workers", "1", "--device", "cpu", "--tensorboard",
                "--lr", "5e-3"])[0] == 0
    assert roots == [str(old_data), str(new_data)]
    config = json.loads((out / "config.json").read_text())
    assert (config["data"], config["workers"], config["tensorboard"]) == (str(new_data), 1, True)
    assert [step for tag, _, step in tensorboard.scalars if tag == "lr"] == [1]
    assert checkpoint(out)["epoch"] == 1


def test_resume_with_missing_data_points_to_the_data_option(tmp_path, capsys):
    """The run's dataset is no longer where it was: the one-line error says how to point at it."""
    out, gone = tmp_path / "run", tmp_path / "gone"
    assert run([*TINY, "--stop-after", "1", "--out", out])[0] == 0
    state = checkpoint(out)
    state["config"].update(dataset="cifar10", data=str(gone))  # as if it had trained on CIFAR10 from there
    torch.save(state, out / "checkpoint.pt")
    code, captured = run(["--resume", out], capsys)
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "cifar-10-batches-py" in lines[0]
    assert lines[0].endswith("(if the data moved, pass --data DIR with --resume)")


# -- 10. Evaluation under DDP uses rank 0's BN statistics -------------------------------------------------------


@pytest.mark.slow
def test_ddp_evaluates_with_rank_zeros_batch_norm_statistics(tmp_path):
    """Two torchrun processes train and evaluate their halves of the test set; the sums equal those of
    the checkpoint (rank 0's model) evaluated on the same halves in one process. With its own BN
    running statistics (updated by its own last batch) rank 1 would give other numbers."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # 2 epochs at the full rate: the BN running statistics settle enough for a working network in eval mode
    args = ["--epochs", "2", "--warmup-epochs", "0", "--batch-size", "64", "--n-obs", "8", "--n-eval", "8",
            "--device", "cpu", "--backend", "torch", "--out", out]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "a2sg_triton.cli.train", *map(str, args)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = checkpoint(out)
    assert state["format"] == CHECKPOINT_FORMAT
    config = state["config"]
    _, test_set, info = build_datasets("digits", seed=config["seed"])
    model = build_model(config["model"], num_classes=10, in_channels=1, T=config["T"], backend="torch")
    model.load_state_dict(state["model"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: the same batches give the same sums
    try:
        sums = [run_epoch(model, DataLoader(torch.utils.data.Subset(test_set, range(rank, len(test_set), 2)),
                                            batch_size=64), config, torch.device("cpu")) for rank in range(2)]
    finally:
        torch.set_num_threads(threads)
    loss, correct, count = (sum(s[i] for s in sums) for i in range(3))
    row = state["metrics"][-1]
    assert count == len(test_set) and row["test_acc"] > 0.5
    assert row["test_loss"] == pytest.approx(loss / count, rel=1e-9) and row["test_acc"] == correct / count


# -- 9. The accuracy figure says what CutMix's train accuracy is -------------------------------------------------


@pytest.mark.parametrize("cutmix, label", [(False, "train"),
                                           (True, "train (CutMix-mixed images, each against its own label)")])
def test_accuracy_plot_names_the_cutmix_train_accuracy(cutmix, label, monkeypatch):
    import a2sg_triton.cli.report as report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig))
    history = [{"epoch": 0, "train_acc": 0.5, "test_acc": 0.6, "beta": {"lif": [0.5, 0.5]}}]
    report.plot_run(Path("unused"), history, cutmix=cutmix)
    legend = figures[-1].axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [label, "test"]
