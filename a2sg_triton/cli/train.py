"""a2sg-train: train a spiking network with a chosen surrogate and A²SG adaptation mode.

    a2sg-train                                  # A²SG on the embedded digits data, on the CPU
    a2sg-train --preset paper-cifar10 --data ~/data/cifar10 --out runs/c10
    a2sg-train --resume runs/c10                # continue exactly where the run stopped
    torchrun --nproc_per_node 4 -m a2sg_triton.cli.train --preset paper-cifar10 --data ...

Every epoch appends one JSON line to OUT/metrics.jsonl and rewrites OUT/checkpoint.pt atomically;
at the end OUT/beta.png and OUT/accuracy.png are drawn and a summary is printed.

This module runs the loop; the settings are in config.py, the checkpoint in checkpoint.py, the
figures, summary and TensorBoard log in report.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Optional, Union, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Subset
from tqdm import tqdm

from .checkpoint import load_checkpoint, prepare_out_dir, restore_checkpoint, save_epoch
from .config import LEGACY_SETTINGS, RESUMABLE, RunOptions, TrainError, resolve_config
from ..search.controller import A2SG
from ..data.datasets import (DatasetInfo, DatasetNotFoundError, batch_mixer, build_datasets, dataset_labels,
                             stratified_order)
from ..models import build_model, model_input
from ..nn import SearchedNeuron
from .report import log_epoch, plot_run, summary, tensorboard_writer
from ..rmp import record_membranes, rmp_loss
from ..files import atomic_write

POSTFIX_EVERY = 50  # iterations between updates of a shown progress bar's loss / accuracy (a host sync each)


# ---------------------------------------------------------------------------------------------
# Distributed set-up (torchrun) and devices.
# ---------------------------------------------------------------------------------------------


def setup_distributed(config: Mapping[str, Any]) -> tuple[torch.device, int, int]:
    """Returns (device, rank, world size); initialises torch.distributed under torchrun.

    Args:
        config: the run's settings; its "device" is auto, cpu, cuda or cuda:N.

    Raises:
        TrainError: a CUDA device was asked for and there is none.
    """
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


def all_reduce_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    """Sums a list of floats over the ranks (elementwise); ``values`` itself when world is 1."""
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(model: torch.nn.Module, world: int) -> None:
    """Gives every rank rank 0's buffers (BN running statistics): DDP sends them before each training
    forward, but that forward then updates them from the rank's own batch, so after an epoch the ranks
    differ. The test pass then evaluates, on every shard, the model that rank 0 saves."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


# ---------------------------------------------------------------------------------------------
# Random number generators: seeded per (seed, epoch, rank), so resuming at an epoch is exact.
# ---------------------------------------------------------------------------------------------


def seed_rngs(*key: int) -> int:
    """Seeds torch (every device), numpy and Python's random from ``key`` (ints, e.g. seed, epoch and
    rank) and returns a fourth seed from it for a generator of the caller's. CutMix draws from numpy,
    RandAugment from random; SeedSequence mixes the key, so neighbouring keys give unrelated streams."""
    torch_seed, numpy_seed, python_seed, spare = np.random.SeedSequence(list(key)).generate_state(4).tolist()
    torch.manual_seed(torch_seed)
    np.random.seed(numpy_seed)
    random.seed(python_seed)
    return spare


class WorkerSeeder:
    """The training loader's ``worker_init_fn``: seeds each worker's RNGs from (seed, epoch, rank,
    worker id). The loop sets ``epoch`` before each epoch's iterator starts its (non-persistent)
    workers; a persistent worker would keep the stream of the epoch it started in, which a resumed run
    starts in a different epoch."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, worker_id: int) -> None:
        seed_rngs(self.seed, self.epoch, self.rank, worker_id)


# ---------------------------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------------------------


def lr_factor(epoch: int, config: Mapping[str, Any]) -> float:
    """Linear warm-up from lr_start to lr, then cosine decay to 0 (per epoch).

    Args:
        epoch: 0-based.
        config: the run's settings (lr, lr_start, warmup_epochs, epochs).

    Returns:
        The factor on the peak learning rate ``lr`` for that epoch.
    """
    warmup, epochs = config["warmup_epochs"], config["epochs"]
    start = config["lr_start"] / config["lr"]
    if epoch < warmup:
        return start + (1 - start) * epoch / warmup
    progress = (epoch - warmup) / max(epochs - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * progress))


class SpikeCounter:
    """Counts the spikes every spiking layer (LIF, PLIF: ``SearchedNeuron``) emits (forward hooks), per layer."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SearchedNeuron)}
        # summed on the device (a tensor after the first batch); read once per epoch
        self.spikes: dict[str, Union[float, torch.Tensor]] = {name: 0.0 for name in self.layers}
        self.neurons = {name: 0 for name in self.layers}  # per sample and timestep
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]

    def _hook(self, name: str) -> Callable[[torch.nn.Module, Any, torch.Tensor], None]:
        def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            self.spikes[name] += output.detach().sum(dtype=torch.float64)  # on the device; read once per epoch
            self.neurons[name] = output[0, 0].numel()
        return hook

    def remove(self) -> None:
        """Removes the hooks."""
        for handle in self.handles:
            handle.remove()


