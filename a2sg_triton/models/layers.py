"""Building blocks of the spiking model zoo: time folding, tdBN, conv-tdBN-LIF and direct encoding.

Every tensor between layers is [T, B, ...]. Stateless layers (conv, BN, pooling) run once on the
folded [T*B, ...] tensor; the LIF layers take [T, B, ...] as they are; ``nn.Linear`` needs neither.
"""

import math
from dataclasses import KW_ONLY, dataclass
from typing import Any, Optional

import torch
from torch import nn

from .. import memory
from ..nn import ILIF, LIF, PLIF, SearchedNeuron
from ..ops.tdbn_lif import TdBNFunction, TdBNRecipe, tdbn_backend, tdbn_statistics
from ..ops.backend import BACKENDS, is_compiling
from ..ops.checks import check_flag

# tdBN's alpha for the BN layers right before a residual addition: the sum of two branches of
# scale alpha*v_th each is then again on the scale of v_th.
RESIDUAL_ALPHA = 1 / math.sqrt(2)


# The neurons a zoo model can be built with (``NeuronConfig.neuron``, ``build_model(neuron=...)``).
NEURONS = ("lif", "plif", "ilif")


@dataclass(frozen=True)
class NeuronConfig:
    """The settings shared by every spiking layer of a model; tdBN scales to the same ``v_th``.

    ``neuron``: "lif" (``nn.LIF``, leak 1/tau), "plif" (``nn.PLIF``, a learnable leak that starts
    at 1/tau) or "ilif" (``nn.ILIF``, counts 0 … ``levels``, decay 1/tau as LIF's, input scale 1).
    ``make()`` builds one layer; ``v_th`` overrides the threshold of that one layer.
    """

    T: int
    surrogate: str = "asy"
    _: KW_ONLY
    tau: float = 2.0
    v_th: float = 1.0
    beta_init: float = 0.5
    h: float = 0.5
    backend: str = "auto"
    neuron: str = "lif"
    levels: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.neuron, str) or self.neuron not in NEURONS:
            raise ValueError(f"neuron must be one of {NEURONS}, got {self.neuron!r}")
        check_count("levels", self.levels)

    def make(self, v_th: Optional[float] = None) -> SearchedNeuron:
        """One spiking layer with these settings.

        Args:
            v_th: this layer's threshold (None: ``self.v_th``).

        Returns:
            An ``nn.LIF``, ``nn.PLIF`` or ``nn.ILIF`` (by ``neuron``).
        """
        v_th = self.v_th if v_th is None else v_th
        common: dict[str, Any] = dict(v_th=v_th, beta_init=self.beta_init, h=self.h, backend=self.backend)
        if self.neuron == "plif":
            return PLIF(self.T, self.surrogate, init_tau=self.tau, **common)
        if self.neuron == "ilif":
            return ILIF(self.T, self.surrogate, levels=self.levels, decay=1.0 / self.tau, **common)
        return LIF(self.T, self.surrogate, tau=self.tau, **common)


class TimeDistributed(nn.Sequential):
    """Runs stateless modules on [T, B, ...] by folding T into the batch ([T*B, ...]) and back.

    One call instead of T, and batch norm inside then takes its statistics over T×B×H×W, which is
    what tdBN prescribes. (SpikingJelly calls this ``SeqToANNContainer``.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, ...] -> [T, B, ...'] (the modules run on [T*B, ...])."""
        return super().forward(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class TdBatchNorm2d(nn.BatchNorm2d):
    """Threshold-dependent batch norm (tdBN, Zheng et al. 2021) on the folded [T*B, C, H, W] tensor.

    Plain BatchNorm2d over T×B×H×W whose scale starts at ``alpha * v_th`` (shift 0), so that
    pre-activations start on the scale of the firing threshold. tdBN's forward multiplies a fixed
    alpha*v_th and learns a scale initialised to 1; folding the constant into the initial weight
    is the same function at initialisation.

    Inside ``a2sg_triton.memory.memory_saving`` a training forward normalises with an explicit
    formula (Triton when ``backend`` resolves to it for the input, as the LIF's does) and records how,
    so that a LIF fed by the output recomputes it in backward instead of keeping u - v_th. The
    running statistics are updated exactly as BatchNorm2d updates them.
    """

    def __init__(self, num_features: int, *, alpha: float = 1.0, v_th: float = 1.0, backend: str = "auto") -> None:
        super().__init__(num_features)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.alpha, self.v_th, self.backend = float(alpha), float(v_th), backend
        nn.init.constant_(self.weight, self.alpha * self.v_th)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """[T*B, C, H, W] -> the normalised [T*B, C, H, W]."""
        context = None if is_compiling() else memory.active()
        if context is None or not (self.training and torch.is_grad_enabled()):
            return super().forward(y)
        self._check_input_dim(y)
        mean, invstd = tdbn_statistics(self, y)
        backend = tdbn_backend(self.backend, y)
        with torch.no_grad():
            scale = invstd * self.weight
        tensors = (y, self.weight, self.bias, mean, invstd, scale)
        z = TdBNFunction.apply(*tensors, self.eps, backend)
        context.add_recipe(z, TdBNRecipe(self.eps, backend), tensors)
        return z

    def extra_repr(self) -> str:
        """BatchNorm2d's, plus alpha and v_th."""
        return f"{super().extra_repr()}, alpha={self.alpha:.4g}, v_th={self.v_th:g}"


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, *, alpha: float = 1.0,
            v_th: float = 1.0, backend: str = "auto", groups: int = 1) -> TimeDistributed:
    """conv (same padding, no bias: the BN shift replaces it) then tdBN, folded over time.

    Args:
        in_channels: the conv's input channels.
        out_channels: its output channels.
        kernel_size: its (odd) kernel side.
        stride: its stride.
        alpha: tdBN's alpha (its scale starts at alpha * v_th).
        v_th: the threshold tdBN scales to.
        backend: tdBN's backend (``TdBatchNorm2d``).
        groups: the conv's groups.

    Returns:
        [T, B, in_channels, H, W] -> [T, B, out_channels, H / stride, W / stride].
    """
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, groups=groups,
                     bias=False)
    return TimeDistributed(conv, TdBatchNorm2d(out_channels, alpha=alpha, v_th=v_th, backend=backend))


