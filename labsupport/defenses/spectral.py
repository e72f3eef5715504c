"""Spectral signatures (Tran, Li & Madry 2018): within a class, poisons shift the mean of the
representations along one direction, so the top singular vector of the *centred* class
representations separates them; the rows with the largest squared projections are removed.

The paper's algorithm centres the representations; the authors' reference code projects
uncentred ones (``center=False`` reproduces that: the top direction is then mostly the class
mean, and the score mostly the activation's size).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .common import Detection, activations, check_classes, check_data, check_open_fraction, standardize


def spectral_scores(features: np.ndarray, *, center: bool = True) -> np.ndarray:
    """The squared projection of each row of ``features`` (one class) on the top right singular
    vector of the (centred) matrix."""
    a = features - features.mean(0) if center else features
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    return (a @ vt[0]) ** 2


def spectral_signatures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                        layer: str = "penultimate", normalize: bool = True, center: bool = True,
                        removal: float = 1.5, classes: list[int] | None = None) -> Detection:
    """Score every row of (x, y) by its spectral signature and flag the top ``removal * eps`` of
    each class.

    Args:
        eps: the defender's bound on the poisoned fraction of a class, in (0, 1); Tran et al. remove
            1.5 eps of every class.
        layer: where to read representations (``"hidden.0"``: the MLP's first hidden layer).
        normalize: standardize each unit over the class first (units with large activations do
            not dominate the singular vector).
        center: subtract the class mean before the SVD (the paper); ``False`` = reference code.
    """
    check_data(x, y)
    eps = check_open_fraction("eps", eps)
    n_remove = check_open_fraction("removal * eps", removal * eps)
    classes = check_classes(y, classes, min_rows=2)
    feats = activations(model, x, layer).numpy().astype(np.float64)
    scores = torch.zeros(len(y), dtype=torch.float64)
    flags = torch.zeros(len(y), dtype=torch.bool)
    for c in classes:
        rows = torch.nonzero(y == c).flatten()
        f = feats[rows.numpy()]
        s = spectral_scores(standardize(f) if normalize else f, center=center)
        s = s / (np.median(s) + 1e-12)  # comparable across classes
        scores[rows] = torch.from_numpy(s)
        k = int(round(n_remove * len(rows)))
        if k:
            flags[rows[torch.from_numpy(np.argsort(-s)[:k].copy())]] = True
    name = f"spectral signatures ({layer}, {'centred' if center else 'uncentred'}, eps={eps:g})"
    return Detection(name, scores, flags, {"eps": eps, "removed_fraction": n_remove})
