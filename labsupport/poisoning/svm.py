"""Poisoning a linear SVM by gradient ascent (Biggio, Nelson, Laskov 2012).

One attack point ``u`` with a flipped label joins the training set. Moving ``u`` changes the SVM
solution; while the margin support vectors stay margin support vectors, their KKT conditions give
the solution's derivative in closed form (the paper's eq. 9–10):

    [Q_SS  y_S] [dα_S/du]      [α_c y_c diag(y_S) X_S]
    [y_Sᵀ   0 ] [db/du  ] = − [         0          ],   dw/du = X_Sᵀ diag(y_S) dα_S/du + α_c y_c I,

and the validation hinge loss L(u) = mean_k max(0, 1 − y_k (w·x_k + b)) has the gradient
dL/du = −mean_{k active} y_k (dw/duᵀ x_k + db/du). The attack takes full (ℓ2) gradient steps and
projects ``u`` back onto the pixel box [0, 1]. The solver is scikit-learn's ``SVC``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.svm import SVC
from tqdm.auto import tqdm

from .._validate import check_class, check_float, check_int
from ..data import ImageData
from .common import Poisoned, Splits, check_matrix, check_vector

_ALPHA_TOL = 1e-6  # relative tolerance deciding 0 < alpha < C (margin support vectors)


@dataclass
class PairTask(Splits):
    """A two-class problem cut from an image dataset: labels +1 (class ``a``) and −1 (class ``b``);
    rows are flattened images in [0, 1]; train / validation / test are disjoint."""

    classes: tuple[str, str]
    image_shape: tuple[int, ...]


def pair_task(data: ImageData, a: int, b: int, *, n_train: int = 100, n_val: int = 500,
              n_test: int | None = 2000, seed: int = 0) -> PairTask:
    """Class ``a`` (+1) vs class ``b`` (−1): ``n_train`` training and ``n_val`` validation rows from
    the training split (disjoint, seeded), ``n_test`` rows from the test split (all when ``None``)."""
    check_class("a", a, data.num_classes)
    check_class("b", b, data.num_classes)
    if a == b:
        raise ValueError(f"a and b must be two different classes; both are {a}")
    check_int("n_train", n_train, low=2)
    check_int("n_val", n_val, low=1)
    gen = np.random.default_rng(seed)

    def take(x: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        keep = (y == a) | (y == b)
        xs = x[keep].flatten(1).double().numpy()
        ys = np.where(y[keep].numpy() == a, 1.0, -1.0)
        order = gen.permutation(len(ys))
        return xs[order], ys[order]

    xtr, ytr = take(data.x_train, data.y_train)
    if n_train + n_val > len(ytr):
        raise ValueError(f"n_train + n_val = {n_train + n_val} but classes {a} and {b} have only {len(ytr)} "
                         f"training rows in {data.name}; allowed: n_train + n_val <= {len(ytr)}")
    xte, yte = take(data.x_test, data.y_test)
    n_test = len(yte) if n_test is None else min(check_int("n_test", n_test, low=1), len(yte))
    return PairTask(f"{data.name} {data.classes[a]} vs {data.classes[b]}",
                    xtr[:n_train], ytr[:n_train], xtr[n_train:n_train + n_val], ytr[n_train:n_train + n_val],
                    xte[:n_test], yte[:n_test], (data.classes[a], data.classes[b]), tuple(data.x_train.shape[1:]))


def check_signs(name: str, y: np.ndarray, n: int) -> np.ndarray:
    """Labels of a two-class pair task: a length-``n`` vector of -1 and +1."""
    y = check_vector(name, y, n)
    if not np.isin(y, (-1.0, 1.0)).all():
        raise ValueError(f"{name} must hold the labels -1 and +1 (a pair task's); "
                         f"got values {np.unique(y)[:6].tolist()}")
    return y


def fit_svm(x: np.ndarray, y: np.ndarray, C: float = 1.0) -> SVC:
    """A linear SVM (``SVC(kernel="linear")``) solved tightly enough for the KKT-based gradient."""
    x = check_matrix("x", x)
    y = check_signs("y", y, len(x))
    return SVC(kernel="linear", C=check_float("C", C, low=0.0, low_open=True), tol=1e-6).fit(x, y)


def error_rate(svm: SVC, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of rows misclassified."""
    x = check_matrix("x", x)
    return float(np.mean(svm.predict(x) != check_signs("y", y, len(x))))


