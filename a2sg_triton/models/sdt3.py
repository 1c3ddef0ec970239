"""sdt3: a spike-driven transformer in the style of E-SpikeFormer / Spike-driven Transformer v3
(Yao et al., "Scaling Spike-driven Transformer with Efficient Spike Firing Approximation Training",
TPAMI 2025), with I-LIF neurons by default (docs/models.md says where we had to choose).

Convolutional stages (downsampling conv-BN, then blocks of a spiking separable convolution and a
spiking channel MLP) and then transformer stages (separable convolution, spike-driven linear
attention and MLP). Every residual adds pre-spike values (the "membrane shortcut"): each branch
starts with its own neuron. Tensors between layers are [T, B, C, H, W].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import NeuronConfig, SpikingClassifier, conv_bn


class SepConv(nn.Module):
    """Spiking inverted separable convolution (MobileNetV2's, with a neuron before each conv):
    pointwise up to ``expansion`` × channels, depthwise k×k, pointwise back. ``neuron``: a
    NeuronConfig, whose threshold the tdBNs scale to."""

    def __init__(self, channels: int, neuron: NeuronConfig, kernel_size: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = expansion * channels
        self.body = nn.Sequential(neuron.make(), _conv_bn(channels, hidden, neuron), neuron.make(),
                                  _conv_bn(hidden, hidden, neuron, kernel_size, groups=hidden), neuron.make(),
                                  _conv_bn(hidden, channels, neuron))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, channels, H, W] -> [T, B, channels, H, W] (pre-spike values)."""
        return self.body(x)


def _conv_bn(in_channels: int, out_channels: int, neuron: NeuronConfig, kernel_size: int = 1, stride: int = 1,
             groups: int = 1) -> nn.Module:
    """conv-tdBN at the neurons' threshold (alpha 1: E-SpikeFormer's plain BN at v_th = 1)."""
    return conv_bn(in_channels, out_channels, kernel_size, stride, v_th=neuron.v_th, backend=neuron.backend,
                   groups=groups)


class ChannelMLP(nn.Module):
    """neuron, conv to ``ratio`` × channels, BN, neuron, conv back, BN (3×3 convs in the convolutional
    stages, 1×1 — a per-token MLP — in the transformer stages)."""

    def __init__(self, channels: int, neuron: NeuronConfig, ratio: int = 4, kernel_size: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(neuron.make(), _conv_bn(channels, ratio * channels, neuron, kernel_size),
                                  neuron.make(), _conv_bn(ratio * channels, channels, neuron, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, channels, H, W] -> [T, B, channels, H, W] (pre-spike values)."""
        return self.body(x)


class SpikeDrivenAttention(nn.Module):
    """Spike-driven linear self-attention: Q, K, V = neuron(BN(conv1×1(neuron(x)))), per head
    attention = Q (Kᵀ V) · scale (no softmax: the product of spike counts is reorderable, so the cost
    is linear in the tokens), then a neuron and a 1×1 conv-BN projection. V (and so the attention)
    is ``v_ratio`` × channels wide. Counts are divided by ``levels`` (I-LIF's D; 1 for binary
    spikes) so Q, K, V lie in [0, 1]."""

    def __init__(self, channels: int, heads: int, neuron: NeuronConfig, levels: int = 1, v_ratio: int = 4) -> None:
        super().__init__()
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or channels % heads:
            raise ValueError(f"heads must be an int >= 1 that divides the width {channels}, got {heads!r}")
        self.heads, self.levels = heads, levels
        # E-SpikeFormer's linear attention uses twice the usual 1/sqrt(head_dim)
        self.scale = 2 * (channels // heads) ** -0.5
        self.input_neuron = neuron.make()
        self.q, self.k = _conv_bn(channels, channels, neuron), _conv_bn(channels, channels, neuron)
        self.v = _conv_bn(channels, v_ratio * channels, neuron)
        self.q_neuron, self.k_neuron, self.v_neuron = neuron.make(), neuron.make(), neuron.make()
        self.attention_neuron = neuron.make()
        self.proj = _conv_bn(v_ratio * channels, channels, neuron)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, heads, H*W, C/heads]"""
        T, B, C = x.shape[:3]
        return x.reshape(T, B, self.heads, C // self.heads, -1).transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, channels, H, W] -> [T, B, channels, H, W] (the projection's pre-spike values)."""
        T, B, _, H, W = x.shape
        x = self.input_neuron(x)
        q, k, v = (self._heads(neuron(conv(x)) / self.levels) for conv, neuron in
                   ((self.q, self.q_neuron), (self.k, self.k_neuron), (self.v, self.v_neuron)))
        attention = q @ (k.transpose(-1, -2) @ v) * self.scale  # [T, B, heads, H*W, C_v/heads]
        attention = attention.transpose(-1, -2).reshape(T, B, -1, H, W)
        return self.proj(self.attention_neuron(attention))


class ConvBlock(nn.Module):
    """x + SepConv(x) with a ``kernel_size`` depthwise conv, then that plus a 3×3 ChannelMLP."""

    def __init__(self, channels: int, neuron: NeuronConfig, mlp_ratio: int, kernel_size: int) -> None:
        super().__init__()
        self.sepconv = SepConv(channels, neuron, kernel_size)
        self.mlp = ChannelMLP(channels, neuron, mlp_ratio, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, channels, H, W] -> the same shape."""
        x = x + self.sepconv(x)
        return x + self.mlp(x)


class TransformerBlock(nn.Module):
    """x + SepConv(x), + SpikeDrivenAttention, + a 1×1 ChannelMLP, each a membrane shortcut."""

    def __init__(self, channels: int, heads: int, neuron: NeuronConfig, mlp_ratio: int, levels: int) -> None:
        super().__init__()
        self.sepconv = SepConv(channels, neuron, 3)
        self.attention = SpikeDrivenAttention(channels, heads, neuron, levels)
        self.mlp = ChannelMLP(channels, neuron, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, channels, H, W] -> the same shape."""
        x = x + self.sepconv(x)
        x = x + self.attention(x)
        return x + self.mlp(x)


class SDT3(SpikingClassifier):
    """Stages of (channels, depth, stride): the first ``conv_stages`` hold ``ConvBlock``s (separable
    convolution with ``conv_kernel``), the rest ``TransformerBlock``s. Each stage opens with a
    (neuron,) conv-BN that sets its width and stride (the first stage's has no neuron: it encodes the
    input, with ``stem_kernel``). The classifier averages the last map over space, passes it through a
    neuron and a linear layer; the logits are the mean over T. ``neuron``: a NeuronConfig.

    Args:
        num_classes: the classifier's outputs.
        in_channels: the input's channels.
        neuron: the spiking layers' settings.
        stages: (channels, depth, stride) per stage.
        conv_stages: how many of the first stages are convolutional.
        heads: attention heads of the transformer stages.
        mlp_ratio: the channel MLPs' expansion.
        stem_kernel: the first conv's kernel side.
        conv_kernel: the depthwise kernel side of the convolutional stages' separable convs.
    """

    def __init__(self, num_classes: int, in_channels: int, neuron: NeuronConfig, stages: Sequence[tuple[int, int, int]],
                 conv_stages: int, heads: int, *, mlp_ratio: int = 4, stem_kernel: int = 3,
                 conv_kernel: int = 7) -> None:
        super().__init__(neuron.T, backend=neuron.backend)
        levels = neuron.levels if neuron.neuron == "ilif" else 1
        layers: list[nn.Module] = []
        width = in_channels
        for i, (channels, depth, stride) in enumerate(stages):
            layers += ([] if i == 0 else [neuron.make()]) + [
                _conv_bn(width, channels, neuron, stem_kernel if i == 0 else 3, stride)]
            layers += [ConvBlock(channels, neuron, mlp_ratio, conv_kernel) if i < conv_stages else
                       TransformerBlock(channels, heads, neuron, mlp_ratio, levels) for _ in range(depth)]
            width = channels
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(_GlobalAverage(), neuron.make(), nn.Linear(width, num_classes))


class _GlobalAverage(nn.Module):
    """[T, B, C, H, W] -> [T, B, C]"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, C], the mean over space."""
        return x.mean((-2, -1))


def sdt3(num_classes: int, in_channels: int, neuron: NeuronConfig) -> SDT3:
    """A small sdt3 for the 8×8 digits: widths 16 (8×8) and 32 (4×4) in convolutional stages, 64
    (2×2, 4 tokens) in one transformer stage of one block."""
    return SDT3(num_classes, in_channels, neuron, stages=((16, 1, 1), (32, 1, 2), (64, 1, 2)), conv_stages=2,
                heads=2, conv_kernel=3)


def sdt3_10m(num_classes: int, in_channels: int, neuron: NeuronConfig) -> SDT3:
    """E-SpikeFormer's 10M model (widths 48, 96, 192, 240, eight heads) for 224×224 ImageNet: a 7×7
    stride-2 stem at half the first width, convolutional stages of 1, 1 and 2 blocks, transformer
    stages of 6 and 2 blocks, each stage halving the map but the last."""
    return SDT3(num_classes, in_channels, neuron, stages=((24, 1, 2), (48, 1, 2), (96, 2, 2), (192, 6, 2), (240, 2, 1)),
                conv_stages=3, heads=8, stem_kernel=7)
