"""Argument checks shared by the ops and the modules: each raises a ValueError or TypeError naming
the argument before any kernel runs."""

import math
from typing import Any, Optional, Union

import torch

from .backend import is_compiling

RESETS = ("soft", "hard")
SAVE_DTYPES = (torch.float32, torch.bfloat16)


def check_tensor(name: str, value: Any, *, device: Optional[torch.device] = None, allow_float64: bool = True) -> None:
    """Checks that ``value`` is a floating-point tensor (not float64 unless allowed) on ``device``.

    Args:
        name: the argument's name, for the message.
        value: the argument.
        device: the device it must be on (None: any).
        allow_float64: whether float64 is accepted.

    Raises:
        TypeError: not a floating-point tensor, or float64 where it is not allowed.
        ValueError: on another device.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if not allow_float64 and value.dtype == torch.float64:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {value.dtype}")
    if device is not None and value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}; move them to one device")


def check_real(name: str, value: Any, *, minimum: Optional[float] = None) -> float:
    """Checks that ``value`` is a finite real number (int or float, not bool), >= ``minimum`` if given.

    Args:
        name: the argument's name, for the message.
        value: the argument.
        minimum: the smallest value accepted (None: no bound).

    Returns:
        ``value`` as a float.

    Raises:
        TypeError: not an int or float.
        ValueError: not finite, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    """Checks that ``value`` is a bool and returns it.

    Raises:
        TypeError: not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_reset(reset: Any) -> bool:
    """Checks ``reset`` (one of RESETS) and returns whether it is the hard reset.

    Raises:
        ValueError: not one of RESETS.
    """
    if not isinstance(reset, str) or reset not in RESETS:
        raise ValueError(f"reset must be one of {RESETS}, got {reset!r}")
    return reset == "hard"


def check_beta(beta: Union[float, torch.Tensor], T: int, device: torch.device, dtype: torch.dtype,
               levels: Optional[int] = None) -> torch.Tensor:
    """beta as a float or a tensor of shape [T] (or 0-d) -> [T] tensor of ``dtype``; with ``levels`` = D
    (I-LIF: one width per timestep and level) a float or a tensor of shape [D] or [T, D] -> [T, D].

    A tensor that is already right (contiguous [T] or [T, D] of ``dtype``) is used as it is, not copied:
    backward keeps it, and autograd's version counter refuses a backward after it was changed in
    place. Values of a tensor beta are checked when it lives on the CPU; on a GPU that check would
    force a device-to-host sync on every call, so there only its shape, dtype and device are checked.

    Args:
        beta: a float, or a tensor of shape [], [T] (or with ``levels``: [D] or [T, D]).
        T: timesteps.
        device: where the result goes (a tensor beta must already be there).
        dtype: the result's dtype.
        levels: I-LIF's D; None for one width per timestep.

    Returns:
        beta [T] (or [T, D]) of ``dtype`` on ``device``.

    Raises:
        TypeError: beta is neither a real number nor a floating-point tensor.
        ValueError: a wrong shape, device, a beta that requires grad, or a value that is not finite and > 0.
    """
    shape = (T,) if levels is None else (T, levels)
    if isinstance(beta, torch.Tensor):
        check_tensor("beta", beta, device=device)
        if beta.requires_grad:
            raise ValueError("beta must not require grad: the surrogate width is not learnable here (A2SG "
                             "searches it); pass beta.detach()")
        if levels is None and (beta.dim() > 1 or (beta.dim() == 1 and beta.shape[0] != T)):
            raise ValueError(f"beta must be a float or a tensor of shape [T] = [{T}], got shape {list(beta.shape)}")
        if levels is not None and beta.dim() > 0 and beta.shape not in ((levels,), shape):
            raise ValueError(f"beta must be a float or a tensor of shape [D] = [{levels}] or [T, D] = "
                             f"[{T}, {levels}], got shape {list(beta.shape)}")
        if beta.device.type == "cpu" and not is_compiling() and not positive_and_finite(beta):
            raise ValueError(f"beta must be finite and > 0, got {beta.tolist()}")
        if beta.dtype == dtype and beta.shape == shape and beta.is_contiguous():
            return beta
        return beta.to(dtype).expand(shape).contiguous()
    value = check_real("beta", beta)
    if value <= 0:
        raise ValueError(f"beta must be > 0, got {value}")
    return torch.full(shape, value, dtype=dtype, device=device)


def positive_and_finite(values: torch.Tensor) -> bool:
    """Whether every value of a CPU tensor is finite and > 0, read in Python: no op is dispatched and
    nothing waits (a layer checks its widths on every call)."""
    return all(0 < value < math.inf for value in values.reshape(-1).tolist())  # NaN fails


def check_save_dtype(save_dtype: Optional[torch.dtype]) -> None:
    """Checks that ``save_dtype`` is None or one of SAVE_DTYPES.

    Raises:
        ValueError: another dtype.
    """
    if save_dtype is not None and save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be None, torch.float32 or torch.bfloat16, got {save_dtype}")