def hinge_loss(svm: SVC, x: np.ndarray, y: np.ndarray) -> float:
    """Mean hinge loss max(0, 1 − y f(x))."""
    x = check_matrix("x", x)
    return float(np.maximum(0.0, 1.0 - check_signs("y", y, len(x)) * svm.decision_function(x)).mean())


def attack_gradient(svm: SVC, x: np.ndarray, y: np.ndarray, c: int, x_val: np.ndarray, y_val: np.ndarray) -> np.ndarray:
    """dL/du of the validation hinge loss with respect to training row ``c`` (the attack point).

    Zero when ``c`` is not a support vector (moving it a little does not change the solution).
    """
    if getattr(svm, "kernel", None) != "linear":
        raise ValueError(f"the analytic gradient needs a linear SVM (kernel='linear'); got kernel="
                         f"{getattr(svm, 'kernel', type(svm).__name__)!r}")
    x = check_matrix("x", x)
    y = check_signs("y", y, len(x))
    check_int("c", c, low=0, high=len(y) - 1)
    x_val = check_matrix("x_val", x_val)
    y_val = check_signs("y_val", y_val, len(x_val))
    C = svm.C
    alpha = np.zeros(len(y))
    alpha[svm.support_] = np.abs(svm.dual_coef_[0])
    a_c = alpha[c]
    if a_c <= _ALPHA_TOL * C:
        return np.zeros(x.shape[1])
    margin = np.flatnonzero((alpha > _ALPHA_TOL * C) & (alpha < (1 - _ALPHA_TOL) * C))
    margin = margin[margin != c]
    f_val = svm.decision_function(x_val)
    active = (1.0 - y_val * f_val) > 0
    v = (y_val[active, None] * x_val[active]).sum(0)        # Σ_active y_k x_k
    s = y_val[active].sum()                                  # Σ_active y_k
    m = len(y_val)
    grad = a_c * y[c] * v                                    # the direct term α_c y_c I
    if len(margin):
        xs, ys = x[margin], y[margin]
        k = len(margin)
        lhs = np.zeros((k + 1, k + 1))
        lhs[:k, :k] = (ys[:, None] * ys[None, :]) * (xs @ xs.T) + 1e-9 * np.eye(k)
        lhs[:k, k] = ys
        lhs[k, :k] = ys
        rhs = np.zeros((k + 1, x.shape[1]))
        rhs[:k] = -a_c * y[c] * ys[:, None] * xs
        try:
            sol = np.linalg.solve(lhs, rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.pinv(lhs) @ rhs
        d_alpha, d_b = sol[:k], sol[k]
        grad = grad + d_alpha.T @ (ys * (xs @ v)) + s * d_b
    return -grad / m


@dataclass
class SVMAttack:
    """The result of :func:`svm_attack`: the poisoned set plus the attack's trace.

    Attributes:
        poisoned: training set with the attack points appended (mask marks them).
        points: the final attack points (k, d); ``labels`` their (flipped) labels.
        errors: test error after 0, 1, …, k attack points.
        val_loss: validation hinge loss after each gradient step of the first point.
        snapshots: the first point at a few steps (for the picture of it evolving), with their steps.
    """

    poisoned: Poisoned
    points: np.ndarray
    labels: np.ndarray
    errors: list[float]
    val_loss: list[float] = field(default_factory=list)
    snapshots: list[np.ndarray] = field(default_factory=list)
    snapshot_steps: list[int] = field(default_factory=list)


def svm_attack(task: PairTask, n_points: int = 1, *, C: float = 1.0, steps: int = 100, step_size: float = 1.0,
               seed: int = 0, snapshot_every: int = 2, progress: bool = True) -> SVMAttack:
    """Biggio et al.'s attack: add ``n_points`` attack points one after another, each initialised as
    a randomly chosen training point with its label flipped, then moved by ``steps`` projected
    gradient-ascent steps of ℓ2 length ``step_size`` on the validation hinge loss (halved when a step
    does not raise it). Returns test errors after each added point.
    """
    check_int("n_points", n_points, low=0, high=len(task.y_train))
    check_int("steps", steps, low=0)
    check_float("step_size", step_size, low=0.0, low_open=True)
    check_float("C", C, low=0.0, low_open=True)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    x, y = task.x_train.copy(), task.y_train.copy()
    errors = [error_rate(fit_svm(x, y, C), task.x_test, task.y_test)]
    result = SVMAttack(None, np.zeros((0, x.shape[1])), np.zeros(0), errors)  # type: ignore[arg-type]
    starts = rng.choice(len(task.y_train), size=n_points, replace=False)
    for p in tqdm(range(n_points), desc="SVM attack points", disable=not progress or n_points < 2):
        u, yc = task.x_train[starts[p]].copy(), -task.y_train[starts[p]]
        x, y = np.vstack([x, u]), np.append(y, yc)
        c = len(y) - 1
        svm = fit_svm(x, y, C)
        loss = hinge_loss(svm, task.x_val, task.y_val)
        eta = step_size
        for t in range(steps):
            if p == 0:
                result.val_loss.append(loss)
                if t % snapshot_every == 0:
                    result.snapshots.append(x[c].copy())
                    result.snapshot_steps.append(t)
            g = attack_gradient(svm, x, y, c, task.x_val, task.y_val)
            g[((x[c] <= 0) & (g < 0)) | ((x[c] >= 1) & (g > 0))] = 0  # pixels pinned at the box
            norm = np.linalg.norm(g)
            if norm == 0 or eta < 1e-3 * step_size:
                break
            old = x[c].copy()
            x[c] = np.clip(old + eta * g / norm, 0.0, 1.0)
            trial = fit_svm(x, y, C)
            new_loss = hinge_loss(trial, task.x_val, task.y_val)
            if new_loss > loss:
                svm, loss = trial, new_loss
                eta = min(2 * eta, step_size * 8)
            else:
                x[c] = old
                eta /= 2
        if p == 0:
            result.val_loss.append(loss)
            result.snapshots.append(x[c].copy())
            result.snapshot_steps.append(len(result.val_loss) - 1)
        errors.append(error_rate(svm, task.x_test, task.y_test))
    mask = np.zeros(len(y), dtype=bool)
    mask[len(task.y_train):] = True
    result.poisoned = Poisoned(x, y, mask, f"SVM gradient attack ({n_points} points)")
    result.points, result.labels = x[mask], y[mask]
    return result


def validation_loss_at(task: PairTask, u: np.ndarray, label: float, C: float = 1.0) -> float:
    """The attack objective as a plain function of the attack point (for finite-difference checks)."""
    u = check_vector("u", np.asarray(u, dtype=np.float64), task.x_train.shape[1])
    svm = fit_svm(np.vstack([task.x_train, u]), np.append(task.y_train, label), C)
    return hinge_loss(svm, task.x_val, task.y_val)


def contamination_curve(task: PairTask, fractions: Sequence[float] = (0.0, 0.02, 0.04, 0.06, 0.08), *,
                        seeds: Sequence[int] = (0,), **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Test error (%) vs contamination (attack points / training size), one sequential attack per
    seed; returns (fractions, errors of shape (len(fractions), len(seeds)))."""
    counts = [int(round(f * len(task.y_train))) for f in fractions]
    out = np.zeros((len(counts), len(seeds)))
    for j, seed in enumerate(seeds):
        run = svm_attack(task, max(counts), seed=seed, **kwargs)
        out[:, j] = [100 * run.errors[k] for k in counts]
    return np.asarray(fractions), out


