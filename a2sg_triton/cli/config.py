"""a2sg-train's settings: the presets, the command line and its checks.

``resolve_config(argv)`` turns a command line into the run's config (a preset, then the explicit
flags), the flags given explicitly, and the ``RunOptions`` of this invocation. A bad value raises
``TrainError``, which a2sg-train prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Optional

from ..search.controller import ADAPT_MODES
from ..data.datasets import DATASETS, IMAGE_SIZES
from ..models import MODELS, NEURONS, accepts_image_size
from ..search.bo import STRATEGIES
from ..ops.surrogate import SURROGATES
from ..ops.backend import BACKENDS

DESCRIPTION = "a2sg-train: train a spiking network with a chosen surrogate and A²SG adaptation mode."

# How a run is executed, not what it trains: these may differ on --resume, and a2sg-ablate does not
# compare them between a stored run and the one asked for.
MACHINE_OPTIONS = ("data", "download", "device", "workers", "backend", "tensorboard", "compile", "memory_saving")
# What --resume may change besides: --epochs extends a run, --limit-batches is for smoke runs. Any other
# setting given with --resume must equal the run's own.
RESUMABLE = (*MACHINE_OPTIONS, "epochs", "limit_batches")
# Settings that a run started before they existed lacks in its config, with the value it trained with.
LEGACY_SETTINGS: dict[str, Any] = {"memory_saving": True, "decay_norm_and_bias": True, "beta_range": (0.05, 1.0),
                                   "neuron": "lif", "rmp_loss": 0.0, "levels": 4}

_PAPER_CIFAR: dict[str, Any] = dict(model="vgg16", T=4, epochs=310, warmup_epochs=20, batch_size=100, augment=True,
                                    surrogate="asy", adapt="spatiotemporal")
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: trains in about a minute on 2 CPU cores.
    "digits": dict(model="digits_cnn", dataset="digits", T=4, epochs=12, warmup_epochs=1, batch_size=32,
                   lr=5e-3, lr_start=1e-4, weight_decay=1e-2, augment=False, surrogate="asy",
                   adapt="spatiotemporal"),
    # A plain 12-conv VGG on the same data: deep enough that the surrogate matters, 2-5 minutes a run
    # on one CPU thread. BOX with ST-ASG, the configuration its study found best by far (95% against
    # 32% for the literal A²SG, asy + ST-ASG; docs/results/digits-deep-ablation.md).
    "digits-deep": dict(model="digits_vgg", dataset="digits", T=4, epochs=20, warmup_epochs=1, batch_size=32,
                        lr=5e-3, lr_start=1e-4, weight_decay=1e-2, augment=False, surrogate="box",
                        adapt="spatiotemporal"),
    # Paper A.10.
    "paper-cifar10": dict(_PAPER_CIFAR, dataset="cifar10", lr=6e-3, lr_start=1e-5, weight_decay=2e-2),
    "paper-cifar100": dict(_PAPER_CIFAR, dataset="cifar100", lr=5e-3, lr_start=1e-4, weight_decay=4e-2),
    # Table 7: VGG16 on CIFAR-10 with PLIF neurons, otherwise paper-cifar10.
    "paper-cifar10-plif": dict(_PAPER_CIFAR, dataset="cifar10", lr=6e-3, lr_start=1e-5, weight_decay=2e-2,
                               neuron="plif"),
    # Table 8: RMP-loss "instead of tdBN" on CIFAR-100, otherwise paper-cifar100. Our VGG16's tdBN at
    # v_th = 1 is the plain time-folded BatchNorm an RMP-loss network uses, so the difference is the
    # loss term; lambda 0.1 is our choice (docs/training.md, "RMP-loss").
    "paper-cifar100-rmp": dict(_PAPER_CIFAR, dataset="cifar100", lr=5e-3, lr_start=1e-4, weight_decay=4e-2,
                               rmp_loss=0.1),
    # Table 3: E-SpikeFormer 10M on ImageNet (an ImageFolder tree), T x D = 1 x 4, batch 360, base lr 6e-4
    # from 1e-6 with 5 warm-up epochs (paper A.10). The epoch count (200) is ours, as is CutMix without
    # the paper's Mixup (a2sg-train has no Mixup); box windows, as E-SpikeFormer's straight-through
    # estimator, adapted per level.
    "paper-imagenet-sdt3": dict(model="sdt3-10m", dataset="imagefolder", neuron="ilif", levels=4, T=1, tau=4.0,
                                epochs=200, warmup_epochs=5, batch_size=360, lr=6e-4, lr_start=1e-6,
                                weight_decay=5e-2, augment=True, surrogate="box", adapt="spatiotemporal"),
    "paper-cifar10-dvs": dict(model="vggsnn", dataset="cifar10-dvs", T=4, epochs=200, warmup_epochs=20,
                              batch_size=32, lr=6e-3, lr_start=1e-5, weight_decay=2e-2, augment=False,
                              surrogate="asy", adapt="spatiotemporal"),
}
DEFAULTS: dict[str, Any] = dict(
    PRESETS["digits"], strategy="bo", tau=2.0, v_th=1.0, h=0.5, beta_init=0.5, n_obs=100, n_eval=150, radius=0.05,
    beta_range=(0.05, 1.0), every=1, seed=0, backend="auto", device="auto", amp="auto", workers=0, data=None,
    download=False, limit_batches=None, tensorboard=False, compile=False, memory_saving=None,
    decay_norm_and_bias=False, neuron="lif", rmp_loss=0.0, levels=4)
# What --model brings over the preset's settings (flags still win) when the preset names another
# model: sdt3 is E-SpikeFormer's integer-spike transformer, T x D = 1 x 4, I-LIF at decay 1/4 with
# box windows (its straight-through estimator).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {name: dict(neuron="ilif", T=1, tau=4.0, surrogate="box")
                                             for name in ("sdt3", "sdt3-10m")}


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
    def error(self, message: str) -> NoReturn:
        raise TrainError(message)


def build_parser() -> argparse.ArgumentParser:
    """a2sg-train's command line; a bad flag raises ``TrainError`` instead of exiting."""
    p = _Parser(prog="a2sg-train", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    arg("--weight-decay", type=float, help="AdamW's decoupled weight decay, on weights of 2 or more dimensions")
    arg("--decay-norm-and-bias", action="store_true", default=None,
        help="also decay norm scales and shifts, biases and other 1-D or scalar parameters, as runs did before "
             "this flag existed")
    arg("--augment", action=argparse.BooleanOptionalAction, default=None,
        help="CutMix (needs an even --batch-size; the last, partial batch is dropped), and on cifar10, cifar100 "
             "and imagefolder images crop, flip and RandAugment (docs/data.md); cifar10-dvs is never augmented")
    arg("--neuron", choices=NEURONS, help="spiking neuron of every layer: lif, plif (learnable leak starting at "
                                          "1/tau) or ilif (integer counts 0..--levels; docs/neurons.md); default lif, "
                                          "ilif for sdt3")
    arg("--levels", type=int, metavar="D", help="I-LIF's largest count (default 4)")
    arg("--rmp-loss", type=float, metavar="LAMBDA",
        help="add LAMBDA times the RMP-loss over every neuron's membrane to the training loss (default 0: off; "
             "docs/training.md)")
    arg("--tau", type=float)
    arg("--v-th", type=float)
    arg("--h", type=float, help="asy surrogate offset (>= 0.5)")
    arg("--beta-init", type=float)
    arg("--n-obs", type=int)
    arg("--n-eval", type=int)
    arg("--radius", type=float)
    arg("--beta-range", type=float, nargs=2, metavar=("LO", "HI"), help="the searched widths (default: 0.05 1.0)")
    arg("--every", type=int, help="search every this many epochs")
    arg("--seed", type=int)
    arg("--backend", choices=BACKENDS)
    arg("--device", help="auto, cpu, cuda or cuda:N (may change on --resume, as may --data, --workers, --backend, "
                         "--tensorboard)")
    arg("--amp", choices=("auto", "bf16", "none"), help="bf16 autocast (auto: on CUDA)")
    arg("--workers", type=int, help="data loader worker processes")
    arg("--limit-batches", type=int, help="at most this many batches per epoch and evaluation (smoke runs)")
    arg("--tensorboard", action="store_true", default=None, help="also log to OUT/tensorboard")
    arg("--compile", action=argparse.BooleanOptionalAction, default=None,
        help="torch.compile the model (the search still runs); may change on --resume")
    arg("--memory-saving", action=argparse.BooleanOptionalAction, default=None,
        help="spikes saved as bits and u - v_th recomputed in backward: about 0.37x the activation memory, "
             "the same gradients (not under --compile; docs/memory.md). Default: on for the CPU, off on CUDA, "
             "where it cost +125%% of a vgg16 step on an H200 (off there until a GPU measurement shows it "
             "within +10%%). May change on --resume")
    arg("--out", metavar="DIR", help="run folder (default: runs/<dataset>-<model>-<surrogate>-<adapt>-<time>)")
    arg("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint, with its own settings")
    arg("--force", action="store_true", help="reuse an --out folder that holds another run")
    arg("--stop-after", type=int, metavar="N", help="stop after N epochs of this invocation (resume later)")
    return p


def resolve_config(argv: Optional[Sequence[str]]) -> tuple[dict[str, Any], dict[str, Any], RunOptions]:
    """Preset, then explicit flags; checks values.

    Args:
        argv: a2sg-train's arguments (None: sys.argv[1:]).

    Returns:
        (config, the flags given explicitly as the config holds them, this invocation's RunOptions).

    Raises:
        TrainError: a bad flag or value, as one line for the user.
    """
    args = build_parser().parse_args(argv)
    preset = PRESETS.get(args.preset or "digits", {})
    run_options = ("preset", "out", "resume", "force", "stop_after")
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in run_options}
    config = dict(DEFAULTS, **preset)
    if flags.get("model", config["model"]) != config["model"]:  # a model the preset did not set up
        config.update(MODEL_DEFAULTS.get(flags["model"], {}))
    config.update(flags)
    for name in ("T", "epochs", "batch_size", "n_obs", "every", "levels"):
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
    config["beta_range"] = tuple(config["beta_range"])
    if not 0 < config["beta_range"][0] < config["beta_range"][1]:
        raise TrainError(f"--beta-range must satisfy 0 < LO < HI, got {config['beta_range'][0]} {config['beta_range'][1]}")
    if not 0 <= config["rmp_loss"] < float("inf"):
        raise TrainError(f"--rmp-loss must be a finite number >= 0, got {config['rmp_loss']}")
    if config["rmp_loss"] and config["neuron"] == "ilif":
        raise TrainError("--rmp-loss regularises the membranes of binary-spike neurons: use it with --neuron lif "
                         "or plif, not ilif")
    if config["neuron"] == "plif" and config["tau"] <= 1:
        raise TrainError(f"--tau must be > 1 with --neuron plif (its initial leak 1/tau lies in (0, 1)), got "
                         f"{config['tau']}")
    if config["surrogate"] == "asy" and config["h"] < 0.5:
        raise TrainError(f"--h must be >= 0.5 for the asy surrogate, got {config['h']}")
    if args.resume:  # these would be ignored: refused, as is any other flag that changes the run (checkpoint.py)
        for name, given in (("preset", args.preset), ("force", args.force),
                            ("out", args.out is not None and Path(args.out) != Path(args.resume))):
            if given:
                raise TrainError(f"--{name} cannot be given with --resume: the run in {args.resume} continues with "
                                 "its own settings and folder")
    if config["dataset"] != "digits" and config["data"] is None and not args.resume:
        raise TrainError(f"--dataset {config['dataset']} needs --data DIR, the folder that holds it (docs/data.md)")
    if config["data"] is not None and not Path(config["data"]).exists():
        raise TrainError(f"--data {config['data']}: no such folder")
    if not args.resume:  # a resumed run keeps its own model and data, checked when it started
        check_model_fits_data(config["model"], config["dataset"])
    if args.resume:
        out = Path(args.resume)
    elif args.out:
        out = Path(args.out)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{config['dataset']}-{config['model']}-{config['surrogate']}-{config['adapt']}-{stamp}"
    flags = {k: config[k] for k in flags}  # as the config holds them (--beta-range: a tuple), to compare on --resume
    return config, flags, RunOptions(out, args.resume is not None, args.force, args.stop_after)


def check_model_fits_data(model: str, dataset: str) -> None:
    """Refuses a model that cannot run on the dataset's image size, naming what would work.

    Args:
        model: one of ``MODELS``.
        dataset: one of ``DATASETS``.

    Raises:
        TrainError: the model cannot take the dataset's images.
    """
    size = IMAGE_SIZES[dataset]
    if accepts_image_size(model, size):
        return
    models = [m for m in MODELS if accepts_image_size(m, size)]
    datasets = [d for d in DATASETS if accepts_image_size(model, IMAGE_SIZES[d])]
    raise TrainError(f"--model {model} cannot take the {size}x{size} images of --dataset {dataset}: with {dataset} "
                     f"use --model {' / '.join(models)}; {model} trains on --dataset {' / '.join(datasets)}")
