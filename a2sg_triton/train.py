"""a2sg-train: train a spiking network with a chosen surrogate and A²SG adaptation mode.

    a2sg-train                                  # A²SG on the embedded digits data, on the CPU
    a2sg-train --preset paper-cifar10 --data ~/data/cifar10 --out runs/c10
    a2sg-train --resume runs/c10                # continue exactly where the run stopped
    torchrun --nproc_per_node 4 -m a2sg_triton.train --preset paper-cifar10 --data ...

Every epoch appends one JSON line to OUT/metrics.jsonl and rewrites OUT/checkpoint.pt atomically;
at the end OUT/beta.png and OUT/accuracy.png are drawn and a summary is printed.
"""

import argparse
import datetime
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from .controller import ADAPT_MODES, A2SG
from .data import DATASETS, DatasetNotFoundError, batch_mixer, build_datasets
from .models import MODELS, build_model, model_input
from .nn import LIF
from .search import STRATEGIES
from .surrogate import SURROGATES
from .utils import atomic_write, new_figure, save_figure

CHECKPOINT_FORMAT = "a2sg-train/1"
# Settings a resumed run must share with its checkpoint: anything that changes the model or the data.
RUN_IDENTITY = ("model", "dataset", "T", "surrogate", "tau", "v_th", "h", "adapt")

_PAPER_CIFAR = dict(model="vgg16", T=4, epochs=310, warmup_epochs=20, batch_size=100, augment=True,
                    surrogate="asy", adapt="spatiotemporal")
PRESETS = {
    # The embedded default: trains in about a minute on 2 CPU cores.
    "digits": dict(model="digits_cnn", dataset="digits", T=4, epochs=12, warmup_epochs=1, batch_size=32,
                   lr=5e-3, lr_start=1e-4, weight_decay=1e-2, augment=False, surrogate="asy",
                   adapt="spatiotemporal"),
    # Paper A.10.
    "paper-cifar10": dict(_PAPER_CIFAR, dataset="cifar10", lr=6e-3, lr_start=1e-5, weight_decay=2e-2),
    "paper-cifar100": dict(_PAPER_CIFAR, dataset="cifar100", lr=5e-3, lr_start=1e-4, weight_decay=4e-2),
    "paper-cifar10-dvs": dict(model="vggsnn", dataset="cifar10-dvs", T=4, epochs=200, warmup_epochs=20,
                              batch_size=32, lr=6e-3, lr_start=1e-5, weight_decay=2e-2, augment=False,
                              surrogate="asy", adapt="spatiotemporal"),
}
DEFAULTS = dict(PRESETS["digits"], strategy="bo", tau=2.0, v_th=1.0, h=0.5, beta_init=0.5, n_obs=100,
                n_eval=150, radius=0.05, every=1, seed=0, backend="auto", device="auto", amp="auto",
                workers=0, data=None, download=False, limit_batches=None, tensorboard=False, compile=False)


@dataclass
class RunOptions:
    """How this invocation runs, not what it trains: never saved with the run."""

    out: Path
    resume: bool
    force: bool
    stop_after: Optional[int]


class TrainError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise TrainError(message)


