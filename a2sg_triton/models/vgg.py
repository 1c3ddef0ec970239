"""Plain spiking VGG-style networks: VGG16 (CIFAR), VGGSNN (CIFAR10-DVS) and a small digits CNN."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional, Union

from torch import nn

from .layers import NeuronConfig, SpikingClassifier, TimeDistributed, conv_bn_lif

# A VGG configuration: conv widths (int) and "A" poolings, in order.
VGGConfig = Sequence[Union[int, Literal["A"]]]
_Config = tuple[Union[int, Literal["A"]], ...]

# A number is a conv3x3-tdBN-LIF with that many output channels; "A" is 2×2 average pooling
# (spiking VGGs pool by averaging: max pooling of binary spikes is an OR that loses the rate).
VGG16_CFG: _Config = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")
VGGSNN_CFG: _Config = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")
DIGITS_CFG: _Config = (16, "A", 32)
DIGITS_DEEP_CFG: _Config = (16, 16, 16, 16, "A", 32, 32, 32, 32, "A", 32, 32, 32, 32)
# name -> (cfg, the side of the square input that the classifier is sized for)
VGG_SPECS: dict[str, tuple[_Config, int]] = {"vgg16": (VGG16_CFG, 32), "vggsnn": (VGGSNN_CFG, 48),
                                             "digits_cnn": (DIGITS_CFG, 8), "digits_vgg": (DIGITS_DEEP_CFG, 8)}


def feature_size(cfg: VGGConfig, input_size: int) -> Optional[int]:
    """The side of the map that ``cfg`` leaves of a square input, or None when a pooling would get
    less than 2×2 (avg_pool2d's "Output size is too small")."""
    size = input_size
    for v in cfg:
        if v == "A":
            if size < 2:
                return None
            size //= 2
    return size


def vgg_accepts(name: str, image_size: int) -> bool:
    """Whether the VGG ``name`` runs on square images of side ``image_size``: every pooling has a map
    to pool and the classifier gets the width it was built for (vgg16: 32, also 33-63)."""
    cfg, input_size = VGG_SPECS[name]
    size = feature_size(cfg, image_size)
    return size is not None and size == feature_size(cfg, input_size)


class VGG(SpikingClassifier):
    """``cfg`` as above, then flatten and one linear classifier; ``input_size`` (square) sizes it.

    Args:
        cfg: conv widths and "A" poolings, e.g. VGG16_CFG.
        num_classes: classifier outputs.
        in_channels: input image channels.
        input_size: the side of the square input the classifier is sized for.
        neuron: the spiking layers' settings.

    Raises:
        ValueError: when a pooling would get a map smaller than 2×2.
    """

    def __init__(self, cfg: VGGConfig, num_classes: int, in_channels: int, input_size: int,
                 neuron: NeuronConfig) -> None:
        super().__init__(neuron.T, backend=neuron.backend)
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "A":
                layers.append(TimeDistributed(nn.AvgPool2d(2)))
            else:
                layers.append(conv_bn_lif(channels, v, neuron))
                channels = v
        size = feature_size(cfg, input_size)
        if size is None:
            raise ValueError(f"input_size {input_size} is too small for {cfg}: a 2×2 pooling would get less than 2×2")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(2), nn.Linear(channels * size * size, num_classes))


def _vgg(name: str, num_classes: int, in_channels: int, neuron: NeuronConfig) -> VGG:
    cfg, input_size = VGG_SPECS[name]
    return VGG(cfg, num_classes, in_channels, input_size, neuron)


def vgg16(num_classes: int, in_channels: int, neuron: NeuronConfig) -> VGG:
    """The 13-conv VGG16 for 32×32 inputs; five poolings leave 512×1×1 for the classifier."""
    return _vgg("vgg16", num_classes, in_channels, neuron)


def vggsnn(num_classes: int, in_channels: int, neuron: NeuronConfig) -> VGG:
    """VGGSNN of TET (Deng et al. 2022) for 48×48 CIFAR10-DVS frames: 512×3×3 reach the classifier."""
    return _vgg("vggsnn", num_classes, in_channels, neuron)


def digits_cnn(num_classes: int, in_channels: int, neuron: NeuronConfig) -> VGG:
    """conv-pool-conv for scikit-learn's 8×8 digits, 32×4×4 to the classifier; small enough that a
    training step at T=4, batch 64 takes about 10 ms on 2 CPU cores (docs/models.md)."""
    return _vgg("digits_cnn", num_classes, in_channels, neuron)


def digits_vgg(num_classes: int, in_channels: int, neuron: NeuronConfig) -> VGG:
    """A plain 12-conv VGG for the 8×8 digits (4 convs at 8×8, 4 at 4×4, 4 at 2×2; no residual path):
    deep enough that every gradient crosses 12 spiking layers, small enough for 2 CPU cores
    (docs/models.md)."""
    return _vgg("digits_vgg", num_classes, in_channels, neuron)