def run_epoch(model: torch.nn.Module, loader: DataLoader[Any], config: Mapping[str, Any], device: torch.device,
              optimizer: Optional[torch.optim.Optimizer] = None,
              mixer: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = None,
              autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
              progress: bool = False) -> tuple[float, float, float, float]:
    """One pass over loader; trains when an optimizer is given.

    Args:
        model: takes [T, B, ...] and returns logits [B, classes].
        loader: yields (x, y): images [B, C, H, W] or frames [B, T, C, H, W], labels [B].
        config: the run's settings (T, rmp_loss, limit_batches).
        device: where the batches go.
        optimizer: trains with it; None evaluates (no gradients).
        mixer: CutMix ``(x, y) -> (x, soft targets)``, or None.
        autocast: makes the context the forward runs in (bf16 autocast or a null context).
        progress: show a tqdm bar (when stderr is a terminal).

    Returns:
        (summed cross-entropy, correct, count, summed RMP-loss); the RMP-loss is 0 unless training
        with --rmp-loss, which adds lambda times it to the loss that is minimised.
    """
    training = optimizer is not None
    model.train(training)
    rmp = config["rmp_loss"] if training else 0.0
    # summed on the device: reading them every iteration would sync with the host for logging only
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    total_rmp = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    limit = config["limit_batches"] or len(loader)
    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, pipes)
    bar = tqdm(loader, total=min(limit, len(loader)), leave=False, disable=None if progress else True, desc="train")
    with torch.set_grad_enabled(training), (record_membranes(model) if rmp else nullcontext()) as membranes:
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
            if optimizer is not None:  # training
                objective = loss
                if rmp:
                    assert membranes is not None  # record_membranes' list when rmp is on
                    regulariser = rmp_loss(membranes)
                    membranes.clear()
                    objective = loss + rmp * regulariser
                    total_rmp += regulariser.detach() * y.shape[0]
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
            total_loss += loss.detach() * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            count += y.shape[0]
            if not bar.disable and i % POSTFIX_EVERY == 0:  # a shown bar's numbers: one host sync per POSTFIX_EVERY
                bar.set_postfix(loss=f"{total_loss.item() / count:.3f}", acc=f"{correct.item() / count:.3f}",
                                refresh=False)
    return float(total_loss), float(correct), float(count), float(total_rmp)


def make_loaders(train_set: Dataset[Any], test_set: Dataset[Any], config: Mapping[str, Any], rank: int, world: int,
                 data_generator: torch.Generator, worker_seeder: WorkerSeeder, mixing: bool
                 ) -> tuple[DataLoader[Any], DataLoader[Any], Union[DistributedSampler[Any], RandomSampler]]:
    """The training loader (shuffled by data_generator, or a DistributedSampler under torchrun), the
    rank's share of the test set and the sampler.

    Under --limit-batches the test set is taken in ``stratified_order``, so the first batches hold
    every class even if the set is stored class by class.

    Args:
        train_set: the training samples.
        test_set: the test samples.
        config: the run's settings (batch_size, workers, seed, limit_batches).
        rank: this process's rank.
        world: the number of processes.
        data_generator: shuffles the training set on one process.
        worker_seeder: the training loader's ``worker_init_fn``.
        mixing: CutMix: drop the last, partial batch of every rank (CutMix needs an even batch).

    Returns:
        (training loader, this rank's test loader, the training sampler).

    Raises:
        TrainError: no training batch is left.
    """
    common: dict[str, Any] = dict(batch_size=config["batch_size"], num_workers=config["workers"],
                                  pin_memory=torch.cuda.is_available())
    sampler: Union[DistributedSampler[Any], RandomSampler]
    if world > 1:
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=config["seed"])
    else:
        sampler = RandomSampler(cast(Sized, train_set), generator=data_generator)
    train = DataLoader(train_set, sampler=sampler, generator=data_generator, drop_last=mixing,
                       worker_init_fn=worker_seeder, **common)
    if len(train) == 0:
        raise TrainError(f"--batch-size {config['batch_size']} is larger than the {len(sampler)} training samples "
                         "of a process, and with --augment the partial batch is dropped: no batch is left")
    order: Sequence[int] = range(len(cast(Sized, test_set)))
    if config["limit_batches"]:
        order = stratified_order(dataset_labels(test_set), config["seed"])
    # every rank a stride of the order: exact, every sample once; nothing random, so the workers may persist
    test = DataLoader(Subset(test_set, order[rank::world]), shuffle=False, persistent_workers=config["workers"] > 0,
                      **common)
    return train, test, sampler


