"""Activation memory of the zoo models: what backward keeps, with and without memory saving.

CPU part (always; exact and device-independent): for every zoo model at its natural input size,
T = 4, fp32, one forward under ``a2sg_triton.memory.SavedTensors``: the bytes of every storage
autograd keeps for backward, each counted once however many ops save it. Parameters and buffers
are left out (a conv saving its weight keeps a reference, not a copy: they exist anyway); the
column ``with_params_mib_per_sample`` adds them back, divided by the batch, which is how the issue
measured "20.2 MiB per sample" for vgg16 at batch 8. ``spike_bits`` is the part kept as packed bits.

GPU part (only with CUDA): peak allocated memory and median step time (forward + backward) of
vgg16 and vggsnn, ours with and without memory saving and SpikingJelly's equivalent model (the same
conv-BN-LIF units, ``LIFNode(tau=2, decay_input=True, v_reset=None)``, the ATan surrogate that ours
uses here as well) without and with its ``memopt.optimize_memory(level=1)`` (checkpointing of every
unit with compressed spike inputs). Without CUDA it prints that it was skipped.

    python bench/bench_memory.py                      # rows to bench/results/memory-cpu.jsonl (+ -cuda)
    python bench/bench_memory.py --models vgg16 --batch 8
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is plain scripts, not a package
from bench_lif import BENCH_DIR, package_version, run_metadata, time_ms  # noqa: E402

from a2sg_triton.memory import SavedTensors  # noqa: E402
from a2sg_triton.models import MODELS, build_model, direct_encode  # noqa: E402
from a2sg_triton.models.vgg import VGG16_CFG, VGGSNN_CFG  # noqa: E402

# name -> (in_channels, image side): each model's natural input
INPUTS = {"vgg16": (3, 32), "resnet19": (3, 32), "resnet18": (3, 32), "vggsnn": (2, 48), "digits_cnn": (1, 8),
          "digits_vgg": (1, 8), "spikformer": (1, 8), "spikformer-4-384": (3, 32)}
T, NUM_CLASSES = 4, 10
GPU_MODELS = {"vgg16": VGG16_CFG, "vggsnn": VGGSNN_CFG}
GPU_BATCH = 64
GPU_REP_MS = 500
MIB = 2**20


class _BitMeter(SavedTensors):
    """SavedTensors that also remembers which storages hold packed spikes."""

    def __init__(self):
        super().__init__()
        self.bit_storages = set()

    def record(self, kept):
        super().record(kept)
        if not isinstance(kept, torch.Tensor):
            self.bit_storages.add(kept.packed.bits.untyped_storage().data_ptr())


def cpu_rows(models, batch):
    for name in models:
        torch.manual_seed(0)
        model = build_model(name, num_classes=NUM_CLASSES, in_channels=INPUTS[name][0], T=T, backend="torch")
        kept = {}
        for memory_saving in (False, True):
            channels, size = INPUTS[name]
            model.memory_saving = memory_saving
            x = direct_encode(torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0)), T)
            state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
            start = time.perf_counter()
            with _BitMeter() as meter:
                model(x)
            seconds = time.perf_counter() - start
            activations = {p: s.nbytes() for p, s in meter.storages.items() if p not in state}
            params = sum(s.nbytes() for p, s in meter.storages.items() if p in state)
            bits = sum(n for p, n in activations.items() if p in meter.bit_storages)
            kept[memory_saving] = sum(activations.values())
            yield {
                "part": "saved", "model": name, "T": T, "batch": batch, "image": f"{channels}x{size}x{size}",
                "dtype": "fp32", "memory_saving": memory_saving,
                "saved_bytes_per_sample": kept[memory_saving] / batch,
                "mib_per_sample": kept[memory_saving] / batch / MIB,
                "spike_bits_mib_per_sample": bits / batch / MIB,
                "with_params_mib_per_sample": (kept[memory_saving] + params) / batch / MIB,
                "x_plain": kept[memory_saving] / kept[False], "forward_s": seconds,
            }


# ---------------------------------------------------------------------------------------------
# GPU: peak memory and step time against SpikingJelly.
# ---------------------------------------------------------------------------------------------


class SJUnit(nn.Sequential):
    """SpikingJelly's conv-BN-LIF unit (the type memopt checkpoints)."""


