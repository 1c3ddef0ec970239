"""nn.Module wrappers of the ops."""

import torch

from .lif import lif_multistep
from .surrogate import check_surrogate
from .utils import BACKENDS, check_beta, check_flag, check_real, check_reset


class LIF(torch.nn.Module):
    """Multistep LIF neuron on [T, B, ...] input with a per-timestep surrogate width.

    The paper's neuron (Eq. A1): decay = input_scale = 1/tau, so tau=2 gives 0.5 and 0.5; pass
    ``decay``/``input_scale`` for other conventions. The width beta is a buffer of shape [T]
    (saved in ``state_dict``) that the A²SG controller rewrites.
    """

    def __init__(self, T, surrogate="box", tau=2.0, v_th=1.0, beta_init=0.5, h=0.5, reset="soft",
                 detach_reset=False, backend="auto", *, decay=None, input_scale=None, v_reset=0.0):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T must be an int >= 1, got {T!r}")
        check_real("tau", tau)
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        check_surrogate(surrogate, h)
        check_reset(reset)
        check_flag("detach_reset", detach_reset)
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.T, self.surrogate, self.tau, self.h = T, surrogate, float(tau), float(h)
        self.v_th, self.v_reset = check_real("v_th", v_th), check_real("v_reset", v_reset)
        self.decay = 1.0 / tau if decay is None else check_real("decay", decay)
        self.input_scale = 1.0 / tau if input_scale is None else check_real("input_scale", input_scale)
        self.reset, self.detach_reset, self.backend = reset, detach_reset, backend
        self.register_buffer("beta", check_beta(beta_init, T, torch.device("cpu"), torch.float32))
        # Set by a2sg_triton.A2SG: the layer's search site, and whether the next backward searches.
        self.search_key = -1
        self.search_armed = False

    def _apply(self, fn, recurse=True):
        """Moves beta with the module but keeps it fp32: model.half() would otherwise round the
        searched widths (0.37 -> 0.3691 in bf16)."""
        beta = self.beta
        super()._apply(fn, recurse)
        self.beta = beta.to(self.beta.device)
        return self

    def forward(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] != self.T:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"LIF expects input [T={self.T}, B, ...], got {shape}")
        search_key = -1
        if self.search_armed and torch.is_grad_enabled():
            self.search_armed = False  # this forward's backward consumes the armed search
            search_key = self.search_key
        return lif_multistep(
            x, self.beta, self.surrogate, decay=self.decay, input_scale=self.input_scale, v_th=self.v_th,
            reset=self.reset, v_reset=self.v_reset, detach_reset=self.detach_reset, h=self.h,
            backend=self.backend, _search_key=search_key,
        )

    def extra_repr(self):
        return (f"T={self.T}, surrogate={self.surrogate!r}, tau={self.tau}, v_th={self.v_th}, "
                f"reset={self.reset!r}, detach_reset={self.detach_reset}, backend={self.backend!r}")