def build_parser():
    p = _Parser(prog="a2sg-train", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = p.add_argument
    arg("--preset", choices=sorted(PRESETS), help="base settings (default: digits); flags override them")
    arg("--model", choices=MODELS)
    arg("--dataset", choices=DATASETS)
    arg("--data", metavar="DIR", help="dataset folder (not needed for digits)")
    arg("--download", action="store_true", default=None, help="download CIFAR when online")
    arg("--surrogate", choices=SURROGATES)
    arg("--adapt", choices=ADAPT_MODES)
    arg("--strategy", choices=STRATEGIES)
    arg("--T", type=int, help="timesteps")
    arg("--epochs", type=int)
    arg("--warmup-epochs", type=int)
    arg("--batch-size", type=int)
    arg("--lr", type=float, help="peak learning rate")
    arg("--lr-start", type=float, help="learning rate at the start of the warm-up")
    arg("--weight-decay", type=float)
    arg("--augment", action=argparse.BooleanOptionalAction, default=None, help="CutMix + RandAugment")
    arg("--tau", type=float)
    arg("--v-th", type=float)
    arg("--h", type=float, help="asy surrogate offset (>= 0.5)")
    arg("--beta-init", type=float)
    arg("--n-obs", type=int)
    arg("--n-eval", type=int)
    arg("--radius", type=float)
    arg("--every", type=int, help="search every this many epochs")
    arg("--seed", type=int)
    arg("--backend", choices=("auto", "triton", "torch"))
    arg("--device", help="auto, cpu, cuda or cuda:N")
    arg("--amp", choices=("auto", "bf16", "none"), help="bf16 autocast (auto: on CUDA)")
    arg("--workers", type=int, help="data loader worker processes")
    arg("--limit-batches", type=int, help="at most this many batches per epoch and evaluation (smoke runs)")
    arg("--tensorboard", action="store_true", default=None, help="also log to OUT/tensorboard")
    arg("--compile", action="store_true", default=None, help="torch.compile the model (the search still runs)")
    arg("--out", metavar="DIR", help="run folder (default: runs/<dataset>-<model>-<surrogate>-<adapt>-<time>)")
    arg("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    arg("--force", action="store_true", help="reuse an --out folder that holds another run")
    arg("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (resume later)")
    return p


def resolve_config(argv):
    """Preset, then explicit flags; checks values. Returns (config, explicit flags, run options)."""
    args = build_parser().parse_args(argv)
    config = dict(DEFAULTS, **PRESETS.get(args.preset or "digits", {}))
    run_options = ("preset", "out", "resume", "force", "stop_after")
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in run_options}
    config.update(flags)
    for name in ("T", "epochs", "batch_size", "n_obs", "every"):
        if config[name] < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {config[name]}")
    for name in ("warmup_epochs", "workers", "seed"):
        if config[name] < 0:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 0, got {config[name]}")
    for name in ("limit_batches", "stop_after"):
        value = config.get(name, getattr(args, name))
        if value is not None and value < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("lr", "lr_start", "tau", "beta_init", "radius"):
        if not config[name] > 0:
            raise TrainError(f"--{name.replace('_', '-')} must be > 0, got {config[name]}")
    if config["surrogate"] == "asy" and config["h"] < 0.5:
        raise TrainError(f"--h must be >= 0.5 for the asy surrogate, got {config['h']}")
    if config["dataset"] != "digits" and config["data"] is None and not args.resume:
        raise TrainError(f"--dataset {config['dataset']} needs --data DIR, the folder that holds it (docs/data.md)")
    if config["data"] is not None and not Path(config["data"]).exists():
        raise TrainError(f"--data {config['data']}: no such folder")
    if args.resume:
        out = Path(args.resume)
    elif args.out:
        out = Path(args.out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{config['dataset']}-{config['model']}-{config['surrogate']}-{config['adapt']}-{stamp}"
    return config, flags, RunOptions(out, args.resume is not None, args.force, args.stop_after)


# ---------------------------------------------------------------------------------------------
# Distributed set-up (torchrun) and devices.
# ---------------------------------------------------------------------------------------------


def setup_distributed(config):
    """Returns (device, rank, world size); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want = config["device"]
    cuda = torch.cuda.is_available() and want != "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {want}: CUDA is not available")
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return device, dist.get_rank(), world
    if want == "auto":
        return torch.device("cuda" if cuda else "cpu"), 0, 1
    return torch.device(want), 0, 1


def all_reduce_sum(values, device, world):
    """Sums a list of floats over the ranks."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------


def load_checkpoint(out, config, flags):
    """Reads OUT/checkpoint.pt and checks it belongs to this run; writes nothing."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        raise TrainError(f"--resume {out}: no checkpoint.pt there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: pickle, zip and EOF errors alike
        raise TrainError(f"--resume {out}: checkpoint.pt is unreadable ({type(error).__name__}: {error})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"--resume {out}: checkpoint.pt is not an a2sg-train checkpoint")
    saved = state["config"]
    for key in RUN_IDENTITY:
        if key in flags and flags[key] != saved[key]:
            raise TrainError(f"--resume {out}: the checkpoint is for {key}={saved[key]!r}, not {flags[key]!r}")
    return state


def prepare_out_dir(out, resume, force):
    if resume:
        return
    if out.exists() and any((out / name).exists() for name in ("checkpoint.pt", "config.json", "metrics.jsonl")):
        if not force:
            raise TrainError(f"--out {out} holds another run; use --resume {out} to continue it or --force to "
                             "overwrite it")
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def lr_factor(epoch, config):
    """Linear warm-up from lr_start to lr, then cosine decay to 0 (per epoch)."""
    warmup, epochs = config["warmup_epochs"], config["epochs"]
    start = config["lr_start"] / config["lr"]
    if epoch < warmup:
        return start + (1 - start) * epoch / warmup
    progress = (epoch - warmup) / max(epochs - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


class SpikeCounter:
    """Counts the spikes every LIF layer emits (forward hooks), per layer."""

    def __init__(self, model):
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, LIF)}
        self.spikes = {name: 0.0 for name in self.layers}
        self.neurons = {name: 0 for name in self.layers}  # per sample and timestep
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]

    def _hook(self, name):
        def hook(module, inputs, output):
            self.spikes[name] += float(output.detach().sum())
            self.neurons[name] = output[0, 0].numel()
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def run_epoch(model, loader, config, device, optimizer=None, mixer=None, autocast=nullcontext, progress=False):
    """One pass over loader; trains when an optimizer is given. Returns summed loss, correct, count."""
    training = optimizer is not None
    model.train(training)
    total_loss = correct = count = 0.0
    limit = config["limit_batches"] or len(loader)
    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, pipes)
    bar = tqdm(loader, total=min(limit, len(loader)), leave=False, disable=None if progress else True, desc="train")
    with torch.set_grad_enabled(training):
        for i, (x, y) in enumerate(bar):
            if i >= limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            target = y
            if mixer is not None:
                x, target = mixer(x, y)
            x = model_input(x, config["T"])
            with autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), target)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += float(loss.detach()) * y.shape[0]
            correct += float((logits.argmax(1) == y).sum())
            count += y.shape[0]
            bar.set_postfix(loss=f"{total_loss / count:.3f}", acc=f"{correct / count:.3f}", refresh=False)
    return total_loss, correct, count


def make_loaders(train_set, test_set, config, rank, world, data_generator):
    common = dict(batch_size=config["batch_size"], num_workers=config["workers"],
                  pin_memory=torch.cuda.is_available(), persistent_workers=config["workers"] > 0)
    if world > 1:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config["seed"])
        test_set = Subset(test_set, range(rank, len(test_set), world))  # exact: every sample once
    else:
        sampler = RandomSampler(train_set, generator=data_generator)
    train = DataLoader(train_set, sampler=sampler, generator=data_generator, drop_last=False, **common)
    test = DataLoader(test_set, shuffle=False, **common)
    return train, test, sampler


def train(config, flags, options):
    out = options.out
    state = load_checkpoint(out, config, flags) if options.resume else None
    if state is not None:  # the run's own settings; only the epoch count and the machine may change
        keep = {k: flags[k] for k in ("epochs", "device", "workers", "limit_batches") if k in flags}
        config = dict(state["config"], **keep)
    try:
        train_set, test_set, info = build_datasets(config["dataset"], config["data"], T=config["T"],
                                                   download=config["download"], augment=config["augment"],
                                                   seed=config["seed"])
    except (DatasetNotFoundError, ValueError, ImportError) as error:  # the data's own checks on our input
        raise TrainError(str(error))
    device, rank, world = setup_distributed(config)
    try:
        if rank == 0:
            prepare_out_dir(out, options.resume, options.force)
        code = _train(config, options, state, device, rank, world, train_set, test_set, info)
        if world > 1:  # tearing gloo down while rank 0 still writes its plots aborts the others
            dist.barrier()
        return code
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _train(config, options, state, device, rank, world, train_set, test_set, info):
    main_process, out = rank == 0, options.out
    torch.manual_seed(config["seed"])
    model = build_model(config["model"], num_classes=info.num_classes, in_channels=info.in_channels, T=config["T"],
                        surrogate=config["surrogate"], tau=config["tau"], v_th=config["v_th"],
                        beta_init=config["beta_init"], h=config["h"], backend=config["backend"]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config))
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if config["compile"]:
        wrapped = torch.compile(wrapped)
    controller = A2SG(wrapped, adapt=config["adapt"], strategy=config["strategy"], n_obs=config["n_obs"],
                      n_eval=config["n_eval"], radius=config["radius"], every=config["every"], seed=config["seed"])
    data_generator = torch.Generator().manual_seed(config["seed"])
    use_bf16 = config["amp"] == "bf16" or (config["amp"] == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    history, start_epoch = [], 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        controller.load_state_dict(state["controller"])
        data_generator.set_state(state["rng"]["data"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        history, start_epoch = state["metrics"], state["epoch"] + 1
    train_loader, test_loader, sampler = make_loaders(train_set, test_set, config, rank, world, data_generator)
    mixer = batch_mixer(info, config["augment"])
    writer = _tensorboard(out) if config["tensorboard"] and main_process else None
    if main_process:
        atomic_write(out / "config.json", lambda f: json.dump(config, f, indent=1), binary=False)

    end_epoch = config["epochs"] if options.stop_after is None else min(config["epochs"], start_epoch + options.stop_after)
    for epoch in range(start_epoch, end_epoch):
        if world > 1:
            sampler.set_epoch(epoch)
        controller.begin_epoch(epoch)
        searched = len(controller.history)
        start = time.perf_counter()
        train_sums = run_epoch(wrapped, train_loader, config, device, optimizer, mixer, autocast,
                               progress=main_process)
        scheduler.step()
        epoch_seconds = time.perf_counter() - start
        counter = SpikeCounter(model)
        # the plain module: the spike-counting hooks read tensors, which a compiled graph would break on
        test_sums = run_epoch(model, test_loader, config, device, autocast=autocast)
        counter.remove()
        names = list(counter.layers)
        totals = all_reduce_sum([*train_sums, *test_sums, *(counter.spikes[n] for n in names)], device, world)
        train_loss, train_correct, train_count, test_loss, test_correct, test_count = totals[:6]
        spikes = dict(zip(names, totals[6:]))
        row = {
            "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_loss / train_count, "train_acc": train_correct / train_count,
            "test_loss": test_loss / test_count, "test_acc": test_correct / test_count,
            "spikes_per_sample": {n: spikes[n] / test_count for n in names},
            "firing_rate": {n: spikes[n] / (test_count * config["T"] * counter.neurons[n]) for n in names},
            "epoch_seconds": epoch_seconds,
            "search_seconds": sum(r["seconds"] for r in controller.history[searched:]),
            "beta": {n: counter.layers[n].beta.tolist() for n in names},
        }
        row["firing_rate_mean"] = (sum(spikes.values()) /
                                   (test_count * config["T"] * sum(counter.neurons.values())))
        history.append(row)
        if main_process:
            save_epoch(out, config, epoch, model, optimizer, scheduler, controller, data_generator, history)
            _log(writer, row)
            tqdm.write(f"epoch {epoch + 1}/{config['epochs']}  train {row['train_acc']:.4f}  test {row['test_acc']:.4f}"
                       f"  loss {row['train_loss']:.3f}  {epoch_seconds:.1f}s  search {row['search_seconds']:.2f}s")
    if main_process and history:
        plot_run(out, history)
        print(summary(config, out, history))
    if writer is not None:
        writer.close()
    return 0


def save_epoch(out, config, epoch, model, optimizer, scheduler, controller, data_generator, history):
    """Checkpoint first, then the metrics file that mirrors it: both always describe the same epochs."""
    atomic_write(out / "checkpoint.pt", lambda f: torch.save({
        "format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch, "model": model.state_dict(),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "controller": controller.state_dict(), "metrics": history,
        "rng": {"data": data_generator.get_state(), "torch": torch.get_rng_state(),
                "numpy": np.random.get_state(), "python": random.getstate()},
    }, f))
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(out / "metrics.jsonl", lambda f: f.write(text), binary=False)


def plot_run(out, history):
    """beta.png: every layer's beta per timestep over the epochs; accuracy.png: the accuracy curves."""
    epochs = [row["epoch"] + 1 for row in history]
    layers = list(history[0]["beta"])
    fig, axes = new_figure(columns=len(layers), panel_size=(3, 3), sharey=True)
    for ax, name in zip(axes[0], layers):
        for t in range(len(history[0]["beta"][name])):
            ax.plot(epochs, [row["beta"][name][t] for row in history], label=f"t={t}")
        ax.set_title(f"LIF {name}")
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("β")
    axes[0][-1].legend(fontsize="small")
    save_figure(fig, out / "beta.png")
    fig, axes = new_figure(panel_size=(5, 3.5))
    ax = axes[0][0]
    ax.plot(epochs, [row["train_acc"] for row in history], label="train")
    ax.plot(epochs, [row["test_acc"] for row in history], label="test")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.legend()
    save_figure(fig, out / "accuracy.png")


def summary(config, out, history):
    last, best = history[-1], max(history, key=lambda row: row["test_acc"])
    total = sum(row["epoch_seconds"] for row in history)
    search = sum(row["search_seconds"] for row in history)
    return "\n".join([
        f"{config['model']} on {config['dataset']}, {config['surrogate']} + {config['adapt']}, T={config['T']}",
        f"test accuracy {last['test_acc']:.4f} (best {best['test_acc']:.4f} at epoch {best['epoch'] + 1})",
        f"spikes per sample {sum(last['spikes_per_sample'].values()):.1f}, "
        f"mean firing rate {last['firing_rate_mean']:.4f}",
        f"training {total:.1f}s, of which search {search:.1f}s ({100 * search / max(total, 1e-9):.1f}%)",
        f"run folder {out}",
    ])


def _tensorboard(out):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrainError("--tensorboard needs the tensorboard package: pip install 'a2sg-triton[tensorboard]'")
    return SummaryWriter(out / "tensorboard")


def _log(writer, row):
    if writer is None:
        return
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "firing_rate_mean", "search_seconds"):
        writer.add_scalar(key, row[key], row["epoch"])
    for name, betas in row["beta"].items():
        for t, beta in enumerate(betas):
            writer.add_scalar(f"beta/{name}/t{t}", beta, row["epoch"])


def main(argv=None):
    try:
        return train(*resolve_config(argv))
    except TrainError as error:
        print(f"a2sg-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