def spikingjelly_vgg(cfg, in_channels, input_size):
    """SpikingJelly's equivalent of our VGG(cfg): the same layers, folded over T by SeqToANNContainer."""
    from spikingjelly.activation_based import layer, neuron, surrogate

    layers, channels, size = [], in_channels, input_size
    for v in cfg:
        if v == "A":
            layers.append(layer.SeqToANNContainer(nn.AvgPool2d(2)))
            size //= 2
        else:
            conv_bn = layer.SeqToANNContainer(nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v))
            lif = neuron.LIFNode(tau=2.0, decay_input=True, v_reset=None, surrogate_function=surrogate.ATan(),
                                 step_mode="m")
            layers.append(SJUnit(conv_bn, lif))
            channels = v
    return nn.Sequential(*layers, nn.Flatten(2), nn.Linear(channels * size * size, NUM_CLASSES))


def gpu_providers(name, device):
    """(provider, model, reset) for each variant; reset() clears SpikingJelly's stored membranes."""
    channels, size = INPUTS[name]
    for memory_saving in (False, True):
        model = build_model(name, num_classes=NUM_CLASSES, in_channels=channels, T=T, surrogate="atan",
                            memory_saving=memory_saving).to(device)
        yield f"ours, memory saving {'on' if memory_saving else 'off'}", model, lambda: None
    if package_version("spikingjelly") is None:
        print("  spikingjelly is not installed: its rows are skipped")
        return
    from spikingjelly.activation_based import functional, memopt

    for level in (0, 1):
        model = spikingjelly_vgg(GPU_MODELS[name], channels, size).to(device)
        if level:
            example = direct_encode(torch.rand(GPU_BATCH, channels, size, size, device=device), T)
            memopt.optimize_memory(model, SJUnit, lambda m: m(example), level=level)
            functional.reset_net(model)
        yield (f"spikingjelly, memopt level {level}", model, lambda model=model: functional.reset_net(model))


def gpu_rows(models, device):
    for name in models:
        if name not in GPU_MODELS:
            continue
        channels, size = INPUTS[name]
        x = direct_encode(torch.rand(GPU_BATCH, channels, size, size, device=device), T)
        for provider, model, reset in gpu_providers(name, device):

            def step(model=model, reset=reset):
                reset()
                out = model(x)
                out = out.mean(0) if out.dim() == 3 else out  # SpikingJelly's VGG returns [T, B, classes]
                out.sum().backward()

            step()  # warm-up: compilation, cuDNN autotuning, memopt's first call
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            median, p20, p80 = time_ms(step, device, GPU_REP_MS)
            yield {"part": "gpu", "model": name, "provider": provider, "T": T, "batch": GPU_BATCH, "dtype": "fp32",
                   "peak_mib": peak / MIB, "median_ms": median, "p20_ms": p20, "p80_ms": p80}
            del model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch", type=int, default=8, help="CPU part: samples per forward (default 8)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "memory-cpu.jsonl")
    parser.add_argument("--gpu-out", type=Path, default=BENCH_DIR / "results" / "memory-cuda.jsonl")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part (saved bytes)")
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    context = dict(run_metadata(cpu), cpu_threads=torch.get_num_threads())
    if not args.no_cpu:
        print(f"{'model':<11} {'saving':<6} {'MiB/sample':>10} {'of which bits':>13} {'x plain':>8} "
              f"{'+params/batch':>13}")
    with args.out.open("a") as f:
        for row in [] if args.no_cpu else cpu_rows(args.models, args.batch):
            f.write(json.dumps({**row, **context}) + "\n")
            print(f"{row['model']:<11} {'on' if row['memory_saving'] else 'off':<6} {row['mib_per_sample']:>10.3f} "
                  f"{row['spike_bits_mib_per_sample']:>13.3f} {row['x_plain']:>8.3f} "
                  f"{row['with_params_mib_per_sample']:>13.2f}")
    if not torch.cuda.is_available():
        print("CUDA is not available: skipped the GPU part (peak memory and step time against SpikingJelly)")
        return
    device = torch.device("cuda")
    context = run_metadata(device)
    with args.gpu_out.open("a") as f:
        for row in gpu_rows(args.models, device):
            f.write(json.dumps({**row, **context}) + "\n")
            print(f"{row['model']:<8} {row['provider']:<32} peak {row['peak_mib']:>8.1f} MiB  "
                  f"step {row['median_ms']:>8.2f} ms")


if __name__ == "__main__":
    main()
