"""Spikformer (Zhou et al., ICLR 2023, "Spikformer: When Spiking Neural Network Meets Transformer").

A spiking patch splitting (SPS) stem turns the image into a map of spike tokens, L encoder blocks of
spiking self-attention (SSA) and a spiking MLP follow, each with a residual connection, and the
classifier reads the mean over the tokens at every timestep (docs/models.md, "spikformer", where
every choice we had to make is listed).

Tokens stay on their H×W map, channels first ([T, B, D, H, W]): the per-token linear layers are 1×1
convolutions without bias, each followed by tdBN (a BatchNorm over T×B×tokens per channel, which
is Spikformer's BatchNorm1d over the tokens), so every unit is the zoo's conv-tdBN-neuron and memory
saving applies as in the CNNs.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import NeuronConfig, SpikingClassifier, TimeDistributed, conv_bn, conv_bn_lif

# Spikformer's attention scale: 0.125 whatever the head width, since the spike products need no
# softmax-style 1/sqrt(d) normalisation.
ATTENTION_SCALE = 0.125


def _linear_bn_neuron(in_features: int, out_features: int, neuron: NeuronConfig) -> nn.Sequential:
    """Linear-BN-neuron on every token: a bias-free 1×1 conv, tdBN, then the spiking layer."""
    return nn.Sequential(conv_bn(in_features, out_features, 1, v_th=neuron.v_th, backend=neuron.backend),
                         neuron.make())


class SpikingSelfAttention(nn.Module):
    """SSA: Q, K, V = neuron(BN(Linear(x))) per head, then neuron(Q Kᵀ V · scale) at half the model's
    threshold (0.5 at v_th = 1, as in Spikformer), no softmax, then the Linear-BN-neuron projection.

    Q, K and V are spikes, so Q Kᵀ V counts coincidences exactly (integers, exact in fp32 up to
    2^24); it is computed as Q (Kᵀ V), d² work per token instead of N·d, the same numbers.
    """

    def __init__(self, dim: int, heads: int, neuron: NeuronConfig, scale: float = ATTENTION_SCALE) -> None:
        super().__init__()
        self.heads, self.scale = heads, scale
        self.q, self.k, self.v = (_linear_bn_neuron(dim, dim, neuron) for _ in range(3))
        self.attention = neuron.make(v_th=neuron.v_th / 2)
        self.proj = _linear_bn_neuron(dim, dim, neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spike tokens [T, B, dim, H, W] -> the projection's spikes, the same shape."""
        T, B, D, H, W = x.shape
        # [T, B, heads, d, N]: each head's Q, K, V transposed (features by tokens)
        q, k, v = (f(x).reshape(T, B, self.heads, D // self.heads, H * W) for f in (self.q, self.k, self.v))
        attended = (v @ k.transpose(-1, -2)) @ q  # (Q (Kᵀ V))ᵀ = (Vᵀ K) Qᵀ
        return self.proj(self.attention(attended.reshape(T, B, D, H, W) * self.scale))


class EncoderBlock(nn.Module):
    """x + SSA(x), then that plus MLP(that); the MLP is Linear-BN-neuron twice (dim -> hidden -> dim).
    The residual adds the branches' spikes to the block's input, as Spikformer does."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, neuron: NeuronConfig) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        self.attention = SpikingSelfAttention(dim, heads, neuron)
        self.mlp = nn.Sequential(_linear_bn_neuron(dim, hidden, neuron), _linear_bn_neuron(hidden, dim, neuron))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, dim, H, W] -> the same shape."""
        x = x + self.attention(x)
        return x + self.mlp(x)


class SpikingPatchSplitting(nn.Module):
    """SPS: four conv3x3-BN-neuron stages with D/8, D/4, D/2 and D channels, the last ``pools`` of them
    followed by 3×3 max pooling with stride 2 (Spikformer: 2 on CIFAR, 4 on ImageNet), then the
    relative position embedding conv3x3-BN-neuron, added to its input."""

    def __init__(self, in_channels: int, dim: int, pools: int, neuron: NeuronConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        widths = (dim // 8, dim // 4, dim // 2, dim)
        for i, width in enumerate(widths):
            layers.append(conv_bn_lif(channels, width, neuron))
            if i >= len(widths) - pools:
                layers.append(TimeDistributed(nn.MaxPool2d(3, 2, 1)))
            channels = width
        self.stages = nn.Sequential(*layers)
        self.position = conv_bn_lif(dim, dim, neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images or frames [T, B, in_channels, H, W] -> tokens [T, B, dim, H', W'] (each of the
        ``pools`` poolings halves H and W, rounding up)."""
        x = self.stages(x)
        return x + self.position(x)


class Spikformer(SpikingClassifier):
    """SPS, ``depth`` encoder blocks of width ``dim`` with ``heads`` heads and MLP width
    ``mlp_ratio * dim``, the mean over tokens, then one linear classifier (per timestep, averaged over
    T by SpikingClassifier). ``dim`` must be a multiple of 8 (the SPS widths) and of ``heads``."""

    def __init__(self, num_classes: int, in_channels: int, neuron: NeuronConfig, *, depth: int, dim: int, heads: int,
                 mlp_ratio: int = 4, pools: int = 2) -> None:
        super().__init__(neuron.T, backend=neuron.backend)
        for name, value in (("depth", depth), ("dim", dim), ("heads", heads), ("mlp_ratio", mlp_ratio)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(pools, bool) or not isinstance(pools, int) or not 0 <= pools <= 4:
            raise ValueError(f"pools must be an int in [0, 4], got {pools!r}")
        if dim % 8 or dim % heads:
            raise ValueError(f"dim must be a multiple of 8 and of heads, got dim={dim}, heads={heads}")
        blocks = [EncoderBlock(dim, heads, mlp_ratio, neuron) for _ in range(depth)]
        self.features = nn.Sequential(SpikingPatchSplitting(in_channels, dim, pools, neuron), *blocks)
        self.classifier = nn.Sequential(TimeDistributed(nn.AdaptiveAvgPool2d(1)), nn.Flatten(2),
                                        nn.Linear(dim, num_classes))


def spikformer(num_classes: int, in_channels: int, neuron: NeuronConfig) -> Spikformer:
    """A small Spikformer for the 8×8 digits: width 64, one block of 4 heads, one pooling (16 tokens)."""
    return Spikformer(num_classes, in_channels, neuron, depth=1, dim=64, heads=4, pools=1)


def spikformer_4_384(num_classes: int, in_channels: int, neuron: NeuronConfig) -> Spikformer:
    """Spikformer-4-384, the paper's CIFAR configuration: 4 blocks of width 384, 12 heads, MLP ratio 4,
    two poolings (32×32 -> 64 tokens)."""
    return Spikformer(num_classes, in_channels, neuron, depth=4, dim=384, heads=12, pools=2)
