"""Data sanitization with certified bounds (Steinhardt, Koh, Liang 2017, "Certified defenses for
data poisoning attacks").

A binary linear SVM is trained on ``n`` clean points plus ``eps * n`` points of the attacker's
choice. The defender first removes outliers with the **sphere** and **slab** filters around the
class centroids ``mu_y``::

    sphere:  |x - mu_y|_2 <= r_y              slab:  |<x - mu_y, mu_y - mu_-y>| <= s_y

(thresholds: a quantile of the clean class's own scores). With *oracle* centroids (computed from
the clean data) the set ``F`` of points that pass is fixed, and the online-learning algorithm
(their Algorithm 1) bounds what **any** attack inside ``F`` can achieve::

    max_{D_p in F, |D_p| = eps n}  min_{|theta| <= rho}  L(theta; D_c) / n + eps * mean loss on D_p  <=  U*

The algorithm alternates the attacker's best response ``argmax_{(x, y) in F} hinge(theta; x, y)``
(a closed form for a sphere intersected with a slab) with a dual-averaging step of the learner;
``U*`` is the lowest value seen, and the best responses form a candidate attack whose real
effect (train the SVM on clean + candidate poisons) must stay below ``U*``.

*Data-dependent* centroids (computed from the poisoned data) move with the poisons: the
certificate no longer applies, and an attacker who stacks its points to drag the centroids
outward gets through a wider sphere (Koh, Steinhardt, Liang 2018).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .._validate import check_float, check_int, check_rate


def _check_binary(x: np.ndarray, y: np.ndarray, *, both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x must be a 2-D array (n, features); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if y.shape != (len(x),):
        raise ValueError(f"y must have shape ({len(x)},) to match x; got {y.shape}")
    if not np.isin(y, (-1, 1)).all():
        raise ValueError(f"y must hold labels -1 and +1 only; got values {sorted(set(np.unique(y).tolist()))[:6]}")
    if both and len(np.unique(y)) < 2:
        raise ValueError("y must contain both classes -1 and +1")
    return x, y.astype(np.float64)


def check_eps(eps: float) -> float:
    """The poison fraction ``eps`` (poisons per clean point), allowed in [0, 1)."""
    eps = check_float("eps", eps, low=0.0)
    if eps >= 1:
        raise ValueError(f"eps={eps} is out of range; allowed: [0, 1) (poisons per clean training point)")
    return eps


def binary_pair(data, positive: int, negative: int, *, n_train: int | None = None,
                n_test: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two classes of an :class:`~labsupport.data.ImageData` as flat float64 features in [0, 1]
    with labels +1 (``positive``) and -1 (``negative``): ``(x, y, x_test, y_test)``, each split
    cut to its first ``n_train`` / ``n_test`` rows when given."""
    k = data.num_classes
    for name, c in (("positive", positive), ("negative", negative)):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < k:
            raise ValueError(f"{name}={c!r} is not a class of {data.name}; allowed: 0..{k - 1} "
                             f"({', '.join(data.classes)})")
    if positive == negative:
        raise ValueError(f"positive and negative must be different classes; both are {positive}")

    def part(x, y, n):
        keep = (y == positive) | (y == negative)
        xs = x[keep].flatten(1).double().numpy()[:n]
        return xs, np.where(y[keep].numpy() == positive, 1.0, -1.0)[:n]

    return (*part(data.x_train, data.y_train, n_train), *part(data.x_test, data.y_test, n_test))


# ---------------------------------------------------------------------------------------------
# The sphere + slab filter
# ---------------------------------------------------------------------------------------------

