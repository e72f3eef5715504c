"""Spectral signatures (Tran, Li & Madry 2018): within a class, poisons shift the mean of the
representations along one direction, so the top singular vector of the *centred* class
representations separates them; the rows with the largest squared projections are removed.

The paper's algorithm centres the representations; the authors' reference code projects
uncentred ones (``center=False`` reproduces that: the top direction is then mostly the class
mean, and the score mostly the activation's size).

The top singular direction is the direction of largest *variance*, which is the poisons' shift
only when that shift outweighs every natural direction of variation of the class. On the course
MLP at 1 % poison it does for some training seeds and not for others (AUROC 0.28-0.998 over seeds
0-2, BENCHMARKS.md). :func:`spectre` (Hayase et al. 2021) makes the score robust: it whitens the
class with a *robust* covariance estimate, so that the clean data are isotropic and the poisons,
which the robust estimate ignores, stand out in every direction they move along.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.linalg import eigh, expm
from sklearn.covariance import MinCovDet
from torch import nn

from .._validate import check_float, check_int
from .common import (
    Detection,
    activations,
    check_classes,
    check_data,
    check_open_fraction,
    one_thread,
    scale,
    standardize,
)


def spectral_scores(features: np.ndarray, *, center: bool = True) -> np.ndarray:
    """The squared projection of each row of ``features`` (one class) on the top right singular
    vector of the (centred) matrix."""
    a = _check_features(features)
    a = a - a.mean(0) if center else a
    return (a @ top_directions(a, 1)[0]) ** 2


def _check_features(features: np.ndarray) -> np.ndarray:
    """One class's representations: a finite (rows, dims) array with at least one row, as float64."""
    try:
        a = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"features must be a numeric (rows, dims) array, got {type(features).__name__}") from err
    if a.ndim != 2 or not a.size:
        raise ValueError(f"features must be a non-empty 2-D array (rows, dims), one row per example; "
                         f"got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"features contain {int((~np.isfinite(a)).sum())} NaN or infinite value(s)")
    return a


def top_directions(a: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` right singular vectors of ``a`` (rows, largest first; at most ``min(a.shape)``).

    With more rows than columns (a class's activations) they are the top eigenvectors of the
    Gram matrix ``a' a``: the same directions as ``np.linalg.svd`` to ~1e-15 on the course's
    2,000 x 256 classes, ~8x faster because only ``k`` of them are computed."""
    a = _check_features(a)
    n, d = a.shape
    k = min(check_int("k", k, low=1), n, d)
    if n < d:
        return np.linalg.svd(a, full_matrices=False)[2][:k]
    _, vecs = eigh(a.T @ a, subset_by_index=[d - k, d - 1])
    return vecs[:, ::-1].T


def spectral_signatures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                        layer: str = "penultimate", normalize: bool = True, center: bool = True,
                        removal: float = 1.5, classes: list[int] | None = None) -> Detection:
    """Score every row of (x, y) by its spectral signature and flag the top ``removal * eps`` of
    each class.

    Args:
        eps: the defender's bound on the poisoned fraction of a class, in (0, 1); Tran et al. remove
            1.5 eps of every class.
        layer: where to read representations (``"hidden.0"``: the MLP's first hidden layer).
        normalize: divide each unit by its standard deviation over the class first (units with
            large activations do not dominate the singular vector); centring is ``center``'s job.
        center: subtract the class mean before the SVD (the paper); ``False`` = reference code.
    """
    check_data(x, y)
    eps = check_open_fraction("eps", eps)
    n_remove = check_open_fraction("removal * eps", removal * eps)
    classes = check_classes(y, classes, min_rows=2)
    feats = activations(model, x, layer).numpy().astype(np.float64)
    scores, flags = _flag_top(y, classes, n_remove,
                              lambda f: spectral_scores(scale(f) if normalize else f, center=center), feats)
    name = f"spectral signatures ({layer}, {'centred' if center else 'uncentred'}, eps={eps:g})"
    return Detection(name, scores, flags, {"eps": eps, "removed_fraction": n_remove})


def que_scores(features: np.ndarray, *, dims: int = 16, alpha: float = 4.0, fit_rows: int | None = 500,
               seed: int = 0) -> np.ndarray:
    """SPECTRE's score for the rows of ``features`` (one class): standardize, project on the top
    ``dims`` principal directions, whiten with a robust (minimum covariance determinant) estimate
    of the mean and covariance, and score each row by the quantum entropy (QUE) score
    ``h' Q h / tr Q`` with ``Q = exp(alpha (C - I) / (||C|| - 1))``, ``C`` the covariance of the
    whitened rows. ``alpha = 0`` is the robust Mahalanobis distance; a large ``alpha`` weighs the
    direction in which the whitened data still vary most (spectral signatures after whitening).

    Hayase et al. estimate the covariance with their own robust estimator; scikit-learn's
    ``MinCovDet`` stands in for it here, fitted on a random ``fit_rows`` of the rows (``None``: all;
    above 500 rows FastMCD switches to a subset search that costs ~10x more for the same estimate).
    """
    dims = check_int("dims", dims, low=1)
    alpha = check_float("alpha", alpha, low=0.0)
    a = standardize(_check_features(features))
    z = a @ top_directions(a, dims).T
    fit = z
    if fit_rows is not None and len(z) > check_int("fit_rows", fit_rows, low=2 * z.shape[1]):
        fit = z[np.random.default_rng(seed).choice(len(z), fit_rows, replace=False)]
    mcd = MinCovDet(random_state=seed).fit(fit)
    evals, evecs = np.linalg.eigh(mcd.covariance_)
    w = (z - mcd.location_) @ (evecs / np.sqrt(np.maximum(evals, 1e-12))) @ evecs.T  # Sigma^(-1/2)
    c = np.cov(w, rowvar=False).reshape(w.shape[1], w.shape[1])
    top = np.linalg.norm(c, 2)
    q = expm(alpha * (c - np.eye(len(c))) / (top - 1)) if alpha > 0 and top > 1 + 1e-9 else np.eye(len(c))
    return np.einsum("ij,jk,ik->i", w, q, w) / np.trace(q)


def spectre(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float | Sequence[float],
            layer: str = "hidden.0", dims: int = 16, alpha: float = 4.0, removal: float = 1.5,
            classes: list[int] | None = None, seed: int = 0) -> Detection:
    """SPECTRE (Hayase, Kong, Somani & Oh 2021): spectral signatures on robustly whitened
    representations (:func:`que_scores`), flagging the top ``removal * eps`` of each class like
    :func:`spectral_signatures`.

    ``eps`` may be a sequence, one pass per value: each later pass scores again the rows the
    earlier ones kept, with the robust estimate refitted on them. The estimate breaks down when
    about half a class is poison (10 % of the training set relabelled to one class of ten); after
    a first pass that class is mostly clean, and a second pass with a small ``eps`` finds the
    poisons the first one left. ``scores`` are the first pass's; ``flags`` the union of all passes.
    """
    check_data(x, y)
    passes = list(eps) if isinstance(eps, (list, tuple)) else [eps]
    if not passes:
        raise ValueError("eps must be a fraction in (0, 1) or a non-empty sequence of them (one per pass)")
    fractions = []
    for e in passes:
        check_open_fraction("eps", e)
        fractions.append(check_open_fraction("removal * eps", removal * e))
    dims = check_int("dims", dims, low=1)
    alpha = check_float("alpha", alpha, low=0.0)
    classes = check_classes(y, classes, min_rows=max(2 * dims, 4))
    feats = activations(model, x, layer).numpy()
    flags = torch.zeros(len(y), dtype=torch.bool)
    scores, flagged = None, []
    for k, fraction in enumerate(fractions):
        rows = torch.nonzero(~flags).flatten()
        if k:
            try:
                check_classes(y[rows], classes, min_rows=max(2 * dims, 4))
            except ValueError as exc:
                raise ValueError(f"after pass {k} of eps={passes}: {exc}; use a smaller eps") from None
        s, f = _flag_top(y[rows], classes, fraction, lambda a: que_scores(a, dims=dims, alpha=alpha, seed=seed),
                         feats[rows.numpy()])
        scores = s if scores is None else scores
        flags[rows[f]] = True
        flagged.append(int(f.sum()))
    eps_text = ", ".join(f"{e:g}" for e in passes)
    return Detection(f"SPECTRE ({layer}, {dims} dims, alpha={alpha:g}, eps={eps_text})", scores, flags,
                     {"eps": passes[0] if len(passes) == 1 else passes,
                      "removed_fraction": fractions[0] if len(fractions) == 1 else fractions,
                      "flagged_per_pass": flagged})


def _flag_top(y: torch.Tensor, classes: list[int], fraction: float, score: Callable[[np.ndarray], np.ndarray],
              feats: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Score each class's rows of ``feats`` with ``score`` (divided by the class median, so that
    classes compare) and flag the top ``fraction`` of every class."""
    scores = torch.zeros(len(y), dtype=torch.float64)
    flags = torch.zeros(len(y), dtype=torch.bool)
    for c in classes:
        rows = torch.nonzero(y == c).flatten()
        with one_thread():
            s = score(feats[rows.numpy()])
        s = s / (np.median(s) + 1e-12)
        scores[rows] = torch.from_numpy(s)
        k = int(round(fraction * len(rows)))
        if k:
            flags[rows[torch.from_numpy(np.argsort(-s)[:k].copy())]] = True
    return scores, flags

