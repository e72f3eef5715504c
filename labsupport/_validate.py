"""Argument checks used at the public boundary of every labsupport function.

Each helper raises ``TypeError`` for the wrong kind of value and ``ValueError`` for a value out of
range, and the message always names the argument and what is allowed.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Iterable
from typing import Any

import torch

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``; otherwise raise ``ValueError``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {allowed}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as ``int`` if it is an integer in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value} is out of range; allowed: {_range(low, high)}")
    return value


def check_float(
    name: str, value: Any, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False,
) -> float:
    """Return ``value`` as ``float`` if it is a finite real number in the range given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r})")
    value = float(value)
    bad = value != value or value in (float("inf"), float("-inf"))
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        lo = "(" if low_open else "["
        raise ValueError(f"{name}={value} is out of range; allowed: {_range(low, high, lo, ')' if high_open else ']')}")
    return value


def check_rate(name: str, value: Any) -> float:
    """A fraction in [0, 1]."""
    return check_float(name, value, low=0.0, high=1.0)


# Tensors whose values were already scanned, keyed by id: (weak reference, version counter). A
# tensor passed through several public functions (train -> evaluate -> ASR) is scanned once; an
# in-place change bumps its version and it is scanned again.
_SCANNED: dict[int, tuple[weakref.ref, int]] = {}
_TOLERANCE = 1e-6  # float rounding of blends such as 0.2 * 1 + 0.8 * 1


def check_images(name: str, x: Any, *, channels: int | None = None) -> torch.Tensor:
    """Images must be a float tensor of shape (N, C, H, W), C in {1, 3}, with finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor with values in [0, 1], got {x.dtype}")
    if x.shape[1] not in (1, 3):
        hint = (f"; it looks channels-last (N, H, W, C): use {name}.permute(0, 3, 1, 2)"
                if x.shape[3] in (1, 3) else "")
        raise ValueError(f"{name} must have shape (N, C, H, W) with C in {{1, 3}} channels; got shape "
                         f"{tuple(x.shape)}{hint}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels; this trigger expects {channels}")
    _check_values(name, x)
    return x


def _check_values(name: str, x: torch.Tensor) -> None:
    if x.numel() == 0:
        return
    seen = _SCANNED.get(id(x))
    if seen is not None and seen[0]() is x and seen[1] == x._version:
        return
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo != lo or hi != hi:
        raise ValueError(f"{name} contains NaN values; images must be finite floats in [0, 1]")
    if lo < -_TOLERANCE or hi > 1 + _TOLERANCE:
        hint = " (0-255 pixel values? divide by 255)" if hi > 1.5 and hi <= 255 and lo >= 0 else ""
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; images must be finite floats in "
                         f"[0, 1]{hint}")
    if len(_SCANNED) > 256:  # forget dead entries
        for key in [k for k, (ref, _) in _SCANNED.items() if ref() is None]:
            del _SCANNED[key]
    _SCANNED[id(x)] = (weakref.ref(x), x._version)


def apply_trigger(name: str, trigger: Any, x: torch.Tensor) -> torch.Tensor:
    """``trigger(x)``, checked: a trigger must be a callable that returns images of ``x``'s shape
    with values in [0, 1] (a hand-written one that forgets to clip is named here, not later as x)."""
    if not callable(trigger):
        raise TypeError(f"{name} must be a callable images -> triggered images (e.g. ls.Patch()), "
                        f"got {type(trigger).__name__}")
    out = trigger(x)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"{name} returned {tuple(getattr(out, 'shape', ())) or type(out).__name__} for images of "
                         f"shape {tuple(x.shape)}; a trigger must return images of the same shape")
    return check_images(f"{name}(x)", out)


def check_nonempty(name: str, x: Any) -> None:
    """A data set must have at least one row."""
    if len(x) == 0:
        raise ValueError(f"{name} is empty (0 rows); need at least one example")


def check_labels(name: str, y: Any, *, n: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Labels must be an int64 tensor of shape (N,) with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(y).__name__}")
    if y.ndim != 1 or y.dtype not in _INT_DTYPES:
        raise ValueError(f"{name} must be a 1-D integer tensor; got shape {tuple(y.shape)}, dtype {y.dtype}")
    if n is not None and y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels but there are {n} images; they must match")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} holds values outside [0, {num_classes - 1}]")
    return y


def check_mask(name: str, x: Any) -> torch.Tensor:
    """A boolean row mask (True = poison / flagged), flattened. Numbers are accepted only when every
    one is 0 or 1: a float score passed as a mask would otherwise turn every non-zero row True."""
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a boolean mask (a tensor, array or list of True/False), "
                        f"got {type(x).__name__}") from err
    if t.dtype != torch.bool:
        if t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise TypeError(f"{name} must be a boolean mask, got dtype {t.dtype}")
        odd = ~((t == 0) | (t == 1))
        if bool(odd.any()):
            raise ValueError(f"{name} must be a boolean mask (True/False or 0/1); it holds "
                             f"{int(odd.sum())} other value(s), e.g. {t[odd].flatten()[0].item():.4g}. "
                             "Threshold per-row scores first (e.g. scores > t).")
    return t.bool().flatten()


def check_class(name: str, value: Any, num_classes: int) -> int:
    """A class index in [0, num_classes)."""
    return check_int(name, value, low=0, high=num_classes - 1)


def _range(low: Any, high: Any, lo: str = "[", hi: str = "]") -> str:
    left = "-inf" if low is None else str(low)
    right = "inf" if high is None else str(high)
    return f"{lo}{left}, {right}{hi}"


def check_optimizer_settings(config: Any) -> None:
    """The settings every training config shares: ``batch_size``, ``lr``, ``weight_decay``, ``seed``."""
    check_int("batch_size", config.batch_size, low=1)
    check_float("lr", config.lr, low=0.0, low_open=True)
    check_float("weight_decay", config.weight_decay, low=0.0)
    check_int("seed", config.seed, low=0)