def conv_bn_lif(in_channels: int, out_channels: int, neuron: NeuronConfig, stride: int = 1) -> nn.Sequential:
    """conv3x3-tdBN-neuron (LIF or PLIF, ``neuron.make()``), the unit every CNN here is made of.

    Args:
        in_channels: the conv's input channels.
        out_channels: its output channels.
        neuron: the spiking layer's settings.
        stride: the conv's stride.

    Returns:
        [T, B, in_channels, H, W] -> spikes [T, B, out_channels, H / stride, W / stride].
    """
    return nn.Sequential(conv_bn(in_channels, out_channels, 3, stride, v_th=neuron.v_th, backend=neuron.backend),
                         neuron.make())


class SpikingClassifier(nn.Module):
    """``features`` then ``classifier`` on [T, B, C, H, W]; the logits [B, classes] are the mean over
    T of the per-timestep classifier outputs. Subclasses build the two.

    ``memory_saving`` (an attribute, switch it any time): True runs the forward inside
    ``a2sg_triton.memory.memory_saving``, with ``backend`` packing the spikes (docs/memory.md); None
    (the default) does so for CPU input only: on a GPU it cost +125% of an H200 vgg16 step
    (docs/memory.md), so it stays off there until a GPU measurement shows it within +10%.
    """

    features: nn.Module  # set by the subclass
    classifier: nn.Module

    def __init__(self, T: int, *, memory_saving: Optional[bool] = None, backend: str = "auto") -> None:
        super().__init__()
        self.T = T
        self.memory_saving = None if memory_saving is None else check_flag("memory_saving", memory_saving)
        self.backend = backend

    def saves_memory(self, x: torch.Tensor) -> bool:
        """Whether a forward on x runs inside ``memory_saving``: the attribute, or with None
        ("auto") for CPU input only."""
        return x.device.type == "cpu" if self.memory_saving is None else bool(self.memory_saving)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> logits [B, classes].

        Raises:
            ValueError: x is not 5-d with T timesteps.
        """
        if x.dim() != 5 or x.shape[0] != self.T:
            raise ValueError(f"{type(self).__name__} expects input [T={self.T}, B, C, H, W], got "
                             f"{list(x.shape)}; direct_encode(images, T) turns [B, C, H, W] into that")
        if self.saves_memory(x) and not is_compiling():
            with memory.memory_saving(backend=self.backend):
                return self.classifier(self.features(x)).mean(0)
        return self.classifier(self.features(x)).mean(0)


def direct_encode(x: torch.Tensor, T: int) -> torch.Tensor:
    """Static input [B, ...] -> [T, B, ...]: the same frame at every step (direct encoding).

    A view with stride 0 over T, no copy; the first layer's time fold copies it once.

    Args:
        x: [B, ...].
        T: timesteps, an int >= 1.

    Returns:
        [T, B, ...], a view of x.
    """
    check_count("T", T)
    return x.unsqueeze(0).expand(T, *x.shape)


def model_input(x: torch.Tensor, T: int) -> torch.Tensor:
    """A loader batch -> the model's input [T, B, ...]: sequences [B, T, C, H, W] are transposed,
    static input [B, C, H, W] is direct-encoded (repeated over T).

    Args:
        x: [B, T, C, H, W] or [B, C, H, W].
        T: timesteps (for static input).

    Returns:
        [T, B, C, H, W], a view of x.
    """
    return x.transpose(0, 1) if x.dim() == 5 else direct_encode(x, T)


def check_count(name: str, value: Any) -> None:
    """Checks that ``value`` is an int >= 1 (not a bool).

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
