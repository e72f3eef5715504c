"""Poisoning linear regression and the TRIM defense (Jagielski et al. 2018).

The attacker adds ``p`` points (x_c, y_c) with features and response in [0, 1] to maximise the
validation MSE of the model trained on the union — a bilevel problem::

    max_{D_p} W(D_val, θ*)   s.t.   θ* = argmin_θ L(D_tr ∪ D_p, θ).

* **OptP** follows the implicit gradient: at the optimum ∇_θ L = 0, so dθ/dz = −H⁻¹ ∂(∇_θ L)/∂z for
  z = x_c or y_c (H the Hessian of L; for LASSO restricted to the non-zero coefficients). One
  vector v = H⁻¹ ∇_θ W serves every poison, so all poisons move together in one step, followed by a
  backtracking line search; initial points by inverse (y → 1 − y) or boundary (y → round(1 − y))
  flipping of training rows; the better start on validation is kept.
* **StatP** samples x ~ N(μ, Σ + 0.01 I) from the training features, rounds it to the corners of
  the box, and sets the response to the far boundary y = round(1 − ŷ).
* **TRIM** fits on the n points with the smallest residuals until the chosen subset stops changing,
  starting from *all* points and from small random subsets; the lowest trimmed loss wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import HuberRegressor, Lasso, RANSACRegressor

from .._validate import check_choice, check_float, check_int
from ..data import TabularData
from .common import Poisoned, Splits, check_matrix, check_vector

REGRESSORS = ("ridge", "lasso")


class RegressionTask(Splits):
    """Disjoint train / validation / test splits of a regression set, all in [0, 1]."""


def regression_task(data: TabularData, n_train: int = 300, n_val: int = 250, n_test: int = 500,
                    seed: int = 0) -> RegressionTask:
    """Cut random disjoint splits (Jagielski et al.: 300 / 250 / 500)."""
    for name, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_int(name, v, low=1)
    n = len(data.y)
    if n_train + n_val + n_test > n:
        raise ValueError(f"n_train + n_val + n_test = {n_train + n_val + n_test} but {data.name} has {n} rows; "
                         f"allowed: a total <= {n}")
    order = np.random.default_rng(seed).permutation(n)
    a, b, c = np.split(order[:n_train + n_val + n_test], [n_train, n_train + n_val])
    return RegressionTask(data.name, data.x[a], data.y[a], data.x[b], data.y[b], data.x[c], data.y[c])


@dataclass
class LinearModel:
    """A fitted linear model y = x·w + b with the regulariser it was trained with."""

    kind: str
    lam: float
    w: np.ndarray
    b: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = check_matrix("x", x)
        if x.shape[1] != len(self.w):
            raise ValueError(f"x has {x.shape[1]} features but the model was fitted on {len(self.w)}")
        return x @ self.w + self.b

    def mse(self, x: np.ndarray, y: np.ndarray) -> float:
        pred = self.predict(x)
        return float(np.mean((pred - check_vector("y", y, len(pred))) ** 2))


DEFAULT_LAMBDA = {"ridge": 0.1, "lasso": 0.001}


def fit_linear(x: np.ndarray, y: np.ndarray, kind: str = "ridge", lam: float | None = None) -> LinearModel:
    """Ridge: min (1/N)‖Xw + b − y‖² + λ‖w‖² (solved in closed form, the same as scikit-learn's
    ``Ridge(alpha=λN)``). LASSO: scikit-learn's ``Lasso(alpha=λ)``, min (1/2N)‖Xw + b − y‖² + λ‖w‖₁."""
    check_choice("kind", kind, REGRESSORS)
    lam = DEFAULT_LAMBDA[kind] if lam is None else check_float("lam", lam, low=0.0)
    x = check_matrix("x", x)
    y = check_vector("y", y, len(x))
    if kind == "ridge":
        n, d = x.shape
        xt = np.hstack([x, np.ones((n, 1))])
        reg = n * lam * np.eye(d + 1)
        reg[d, d] = 0.0
        theta = np.linalg.solve(xt.T @ xt + reg, xt.T @ y)
        return LinearModel(kind, lam, theta[:d], float(theta[d]))
    m = Lasso(alpha=lam, max_iter=10_000, tol=1e-8).fit(x, y)
    return LinearModel(kind, lam, m.coef_.copy(), float(m.intercept_))


