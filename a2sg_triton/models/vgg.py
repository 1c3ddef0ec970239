"""Plain spiking VGG-style networks: VGG16 (CIFAR), VGGSNN (CIFAR10-DVS) and a small digits CNN."""

from torch import nn

from .layers import SpikingClassifier, TimeDistributed, conv_bn_lif

# A number is a conv3x3-tdBN-LIF with that many output channels; "A" is 2×2 average pooling
# (spiking VGGs pool by averaging: max pooling of binary spikes is an OR that loses the rate).
VGG16_CFG = (64, 64, "A", 128, 128, "A", 256, 256, 256, "A", 512, 512, 512, "A", 512, 512, 512, "A")
VGGSNN_CFG = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512, "A")
DIGITS_CFG = (16, "A", 32)


class VGG(SpikingClassifier):
    """``cfg`` as above, then flatten and one linear classifier; ``input_size`` (square) sizes it."""

    def __init__(self, cfg, num_classes, in_channels, input_size, neuron):
        super().__init__(neuron.T, backend=neuron.backend)
        layers, channels, size = [], in_channels, input_size
        for v in cfg:
            if v == "A":
                layers.append(TimeDistributed(nn.AvgPool2d(2)))
                size //= 2
            else:
                layers.append(conv_bn_lif(channels, v, neuron))
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(2), nn.Linear(channels * size * size, num_classes))


def vgg16(num_classes, in_channels, neuron):
    """The 13-conv VGG16 for 32×32 inputs; five poolings leave 512×1×1 for the classifier."""
    return VGG(VGG16_CFG, num_classes, in_channels, 32, neuron)


def vggsnn(num_classes, in_channels, neuron):
    """VGGSNN of TET (Deng et al. 2022) for 48×48 CIFAR10-DVS frames: 512×3×3 reach the classifier."""
    return VGG(VGGSNN_CFG, num_classes, in_channels, 48, neuron)


def digits_cnn(num_classes, in_channels, neuron):
    """conv-pool-conv for scikit-learn's 8×8 digits, 32×4×4 to the classifier; small enough that a
    training step at T=4, batch 64 takes about 10 ms on 2 CPU cores (docs/models.md)."""
    return VGG(DIGITS_CFG, num_classes, in_channels, 8, neuron)