def train(config: dict[str, Any], flags: Mapping[str, Any], options: RunOptions) -> int:
    """Trains (or resumes) one run as ``resolve_config`` describes it; returns the exit status.

    Args:
        config: the run's settings (on --resume replaced by the checkpoint's, but for ``RESUMABLE``).
        flags: the flags given explicitly.
        options: the run folder, --resume, --force and --stop-after.

    Returns:
        0 when the epochs ran.

    Raises:
        TrainError: a problem with the user's input or data.
    """
    out = options.out
    state = load_checkpoint(out, config, flags) if options.resume else None
    if state is not None:  # the run's own settings; only the epoch count and the machine may change
        config = {**LEGACY_SETTINGS, **state["config"], **{k: v for k, v in flags.items() if k in RESUMABLE}}
    try:
        train_set, test_set, info = build_datasets(config["dataset"], config["data"], T=config["T"],
                                                   download=config["download"], augment=config["augment"],
                                                   seed=config["seed"])
        mixer = batch_mixer(info, config["augment"])
    except (DatasetNotFoundError, ValueError, ImportError) as error:  # the data's own checks on our input
        moved = isinstance(error, DatasetNotFoundError) and options.resume
        raise TrainError(f"{error}" + (" (if the data moved, pass --data DIR with --resume)" if moved else ""))
    if mixer is not None and config["batch_size"] % 2:
        raise TrainError(f"--batch-size must be even with --augment (CutMix mixes each image with another of its "
                         f"batch), got {config['batch_size']}")
    device, rank, world = setup_distributed(config)
    try:
        if rank == 0:
            prepare_out_dir(out, options.resume, options.force)
        code = _train(config, options, state, device, rank, world, train_set=train_set, test_set=test_set, info=info,
                      mixer=mixer)
        if world > 1:  # tearing gloo down while rank 0 still writes its plots aborts the others
            dist.barrier()
        return code
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def parameter_groups(model: torch.nn.Module, weight_decay: float,
                     decay_norm_and_bias: bool = False) -> list[dict[str, Any]]:
    """AdamW's parameter groups: weight decay on parameters of 2 or more dimensions (conv kernels,
    linear matrices) only, as timm-style recipes do; norm scales and shifts, biases and any other
    1-D or scalar parameter get none, since decay would pull a tdBN scale, and with it the layer's
    input current, towards 0 over a long schedule.

    Args:
        model: its parameters are grouped.
        weight_decay: AdamW's decoupled weight decay of the decayed group.
        decay_norm_and_bias: one group, all decayed.

    Returns:
        The non-empty groups, each {"params": [...], "weight_decay": ...}.
    """
    params = list(model.parameters())
    if decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    groups: list[dict[str, Any]] = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _train(config: Mapping[str, Any], options: RunOptions, state: Optional[Mapping[str, Any]], device: torch.device,
           rank: int, world: int, *, train_set: Dataset[Any], test_set: Dataset[Any], info: DatasetInfo,
           mixer: Optional[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]) -> int:
    """The run itself, once the data and the processes are set up: builds (or restores) the model,
    optimizer, scheduler and A²SG controller, trains and tests epoch by epoch, writes every epoch's
    row and checkpoint (rank 0), and at the end the figures and the summary.

    Args:
        config: the run's settings.
        options: the run folder, --resume, --force and --stop-after.
        state: the checkpoint to resume from, or None.
        device: this process's device.
        rank: this process's rank.
        world: the number of processes.
        train_set: the training samples.
        test_set: the test samples.
        info: the dataset's classes and channels.
        mixer: CutMix ``(x, y) -> (x, soft targets)``, or None.

    Returns:
        0.
    """
    main_process, out = rank == 0, options.out
    torch.manual_seed(config["seed"])  # the initial weights: the same on every rank
    model = build_model(config["model"], num_classes=info.num_classes, in_channels=info.in_channels, T=config["T"],
                        surrogate=config["surrogate"], tau=config["tau"], v_th=config["v_th"],
                        beta_init=config["beta_init"], h=config["h"], backend=config["backend"],
                        memory_saving=config["memory_saving"], neuron=config["neuron"],
                        levels=config["levels"]).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, config["weight_decay"], config["decay_norm_and_bias"]),
                                  lr=config["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, config))
    wrapped: torch.nn.Module = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    if config["compile"]:
        wrapped = cast(torch.nn.Module, torch.compile(wrapped))  # a module compiles to an OptimizedModule
    # on the plain model: its state names the layers as the model does, whichever wrapper trains it
    controller = A2SG(model, adapt=config["adapt"], strategy=config["strategy"], n_obs=config["n_obs"],
                      n_eval=config["n_eval"], radius=config["radius"], beta_range=config["beta_range"],
                      every=config["every"], seed=config["seed"])
    data_generator, worker_seeder = torch.Generator(), WorkerSeeder(config["seed"], rank)
    use_bf16 = config["amp"] == "bf16" or (config["amp"] == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    history: list[dict[str, Any]]
    history, start_epoch = [], 0
    if state is not None:
        history, start_epoch = restore_checkpoint(state, out, model, optimizer, scheduler, controller)
    train_loader, test_loader, sampler = make_loaders(train_set, test_set, config, rank, world, data_generator,
                                                      worker_seeder, mixing=mixer is not None)
    writer = tensorboard_writer(out) if config["tensorboard"] and main_process else None
    if main_process:
        atomic_write(out / "config.json", lambda f: json.dump(config, f, indent=1), binary=False)

    end_epoch = config["epochs"] if options.stop_after is None else min(config["epochs"], start_epoch + options.stop_after)
    for epoch in range(start_epoch, end_epoch):
        if world > 1:
            assert isinstance(sampler, DistributedSampler)  # make_loaders' under torchrun
            sampler.set_epoch(epoch)
        data_generator.manual_seed(seed_rngs(config["seed"], epoch, rank))
        worker_seeder.epoch = epoch
        controller.begin_epoch(epoch)
        searched = len(controller.history)
        start = time.perf_counter()
        train_sums = run_epoch(wrapped, train_loader, config, device, optimizer, mixer, autocast,
                               progress=main_process)
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained at, before the step sets the next one's
        scheduler.step()
        epoch_seconds = time.perf_counter() - start
        broadcast_buffers(model, world)
        counter = SpikeCounter(model)
        # the plain module: the spike-counting hooks read tensors, which a compiled graph would break on
        test_sums = run_epoch(model, test_loader, config, device, autocast=autocast)
        counter.remove()
        names = list(counter.layers)
        totals = all_reduce_sum([*train_sums, *test_sums[:3], *(float(counter.spikes[n]) for n in names)], device,
                                world)
        train_loss, train_correct, train_count, train_rmp, test_loss, test_correct, test_count = totals[:7]
        spikes = dict(zip(names, totals[7:]))
        row = {
            "epoch": epoch, "lr": lr,
            "train_loss": train_loss / train_count, "train_acc": train_correct / train_count,
            **({"train_rmp_loss": train_rmp / train_count} if config["rmp_loss"] else {}),
            "test_loss": test_loss / test_count, "test_acc": test_correct / test_count,
            "spikes_per_sample": {n: spikes[n] / test_count for n in names},
            "firing_rate": {n: spikes[n] / (test_count * config["T"] * counter.neurons[n]) for n in names},
            "epoch_seconds": epoch_seconds,
            "search_seconds": sum(r["seconds"] for r in controller.history[searched:]),
            "search": controller.search_log(searched),
            "beta": {n: counter.layers[n].beta.tolist() for n in names},
        }
        row["firing_rate_mean"] = (sum(spikes.values()) /
                                   (test_count * config["T"] * sum(counter.neurons.values())))
        history.append(row)
        if main_process:
            save_epoch(out, config, epoch, model, optimizer, scheduler, controller, history)
            log_epoch(writer, row)
            tqdm.write(f"epoch {epoch + 1}/{config['epochs']}  train {row['train_acc']:.4f}  test {row['test_acc']:.4f}"
                       f"  loss {row['train_loss']:.3f}  {epoch_seconds:.1f}s  search {row['search_seconds']:.2f}s")
    if main_process and history:
        plot_run(out, history, cutmix=mixer is not None)
        print(summary(config, out, history))
    if writer is not None:
        writer.close()
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """a2sg-train; returns the exit status (2 on bad input, printed as one line)."""
    try:
        return train(*resolve_config(argv))
    except TrainError as error:
        print(f"a2sg-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
