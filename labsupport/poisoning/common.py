"""The result shape every Lab 1 attack returns: the poisoned training set with its ground-truth mask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._validate import check_float
from ..backdoor import PoisonCounts


@dataclass(repr=False)
class Poisoned(PoisonCounts):
    """A poisoned training set.

    Attributes:
        x, y: the training set after poisoning (tensors for images, arrays for tabular data).
        mask: bool (N,), True on the rows the attacker changed or added (ground truth for detectors).
        name: a short description of the attack.
        info: attack-specific details (objective history, the clean rows' count, ...).
    """

    x: Any
    y: Any
    mask: Any
    name: str = ""
    info: dict = field(default_factory=dict)



@dataclass
class Splits:
    """Disjoint train / validation / test splits of one data set (numpy rows)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def poison_count(name: str, rate: float, n: int, *, low: float = 0.0, high: float = 1.0) -> int:
    """``round(rate * n)`` after checking ``rate`` lies in [low, high]."""
    return int(round(check_float(name, rate, low=low, high=high) * n))


def check_matrix(name: str, x: Any, *, low: float | None = None, high: float | None = None) -> np.ndarray:
    """A finite float matrix (N, d) as a float64 array, optionally with values in [low, high]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or tensor of shape (N, d), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N >= 1; got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values; features must be finite")
    if low is not None and (x.min() < low - 1e-9 or x.max() > high + 1e-9):
        raise ValueError(f"{name} has values in [{x.min():.4g}, {x.max():.4g}]; allowed: [{low}, {high}]")
    return x


def check_vector(name: str, y: Any, n: int) -> np.ndarray:
    """A finite float vector of length ``n``."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if not isinstance(y, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape ({n},), got {type(y).__name__}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per row of x); got shape {y.shape}")
    y = y.astype(np.float64, copy=False)
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return y
