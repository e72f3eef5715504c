"""SCALE-UP (Guo et al. 2023): scaled prediction consistency, a black-box input-level detector.

Multiply an input's pixels by n (n = 3, 5, 7, 9, 11, clipped to [0, 1]) and ask the model again.
A clean image washes out and its prediction wanders; a strong trigger survives the amplification
(its bright pixels stay bright) and keeps the prediction on the target. The score is the share of
scaled copies predicted like the original: the *scaled prediction consistency* (SPC)

    SPC(x) = (1/|S|) Σ_{n∈S} 1[C(clip(n·x)) = C(x)].

The data-free detector flags SPC above a threshold T; the data-limited one (the paper's second
variant) standardizes SPC by the mean and spread of trusted clean inputs predicted into the same
class, and sets the threshold at a chosen false-positive rate on them. A few lines of code, five
forward passes per input, no training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._validate import check_images
from ..training import predict
from .common import Detection, check_open_fraction

SCALES = (3, 5, 7, 9, 11)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not np.isfinite(s) or s <= 1 for s in scales):
        raise ValueError(f"scales must be a non-empty list of finite factors > 1; got {scales}")
    return scales


@torch.no_grad()
def spc(model: nn.Module, x: torch.Tensor, scales: Sequence[float] = SCALES) -> tuple[torch.Tensor, torch.Tensor]:
    """Each input's scaled prediction consistency in [0, 1], and the model's prediction on it."""
    check_images("x", x)
    scales = _check_scales(scales)
    pred = predict(model, x)
    same = torch.zeros(len(x))
    for n in scales:
        same += (predict(model, (n * x).clamp(0, 1)) == pred).float()
    return same / len(scales), pred


@dataclass
class ScaleUp:
    """A fitted SCALE-UP detector. ``fit`` on trusted clean inputs gives the data-limited variant
    (per-class standardized SPC, threshold at ``fpr``); without ``fit`` it is data-free (raw SPC
    against ``threshold``)."""

    model: nn.Module
    scales: tuple[float, ...] = SCALES
    threshold: float = 0.5
    fpr: float | None = None
    mean: torch.Tensor | None = field(default=None, repr=False)
    std: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def fit(cls, model: nn.Module, clean: torch.Tensor, *, num_classes: int = 10, fpr: float = 0.05,
            scales: Sequence[float] = SCALES) -> ScaleUp:
        """Per predicted class, the mean and standard deviation of the clean inputs' SPC (classes
        with fewer than two clean inputs fall back on all of them); the threshold flags ``fpr`` of
        the clean inputs."""
        fpr = check_open_fraction("fpr", fpr)
        scales = _check_scales(scales)
        score, pred = spc(model, clean, scales)
        mean = torch.full((num_classes,), float(score.mean()))
        std = torch.full((num_classes,), max(float(score.std()), 1e-3))
        for c in range(num_classes):
            rows = score[pred == c]
            if len(rows) >= 2:
                mean[c], std[c] = rows.mean(), max(float(rows.std()), 1e-3)
        det = cls(model, scales, 0.0, fpr, mean, std)
        det.threshold = float(torch.quantile(det._standardize(score, pred), 1 - fpr))
        return det

    def _standardize(self, score: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        return (score - self.mean[pred]) / self.std[pred]

    def detect(self, x: torch.Tensor) -> Detection:
        """Flag inputs whose (standardized, if fitted) SPC exceeds the threshold."""
        score, pred = spc(self.model, x, self.scales)
        if self.mean is not None:
            score = self._standardize(score, pred)
            name = f"SCALE-UP (data-limited, FPR {100 * self.fpr:g}%)"
        else:
            name = f"SCALE-UP (data-free, T = {self.threshold:g})"
        return Detection(name, score, score > self.threshold, {"threshold": self.threshold})