def poison_gradient(model: LinearModel, x: np.ndarray, y: np.ndarray, poison: np.ndarray,
                    x_val: np.ndarray, y_val: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """dW/dx_c (p, d) and dW/dy_c (p,) of the validation MSE W for the rows ``poison`` of (x, y),
    through the model's optimality conditions (implicit function theorem)."""
    n, d = x.shape
    active = np.flatnonzero(model.w != 0) if model.kind == "lasso" else np.arange(d)
    cols = np.append(active, d)                       # θ = (w_A, b)
    xt = np.hstack([x, np.ones((n, 1))])[:, cols]
    scale = 2.0 / n if model.kind == "ridge" else 1.0 / n   # d(data term)/dθ = scale · X̃ᵀ r
    hess = scale * xt.T @ xt
    if model.kind == "ridge":
        hess[:-1, :-1] += 2 * model.lam * np.eye(len(active))
    r_val = model.predict(x_val) - y_val
    xv = np.hstack([x_val, np.ones((len(y_val), 1))])[:, cols]
    g = (2.0 / len(y_val)) * xv.T @ r_val             # dW/dθ
    try:
        v = np.linalg.solve(hess + 1e-10 * np.eye(len(cols)), g)
    except np.linalg.LinAlgError:
        v = np.linalg.pinv(hess) @ g
    xc = xt[poison]
    r_c = model.predict(x[poison]) - y[poison]
    proj = xc @ v                                     # x̃_c · v
    direct = np.zeros((len(poison), d))
    direct[:, active] = r_c[:, None] * v[None, :-1]
    grad_x = -scale * (np.outer(proj, model.w) + direct)
    grad_y = scale * proj
    return grad_x, grad_y


def n_poisons(rate: float, n_clean: int) -> int:
    """Poisons p for a poisoning rate p / (n + p) (Jagielski et al.'s convention)."""
    rate = check_float("rate", rate, low=0.0, high=1.0, high_open=True)
    return int(round(rate * n_clean / (1 - rate)))


@dataclass
class RegressionAttack:
    """Poisoned training set and the validation MSE after each outer iteration (OptP)."""

    poisoned: Poisoned
    model: LinearModel
    history: list[float] = field(default_factory=list)


def _init_points(task: RegressionTask, p: int, init: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows = rng.choice(len(task.y_train), size=p, replace=p > len(task.y_train))
    y = 1.0 - task.y_train[rows]
    return task.x_train[rows].copy(), (np.round(y) if init == "boundary" else y)


def _union(task: RegressionTask, xp: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.vstack([task.x_train, xp]), np.concatenate([task.y_train, yp])


def optp(task: RegressionTask, rate: float, *, kind: str = "ridge", lam: float | None = None,
         inits: Sequence[str] = ("inverse", "boundary"), iterations: int = 30, step: float = 0.05,
         shrink: float = 0.5, seed: int = 0) -> RegressionAttack:
    """Jagielski et al.'s OptP at poisoning rate ``rate`` = p / (n + p).

    Each outer iteration moves every poison along its own normalised gradient by ``eta`` (starting
    at ``step``, doubled after an accepted step, multiplied by ``shrink`` after a rejected one) and
    keeps the move only when the validation MSE rises.
    """
    check_choice("kind", kind, REGRESSORS)
    check_int("iterations", iterations, low=0)
    check_float("step", step, low=0.0, low_open=True)
    check_float("shrink", shrink, low=0.0, high=1.0, low_open=True, high_open=True)
    for init in inits:
        check_choice("inits", init, ("inverse", "boundary"))
    p = n_poisons(rate, len(task.y_train))
    best: RegressionAttack | None = None
    for init in inits:
        rng = np.random.default_rng(seed)
        xp, yp = _init_points(task, p, init, rng)
        x, y = _union(task, xp, yp)
        model = fit_linear(x, y, kind, lam)
        obj = model.mse(task.x_val, task.y_val)
        history = [obj]
        poison = np.arange(len(task.y_train), len(y))
        eta = step
        for _ in range(iterations if p else 0):
            gx, gy = poison_gradient(model, x, y, poison, task.x_val, task.y_val)
            g = np.hstack([gx, gy[:, None]])
            g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
            z = np.hstack([x[poison], y[poison, None]])
            for _ in range(12):                       # backtracking line search
                cand = np.clip(z + eta * g, 0.0, 1.0)
                x2, y2 = x.copy(), y.copy()
                x2[poison], y2[poison] = cand[:, :-1], cand[:, -1]
                m2 = fit_linear(x2, y2, kind, lam)
                o2 = m2.mse(task.x_val, task.y_val)
                if o2 > obj:
                    x, y, model, obj = x2, y2, m2, o2
                    eta *= 2
                    break
                eta *= shrink
            else:
                break
            history.append(obj)
        mask = np.zeros(len(y), dtype=bool)
        mask[poison] = True
        run = RegressionAttack(Poisoned(x, y, mask, f"OptP {kind} {rate:.0%} ({init} init)",
                                        {"init": init, "n_clean": len(task.y_train)}), model, history)
        if best is None or obj > best.history[-1]:
            best = run
    return best


def statp(task: RegressionTask, rate: float, *, kind: str = "ridge", lam: float | None = None,
          seed: int = 0) -> RegressionAttack:
    """Jagielski et al.'s StatP: x ~ N(μ, Σ + 0.01 I) of the training features rounded to {0, 1},
    y = round(1 − ŷ) with ŷ the clean model's prediction."""
    p = n_poisons(rate, len(task.y_train))
    rng = np.random.default_rng(seed)
    mu = task.x_train.mean(0)
    cov = np.cov(task.x_train, rowvar=False) + 0.01 * np.eye(task.x_train.shape[1])
    xp = np.clip(np.round(rng.multivariate_normal(mu, cov, size=p)), 0, 1)
    clean = fit_linear(task.x_train, task.y_train, kind, lam)
    yp = np.clip(np.round(1 - clean.predict(xp)), 0, 1)
    x, y = _union(task, xp, yp)
    model = fit_linear(x, y, kind, lam)
    mask = np.zeros(len(y), dtype=bool)
    mask[len(task.y_train):] = True
    return RegressionAttack(Poisoned(x, y, mask, f"StatP {kind} {rate:.0%}", {"n_clean": len(task.y_train)}),
                            model, [model.mse(task.x_val, task.y_val)])


@dataclass
class AttackCurves:
    """Test MSE of the poisoned model over the clean model's, per (task, kind, attack) and rate."""

    rates: tuple[float, ...]
    ratio: dict[tuple[str, str, str], list[float]]

    def plot(self, axes=None):
        """One panel per task: MSE ratio against the poisoning rate (log scale), one line per kind
        and attack (``axes``: one per task, in the tasks' order; a single Axes for one task).
        Returns the axes."""
        import matplotlib.pyplot as plt
        from matplotlib.axes import Axes

        tasks = list(dict.fromkeys(t for t, _, _ in self.ratio))
        if isinstance(axes, Axes):
            axes = [axes]
        if axes is None:
            _, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.4), squeeze=False)
            axes = axes[0]
        elif len(axes) != len(tasks):
            raise ValueError(f"axes has {len(axes)} panels; give one per task ({len(tasks)}: {tasks})")
        for ax, task in zip(axes, tasks):
            for (t, kind, attack), r in self.ratio.items():
                if t == task:
                    ax.plot([100 * x for x in self.rates], r, "o-" if attack == "OptP" else "s--",
                            label=f"{attack} {kind}")
            ax.set(title=task, xlabel="poisoning rate p/(n+p) (%)", ylabel="test MSE / clean MSE", yscale="log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        return axes


ATTACKS = ("OptP", "StatP")


def attack_curves(tasks: dict[str, RegressionTask], rates: Sequence[float], *, kinds=("ridge", "lasso"),
                  attacks=ATTACKS, iterations: int = 50, seed: int = 0) -> AttackCurves:
    """Jagielski et al.'s figures: for each task, kind (ridge / LASSO) and attack (OptP with
    ``iterations`` outer steps, StatP), the test MSE after poisoning at each rate over the clean
    model's."""
    if not isinstance(tasks, dict) or not tasks or not all(isinstance(t, RegressionTask) for t in tasks.values()):
        raise TypeError("tasks must be a non-empty dict of name -> RegressionTask (regression_task(...))")
    if isinstance(kinds, str) or isinstance(attacks, str):
        raise TypeError("kinds and attacks must be sequences, e.g. ('ridge',), not one string")
    rates = tuple(check_float("rates[i]", r, low=0.0, high=1.0, low_open=True, high_open=True) for r in rates)
    if not rates:
        raise ValueError("rates must not be empty")
    for k in kinds:
        check_choice("kinds[i]", k, REGRESSORS)
    for a in attacks:
        check_choice("attacks[i]", a, ATTACKS)
    ratio = {}
    for name, task in tasks.items():
        for kind in kinds:
            clean = fit_linear(task.x_train, task.y_train, kind).mse(task.x_test, task.y_test)
            for attack in attacks:
                run = [optp(task, r, kind=kind, iterations=iterations, seed=seed) if attack == "OptP"
                       else statp(task, r, kind=kind, seed=seed) for r in rates]
                ratio[name, kind, attack] = [a.model.mse(task.x_test, task.y_test) / clean for a in run]
    return AttackCurves(rates, ratio)


def trimmed_loss(model: LinearModel, x: np.ndarray, y: np.ndarray, n: int) -> float:
    """TRIM's objective: the mean of the ``n`` smallest squared residuals."""
    pred = model.predict(x)
    n = check_int("n", n, low=1, high=len(pred))
    return float(np.mean(np.sort((pred - check_vector("y", y, len(pred))) ** 2)[:n]))


def _trim_from(x: np.ndarray, y: np.ndarray, n: int, keep: np.ndarray, kind: str, lam: float | None,
               max_iter: int) -> tuple[LinearModel, np.ndarray]:
    model = fit_linear(x[keep], y[keep], kind, lam)
    for _ in range(max_iter):
        new = np.zeros(len(y), dtype=bool)
        new[np.argsort((model.predict(x) - y) ** 2, kind="stable")[:n]] = True
        if (new == keep).all():
            break
        keep = new
        model = fit_linear(x[keep], y[keep], kind, lam)
    return model, keep


def trim(x: np.ndarray, y: np.ndarray, n: int, *, kind: str = "ridge", lam: float | None = None,
         max_iter: int = 100, restarts: int = 50, seed: int = 0) -> tuple[LinearModel, np.ndarray]:
    """TRIM: fit on the ``n`` rows with the smallest squared residuals and re-select until the
    subset stops changing. The first start uses *all* rows; each of ``restarts`` more starts from
    d + 2 random rows (small starts are often poison-free: FAST-LTS, Rousseeuw & Van Driessen 2006),
    and the run with the lowest trimmed loss wins. Returns the model and the kept-row mask."""
    x = check_matrix("x", x)
    y = check_vector("y", y, len(x))
    check_int("n", n, low=x.shape[1] + 1, high=len(y))
    check_int("max_iter", max_iter, low=1)
    check_int("restarts", restarts, low=0)
    best = _trim_from(x, y, n, np.ones(len(y), dtype=bool), kind, lam, max_iter)
    best_loss = trimmed_loss(best[0], x, y, n)
    rng = np.random.default_rng(seed)
    for _ in range(restarts):
        start = np.zeros(len(y), dtype=bool)
        start[rng.choice(len(y), size=min(x.shape[1] + 2, n), replace=False)] = True
        run = _trim_from(x, y, n, start, kind, lam, max_iter)
        loss = trimmed_loss(run[0], x, y, n)
        if loss < best_loss:
            best, best_loss = run, loss
    return best


def robust_mse(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, n_clean: int,
               *, kind: str = "ridge", lam: float | None = None, seed: int = 0) -> dict[str, float]:
    """Test MSE of the plain model, TRIM (told ``n_clean``) from all rows only and with its random
    restarts, scikit-learn's HuberRegressor and RANSACRegressor on the same (possibly poisoned)
    training set."""
    out = {"plain": fit_linear(x, y, kind, lam).mse(x_test, y_test),
           "TRIM, one start": trim(x, y, n_clean, kind=kind, lam=lam, restarts=0)[0].mse(x_test, y_test),
           "TRIM": trim(x, y, n_clean, kind=kind, lam=lam, seed=seed)[0].mse(x_test, y_test)}
    huber = HuberRegressor(max_iter=1000).fit(x, y)
    out["Huber"] = float(np.mean((huber.predict(x_test) - y_test) ** 2))
    ransac = RANSACRegressor(random_state=seed).fit(x, y)
    out["RANSAC"] = float(np.mean((ransac.predict(x_test) - y_test) ** 2))
    return out
