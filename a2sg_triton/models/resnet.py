"""Spiking ResNets with basic blocks: ResNet-19 (tdBN paper) and CIFAR-style ResNet-18."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import nn

from ..memory.saving import residual_add
from .layers import RESIDUAL_ALPHA, NeuronConfig, SpikingClassifier, TimeDistributed, conv_bn, conv_bn_lif


class BasicBlock(nn.Module):
    """conv3x3-tdBN-LIF-conv3x3-tdBN plus the shortcut, then LIF on the sum.

    The shortcut is the identity, or conv1x1-tdBN when the stride or width changes. Both BN layers
    that feed the sum use tdBN's alpha = 1/sqrt(2).

    Args:
        in_channels: input channels.
        channels: output channels.
        stride: of the first conv and the shortcut.
        neuron: the spiking layers' settings.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_channels, channels, 3, stride, v_th=neuron.v_th, backend=neuron.backend),
            neuron.make(),
            conv_bn(channels, channels, 3, alpha=RESIDUAL_ALPHA, v_th=neuron.v_th, backend=neuron.backend),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = conv_bn(in_channels, channels, 1, stride, alpha=RESIDUAL_ALPHA, v_th=neuron.v_th,
                                    backend=neuron.backend)
        self.lif = neuron.make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, in_channels, H, W] -> spikes [T, B, channels, H/stride, W/stride]."""
        return self.lif(residual_add(self.residual(x), self.shortcut(x)))


class ResNet(SpikingClassifier):
    """conv3x3-tdBN-LIF stem, stages of basic blocks, global average pooling, then the classifier.

    ``stages`` is a sequence of (channels, blocks, stride); the stride applies to a stage's first
    block. With ``hidden``, the classifier is FC(hidden)-tdBN-LIF-FC(num_classes), else one FC.

    Args:
        stem_channels: the stem conv's output channels.
        stages: (channels, blocks, stride) per stage.
        num_classes: classifier outputs.
        in_channels: input image channels.
        neuron: the spiking layers' settings (T, surrogate, threshold, ...).
        hidden: the width of an extra FC-tdBN-LIF before the classifier, or None.
    """

    def __init__(self, stem_channels: int, stages: Sequence[tuple[int, int, int]], num_classes: int,
                 in_channels: int, neuron: NeuronConfig, hidden: Optional[int] = None) -> None:
        super().__init__(neuron.T, backend=neuron.backend)
        layers: list[nn.Module] = [conv_bn_lif(in_channels, stem_channels, neuron)]
        channels = stem_channels
        for width, blocks, stride in stages:
            stage: list[nn.Module] = []
            for i in range(blocks):
                stage.append(BasicBlock(channels, width, stride if i == 0 else 1, neuron))
                channels = width
            layers.append(nn.Sequential(*stage))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [TimeDistributed(nn.AdaptiveAvgPool2d(1))]
        if hidden is not None:
            # FC-tdBN-LIF, the FC as a 1x1 conv on the pooled Cx1x1 map. Without the BN the pooled
            # spike rates (a few %) never bring this LIF near its threshold: no gradient at all
            # would reach the layers below at initialisation.
            head += [conv_bn(channels, hidden, 1, v_th=neuron.v_th, backend=neuron.backend), neuron.make()]
            channels = hidden
        head += [nn.Flatten(2), nn.Linear(channels, num_classes)]
        self.classifier = nn.Sequential(*head)


def resnet19(num_classes: int, in_channels: int, neuron: NeuronConfig) -> ResNet:
    """ResNet-19 of Zheng et al. 2021 (tdBN), with its FC256 (here FC256-tdBN-LIF) before the classifier."""
    stages = ((128, 3, 1), (256, 3, 2), (512, 2, 2))
    return ResNet(128, stages, num_classes, in_channels, neuron, hidden=256)


def resnet18(num_classes: int, in_channels: int, neuron: NeuronConfig) -> ResNet:
    """CIFAR-style ResNet-18: 3×3 stride-1 stem without max pooling, stages of 2 blocks."""
    stages = ((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2))
    return ResNet(64, stages, num_classes, in_channels, neuron)
