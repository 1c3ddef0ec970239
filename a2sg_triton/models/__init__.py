"""Spiking model zoo: VGG16, ResNet-19, ResNet-18, VGGSNN, a small and a deep digits CNN, Spikformer,
sdt3 (a spike-driven transformer after E-SpikeFormer; docs/models.md).

Every model takes [T, B, C, H, W] and returns logits [B, num_classes], the mean over T of the
per-timestep classifier outputs; ``direct_encode`` repeats static images over T. Every spiking
layer is an ``a2sg_triton.nn.LIF`` (``nn.PLIF`` with ``neuron="plif"``, ``nn.ILIF`` with ``neuron="ilif"``), so
``a2sg_triton.A2SG(model)`` finds them all.
"""

from collections.abc import Callable
from typing import Any, Optional

from .layers import (
    NEURONS,
    NeuronConfig,
    SpikingClassifier,
    TdBatchNorm2d,
    TimeDistributed,
    check_count,
    conv_bn,
    conv_bn_lif,
    direct_encode,
    model_input,
)
from .resnet import BasicBlock, ResNet, resnet18, resnet19
from .sdt3 import SDT3, sdt3, sdt3_10m
from .spikformer import Spikformer, spikformer, spikformer_4_384
from .vgg import VGG, VGG_SPECS, digits_cnn, digits_vgg, vgg16, vgg_accepts, vggsnn
from ..ops.checks import check_flag

_BUILDERS: dict[str, Callable[[int, int, NeuronConfig], SpikingClassifier]] = {
    "vgg16": vgg16, "resnet19": resnet19, "resnet18": resnet18, "vggsnn": vggsnn, "digits_cnn": digits_cnn,
    "digits_vgg": digits_vgg, "spikformer": spikformer, "spikformer-4-384": spikformer_4_384, "sdt3": sdt3,
    "sdt3-10m": sdt3_10m}
MODELS = tuple(_BUILDERS)


def _check_name(name: Any) -> None:
    """Raises a ValueError unless ``name`` is one of MODELS."""
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")


def accepts_image_size(name: str, image_size: int) -> bool:
    """Whether the model ``name`` (one of MODELS) runs on square images of side ``image_size``.

    The ResNets, Spikformers and sdt3s pool globally and take any size. A VGG-style model needs a map for each of its 2×2
    poolings and the classifier width that its natural input size sets (docs/models.md).

    Args:
        name: one of MODELS.
        image_size: the side of the square input, an int >= 1.

    Returns:
        Whether the model takes that size.

    Raises:
        ValueError: an unknown name or a bad size.
    """
    _check_name(name)
    check_count("image_size", image_size)
    return name not in VGG_SPECS or vgg_accepts(name, image_size)


def build_model(name: str, *, num_classes: int, in_channels: int, T: int, surrogate: str = "asy", tau: float = 2.0,
                v_th: float = 1.0, beta_init: float = 0.5, h: float = 0.5, backend: str = "auto",
                memory_saving: Optional[bool] = None, neuron: str = "lif", levels: int = 4) -> SpikingClassifier:
    """The model ``name`` (one of MODELS) with every spiking layer built as
    ``LIF(T, surrogate, tau=tau, v_th=v_th, beta_init=beta_init, h=h, backend=backend)``, or with
    ``neuron="plif"`` as ``PLIF(T, surrogate, init_tau=tau, ...)``, with ``neuron="ilif"`` as
    ``ILIF(T, surrogate, levels=levels, decay=1/tau, ...)`` (NEURONS; docs/models.md);
    ``memory_saving``: bit-packed spikes and tdBN -> LIF recomputation (docs/memory.md).

    Args:
        name: one of MODELS.
        num_classes: the classifier's outputs.
        in_channels: the input's channels.
        T: timesteps.
        surrogate, tau, v_th, beta_init, h, backend, neuron, levels: the spiking layers' settings
            (``NeuronConfig``).
        memory_saving: the model's ``memory_saving`` attribute: True, False, or None (on for CPU
            input, off on a GPU; ``SpikingClassifier``).

    Returns:
        The model: [T, B, in_channels, H, W] -> logits [B, num_classes].

    Raises:
        ValueError: an unknown name or a bad setting.
    """
    _check_name(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("T", T)):
        check_count(arg, value)
    config = NeuronConfig(T, surrogate=surrogate, tau=tau, v_th=v_th, beta_init=beta_init, h=h, backend=backend,
                          neuron=neuron, levels=levels)
    config.make()  # checks the neuron arguments before anything is built
    if memory_saving is not None:
        check_flag("memory_saving", memory_saving)
    model = _BUILDERS[name](num_classes, in_channels, config)
    model.memory_saving = memory_saving
    return model


__all__ = ["MODELS", "NEURONS", "BasicBlock", "accepts_image_size", "NeuronConfig", "ResNet", "SDT3", "Spikformer",
           "SpikingClassifier", "TdBatchNorm2d", "TimeDistributed", "VGG", "build_model", "conv_bn", "conv_bn_lif",
           "digits_cnn", "digits_vgg", "direct_encode", "model_input", "resnet18", "resnet19", "sdt3", "sdt3_10m",
           "spikformer", "spikformer_4_384", "vgg16", "vggsnn"]