@dataclass
class SphereSlab:
    """Sphere and slab filters around the class centroids.

    Attributes:
        centroids: {+1: mu_+, -1: mu_-} (features,).
        radius: {y: r_y}, the sphere radius per class.
        slab: {y: s_y}, the slab half-width per class (along the unit vector mu_y - mu_-y).
    """

    centroids: dict[int, np.ndarray]
    radius: dict[int, float]
    slab: dict[int, float]

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, quantile: float = 0.95,
            reference: tuple[np.ndarray, np.ndarray] | None = None) -> SphereSlab:
        """Centroids from ``(x, y)``; thresholds: the ``quantile`` of each class's own scores.

        Args:
            x, y: the data the centroids come from: the clean data (the *oracle* defense) or the
                poisoned training set (the *data-dependent* defense).
            quantile: share of each class kept by each filter (per-class quantile removal).
            reference: data whose scores set the thresholds (default: ``(x, y)`` itself).
        """
        x, y = _check_binary(x, y)
        quantile = check_rate("quantile", quantile)
        mu = {c: x[y == c].mean(0) for c in (1, -1)}
        out = cls(mu, {}, {})
        xr, yr = (x, y) if reference is None else _check_binary(*reference)
        for c in (1, -1):
            d, s = out.scores(xr[yr == c], np.full(int((yr == c).sum()), c))
            out.radius[c] = float(np.quantile(d, quantile))
            out.slab[c] = float(np.quantile(s, quantile))
        return out

    def direction(self, c: int) -> np.ndarray:
        v = self.centroids[c] - self.centroids[-c]
        return v / max(np.linalg.norm(v), 1e-12)

    def scores(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sphere distance, |slab coordinate|) of each row to its own class's centroid."""
        d, s = np.empty(len(x)), np.empty(len(x))
        for c in (1, -1):
            rows = y == c
            u = x[rows] - self.centroids[c]
            d[rows] = np.linalg.norm(u, axis=1)
            s[rows] = np.abs(u @ self.direction(c))
        return d, s

    def keep(self, x: np.ndarray, y: np.ndarray, tol: float = 1e-9, *, slab: bool = True) -> np.ndarray:
        """Boolean mask of the rows that pass both filters (``slab=False``: the sphere alone)."""
        x, y = _check_binary(x, y, both=False)
        d, s = self.scores(x, y)
        r = np.where(y > 0, self.radius[1], self.radius[-1])
        inside = d <= r * (1 + tol) + tol
        if not slab:
            return inside
        w = np.where(y > 0, self.slab[1], self.slab[-1])
        return inside & (s <= w * (1 + tol) + tol)

    def best_response(self, w: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
        """The feasible point of highest hinge loss for the linear model ``(w, b)``.

        For label ``c`` the loss ``1 - c (w.x + b)`` is linear in ``x``; its maximum over the
        sphere ``|u| <= r`` cut by the slab ``|u.v| <= s`` (``x = mu_c + u``) lies in the plane
        of ``v`` and ``-c w``: on the circle in the direction of ``-c w``, with the ``v``
        component clipped to the slab. Returns ``(x, label, loss)`` of the worse label.
        """
        points = {}
        for c in (1, -1):
            g = -c * w  # gradient of the loss in x
            v = self.direction(c)
            a = float(g @ v)
            perp = g - a * v
            bn = float(np.linalg.norm(perp))
            r, s = self.radius[c], self.slab[c]
            norm = np.hypot(a, bn)
            alpha, beta = (r * a / norm, r * bn / norm) if norm > 0 else (0.0, 0.0)
            if abs(alpha) > s:
                alpha = np.sign(a) * s
                beta = np.sqrt(max(r * r - alpha * alpha, 0.0))
            points[c] = self.centroids[c] + alpha * v + (beta * perp / bn if bn > 0 else 0.0)
        return _worse_label(points, w, b)


def _worse_label(points: dict[int, np.ndarray], w: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
    """Of one candidate point per label, the ``(x, label, hinge loss)`` with the higher loss."""
    losses = {c: max(0.0, 1.0 - c * (float(w @ x) + b)) for c, x in points.items()}
    c = max(losses, key=losses.get)
    return points[c], float(c), losses[c]


@dataclass
class Box:
    """No outlier filter, only plausible pixels: every point whose features lie inside
    ``[low_j, high_j]`` (the range each feature takes in the clean data, see :meth:`fit`), with
    either label. The set an attacker reaches once a data-dependent filter stops removing its
    points."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Box:
        """Per-feature minimum and maximum of ``x`` (a pixel never lit in clean data stays dark)."""
        x = np.asarray(x, dtype=np.float64)
        return cls(x.min(0), x.max(0))

    def keep(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return ((x >= self.low - 1e-9) & (x <= self.high + 1e-9)).all(1)

    def best_response(self, w: np.ndarray, b: float) -> tuple[np.ndarray, float, float]:
        """The box corner and label of highest hinge loss: ``x_j = high_j`` where ``-c w_j > 0``."""
        return _worse_label({c: np.where(-c * w > 0, self.high, self.low) for c in (1, -1)}, w, b)


# ---------------------------------------------------------------------------------------------
# Linear SVM with a norm constraint
# ---------------------------------------------------------------------------------------------

def hinge(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row hinge loss ``max(0, 1 - y (w.x + b))``."""
    return np.maximum(0.0, 1.0 - y * (x @ w + b))


def _augment(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _dual_averaging(xa: np.ndarray, y: np.ndarray, rho: float, iterations: int, wt: np.ndarray,
                    extra=None):
    """The learner of Algorithm 1: dual averaging over ``|theta| <= rho`` on the weighted mean
    hinge loss of ``(xa, y)``, plus an optional adversarial term ``extra(theta) -> (value,
    gradient)``. Yields ``(theta, objective value at theta)`` for every iterate."""
    z = np.zeros(xa.shape[1])
    theta = np.zeros_like(z)
    lam = np.sqrt((xa ** 2).sum(1).max()) / rho  # 1 / eta, eta = rho / max |x|
    for _ in range(iterations):
        margin = 1.0 - y * (xa @ theta)
        value = float(wt @ np.maximum(margin, 0.0))
        g = -((margin > 0) * wt * y) @ xa
        if extra is not None:
            v, gx = extra(theta)
            value += v
            g = g + gx
        yield theta, value
        z -= g
        lam = max(lam, np.linalg.norm(z) / rho)
        theta = z / lam


def train_svm(x: np.ndarray, y: np.ndarray, rho: float, *, iterations: int = 2000) -> tuple[np.ndarray, float]:
    """Minimise the mean hinge loss over ``|(w, b)|_2 <= rho`` (the learner of the certificate,
    :func:`certify`, run on a fixed training set; the best iterate). Returns ``(w, b)``."""
    x, y = _check_binary(x, y)
    rho = check_float("rho", rho, low=0.0, low_open=True)
    iterations = check_int("iterations", iterations, low=1)
    best, best_value = None, np.inf
    for theta, value in _dual_averaging(_augment(x), y, rho, iterations, np.full(len(x), 1 / len(x))):
        if value < best_value:
            best, best_value = theta.copy(), value
    return best[:-1], float(best[-1])


# ---------------------------------------------------------------------------------------------
# The certificate (Algorithm 1)
# ---------------------------------------------------------------------------------------------

@dataclass
class Certificate:
    """Result of :func:`certify` at one ``eps``.

    Attributes:
        eps: poisons per clean point.
        bound: U*, the upper bound on the clean + eps * poison hinge loss any attack inside the
            feasible set can force (and so on the defended model's clean loss).
        attack_x, attack_y: the candidate attack: ``round(eps * n)`` points, the last best
            responses of the run (cycled when there are fewer iterations than points).
        history: U* after each iteration.
    """

    eps: float
    bound: float
    attack_x: np.ndarray
    attack_y: np.ndarray
    history: list[float] = field(default_factory=list)


def certify(x: np.ndarray, y: np.ndarray, feasible: SphereSlab | Box, eps: float, *, rho: float,
            iterations: int = 300) -> Certificate:
    """Steinhardt et al.'s Algorithm 1: an upper bound on the loss of any ``eps``-attack whose
    points pass ``feasible``, together with a candidate attack.

    The learner plays dual averaging over the ball ``|(w, b)| <= rho`` on the clean loss plus
    ``eps`` times the loss of the attacker's best response; ``U*`` is the smallest value of
    ``L(theta; D_c) / n + eps * loss(best response)`` seen.

    Args:
        x, y: clean training data, labels in {-1, +1}.
        feasible: the filter the poisons must pass (the oracle :class:`SphereSlab`).
        eps: poisons per clean point, in [0, 1).
        rho: norm bound of the learner's parameters ``(w, b)``.
        iterations: learner steps (the candidate attack is the last ``eps * n`` best responses).
    """
    x, y = _check_binary(x, y)
    eps = check_eps(eps)
    rho = check_float("rho", rho, low=0.0, low_open=True)
    iterations = check_int("iterations", iterations, low=1)
    n = len(x)
    bound, history, picks = np.inf, [], []

    def attacker(theta: np.ndarray) -> tuple[float, np.ndarray]:
        px, py, ploss = feasible.best_response(theta[:-1], theta[-1])
        picks.append((px, py))
        return eps * ploss, (-eps * py * np.append(px, 1.0) if ploss > 0 else 0.0)

    for _, value in _dual_averaging(_augment(x), y, rho, iterations, np.full(n, 1 / n), attacker):
        bound = min(bound, value)
        history.append(bound)
    k = round(eps * n)
    chosen = [picks[-1 - i % len(picks)] for i in range(k)]  # the last best responses, cycled if k > T
    ax = np.array([p[0] for p in chosen]).reshape(k, x.shape[1])
    ay = np.array([p[1] for p in chosen])
    return Certificate(eps, float(bound), ax, ay, history)


@dataclass
class CertifiedCurve:
    """Bounds and the candidate attacks' real losses over a grid of ``eps``."""

    eps: list[float]
    bound: list[float]
    attack_train_loss: list[float]
    attack_test_loss: list[float]
    clean_test_loss: float


def certified_curve(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                    feasible: SphereSlab, eps_grid: list[float], *, rho: float, iterations: int = 300,
                    progress: bool = False) -> CertifiedCurve:
    """For each ``eps``: the certificate's bound U*, and what its candidate attack really does
    (train on clean + poisons after the filter, clean train loss and clean test hinge loss)."""
    x, y = _check_binary(x, y)
    x_test, y_test = _check_binary(x_test, y_test)
    w, b = train_svm(x, y, rho)
    curve = CertifiedCurve([], [], [], [], float(hinge(w, b, x_test, y_test).mean()))
    for eps in tqdm(eps_grid, desc="certify", disable=not progress, leave=False):
        cert = certify(x, y, feasible, eps, rho=rho, iterations=iterations)
        w, b = poisoned_svm(x, y, cert.attack_x, cert.attack_y, feasible, rho=rho)
        curve.eps.append(cert.eps)
        curve.bound.append(cert.bound)
        curve.attack_train_loss.append(float(hinge(w, b, x, y).mean()))
        curve.attack_test_loss.append(float(hinge(w, b, x_test, y_test).mean()))
    return curve


def poisoned_svm(x: np.ndarray, y: np.ndarray, px: np.ndarray, py: np.ndarray, defense: SphereSlab | None,
                 *, rho: float, iterations: int = 2000) -> tuple[np.ndarray, float]:
    """Train the SVM the way the defender does: drop the poisons that fail ``defense`` (clean
    points are kept: the certificate assumes the defense spares them), then minimise
    ``L(theta; D_c) / n + (1 / n) * sum of poison losses``."""
    if len(px) and defense is not None:
        ok = defense.keep(px, py)
        px, py = px[ok], py[ok]
    if not len(px):
        return train_svm(x, y, rho, iterations=iterations)
    return train_svm(np.vstack([x, px]), np.concatenate([y, py]), rho, iterations=iterations)


# ---------------------------------------------------------------------------------------------
# Data-dependent defense
# ---------------------------------------------------------------------------------------------

def concentrated_attack(x: np.ndarray, y: np.ndarray, eps: float, *, rho: float,
                        box: Box | None = None, clean: tuple[np.ndarray, float] | None = None,
                        ) -> tuple[np.ndarray, np.ndarray]:
    """All ``round(eps * n)`` poisons on one point: the pixel-box corner (and label) of highest
    hinge loss for the clean model (``clean = (w, b)``, trained here when ``None``). Stacked
    points drag their class centroid towards them and fill the quantile a data-dependent filter
    removes (Koh, Steinhardt, Liang 2018)."""
    x, y = _check_binary(x, y)
    eps = check_eps(eps)
    box = box or Box.fit(x)
    w, b = clean if clean is not None else train_svm(x, y, rho)
    px, py, _ = box.best_response(w, b)
    k = round(eps * len(x))
    return np.repeat(px[None], k, 0), np.full(k, py)


@dataclass
class DataDependentCurve:
    """Per ``eps``: the bound over the set the attacker reaches (:class:`Box`), the concentrated
    attack's clean test loss when the defender fits the filter on the poisoned data, and the
    share of its poisons that the filter let through."""

    eps: list[float]
    bound: list[float]
    attack_test_loss: list[float]
    poisons_kept: list[float]
    clean_test_loss: float


def data_dependent_curve(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                         eps_grid: list[float], *, quantile: float = 0.95, rho: float,
                         iterations: int = 300, progress: bool = False) -> DataDependentCurve:
    """The data-dependent sphere + slab defense against :func:`concentrated_attack`: centroids
    and quantile thresholds are refit on clean + poison data, then the defender trains on what
    passes. Once the poisons outnumber the quantile the filter removes, they all pass."""
    x, y = _check_binary(x, y)
    x_test, y_test = _check_binary(x_test, y_test)
    box = Box.fit(x)
    clean = train_svm(x, y, rho)
    curve = DataDependentCurve([], [], [], [], float(hinge(*clean, x_test, y_test).mean()))
    for eps in tqdm(eps_grid, desc="data-dependent", disable=not progress, leave=False):
        px, py = concentrated_attack(x, y, eps, rho=rho, box=box, clean=clean)
        xa, ya = np.vstack([x, px]), np.concatenate([y, py])
        keep = SphereSlab.fit(xa, ya, quantile).keep(xa, ya)
        w, b = train_svm(xa[keep], ya[keep], rho)
        curve.eps.append(float(eps))
        curve.bound.append(certify(x, y, box, eps, rho=rho, iterations=iterations).bound)
        curve.attack_test_loss.append(float(hinge(w, b, x_test, y_test).mean()))
        curve.poisons_kept.append(float(keep[len(x):].mean()) if len(px) else float("nan"))
    return curve
