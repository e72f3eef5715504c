"""Model-targeted poisoning by gradient canceling (Lu, Kamath, Yu 2023) on logistic regression.

The attacker picks a bad *target* model w_t and adds εn points D_p so that w_t becomes a stationary
point of the training loss on D_c ∪ D_p — for a convex learner then *the* minimiser::

    min_{D_p ⊂ [0,1]^d}  ‖ ∇L(w_t; D_c) + ∇L(w_t; D_p) ‖²      (sums over the points)

The target comes from parameter corruption (GradPC): normalised gradient *ascent* on the clean
training loss inside an ℓ2 ball around the clean model. Reachability: with fewer poisons than
τ = ⟨∇_w L(w_t; D_c), w_t⟩ / W(1/e) (mean gradient, W the Lambert function, W(1/e) ≈ 0.2785; for C
softmax classes W((C−1)/e)) the target cannot be a stationary point — no attack at ε < τ produces it.

The bias needs poisons of its own, whatever their pixels: a poison's bias gradient is softmax −
one-hot, no entry below −1, so the clean bias gradient's positive entries need at least their sum
of poisons (:func:`bias_threshold`). After GradPC's ascent that sum is large (~600 of 5,000 points
on the lab's split: ε ≥ 0.12). Re-fitting the target's bias to the clean data
(``gradpc_target(..., refit_bias=True)``) makes the clean bias gradient vanish and leaves the
corrupted weights in place: a slightly milder target the attack can actually reach at ε = 0.03.
Inside the pixel box every pixel is capped at 1 like the bias's input, and the same count bounds
the weights' part too (:func:`box_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._validate import check_float, check_int, check_labels
from ..experiments import text_table
from .common import Poisoned
from .label_flip import flip_labels

LAMBERT_W_1_OVER_E = 0.27846454276107380  # W(1/e): the solution of w·e^w = 1/e


def lambert_w(z: float) -> float:
    """The principal branch of the Lambert function (w·e^w = z, z ≥ 0) by Newton's method."""
    w = np.log1p(check_float("z", z, low=0.0))
    for _ in range(50):
        w -= (w * np.exp(w) - z) / (np.exp(w) * (w + 1))
    return float(w)


def poison_capacity(num_classes: int) -> float:
    """The most one poison can subtract from ⟨∇L, w⟩: max_z (z_y − E_softmax(z)[z]) = W((C − 1)/e)
    (attained at z_y = 1 + W((C−1)/e), other logits equal); W(1/e) ≈ 0.2785 for two classes."""
    return lambert_w((check_int("num_classes", num_classes, low=2) - 1) / np.e)


@dataclass
class Linear:
    """Multinomial logistic regression parameters: logits = x @ W.T + b."""

    W: torch.Tensor
    b: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T + self.b

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        check_xy(x, y, self.W.shape[0])
        return float((self.logits(x).argmax(1) == y).float().mean())

    def vector(self) -> torch.Tensor:
        return torch.cat([self.W.flatten(), self.b])


def loss_sum_grad(model: Linear, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_i ∇_(W, b) CE(x_i, y_i) in closed form: ((softmax − onehot)ᵀ x, Σ (softmax − onehot))."""
    r = model.logits(x).softmax(1) - F.one_hot(y, model.W.shape[0]).to(x.dtype)
    return r.T @ x, r.sum(0)


L2 = 1e-3  # the victim's weight decay: min mean CE + (L2/2)‖W‖²


def poison_count(epsilon: float, n: int) -> int:
    """The number of poisons at budget ``epsilon`` (0 < ε ≤ 1) for ``n`` clean points: round(εn), at least 1."""
    return max(1, int(round(check_float("epsilon", epsilon, low=0.0, high=1.0, low_open=True) * n)))


def stationarity(target: Linear, x: torch.Tensor, y: torch.Tensor, k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean part of the victim's stationarity condition at ``target`` when ``k`` poisons join
    the n clean points: (Σ ∇_W CE + (n + k)·L2·W, Σ ∇_b CE) — what the poisons' gradient must cancel."""
    gW, gb = loss_sum_grad(target, x, y)
    return gW + (len(y) + k) * L2 * target.W, gb


def check_xy(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None, *,
             names: tuple[str, str] = ("x", "y")) -> None:
    """``x`` a finite (N, d) float tensor (flattened images, one row per example) and ``y`` its N
    class indices, in [0, num_classes) when given."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{names[0]} must be a floating-point torch.Tensor of shape (N, d), got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{names[0]} must have shape (N, d) with N >= 1 (flatten images with "
                         f"x.flatten(1)); got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{names[0]} contains NaN or infinite values; features must be finite")
    check_labels(names[1], y, n=len(x), num_classes=num_classes)


def fit_logreg(x: torch.Tensor, y: torch.Tensor, num_classes: int = 10, *, l2: float = L2,
               max_iter: int = 500, init: Linear | None = None) -> Linear:
    """Minimise the mean cross-entropy + (l2/2)‖W‖² with L-BFGS (convex: the result is the minimiser,
    whatever the start; ``init`` only makes a nearby start converge faster)."""
    check_xy(x, y, check_int("num_classes", num_classes, low=2))
    l2 = check_float("l2", l2, low=0.0)
    check_int("max_iter", max_iter, low=1)
    W = (torch.zeros(num_classes, x.shape[1], dtype=x.dtype) if init is None else init.W.clone()).requires_grad_(True)
    b = (torch.zeros(num_classes, dtype=x.dtype) if init is None else init.b.clone()).requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Linear(W.detach(), b.detach())


def fit_logreg_many(x: torch.Tensor, y: torch.Tensor, num_classes: int = 10, *, l2: float = L2,
                    init: Linear | None = None, max_iter: int = 60, tol: float = 1e-9, refresh: int = 5,
                    chunk: int = 16) -> list[Linear]:
    """:func:`fit_logreg` for many training sets of one size at once: ``x`` is (S, n, d), ``y`` is
    (n,) shared or (S, n). Use float64.

    Newton's method batched over the S problems, each from ``init`` (or zero): the objective is
    smooth and convex, so a few Hessian steps reach the minimiser where L-BFGS takes hundreds of
    small ones (a Poison Frogs head: ~25 steps instead of ~300, 3.5× faster for 50 heads, and a
    lower objective on every one). The Hessian is rebuilt every ``refresh`` steps and reused in
    between; a backtracking line search keeps every step a descent. Stops when every problem's
    largest gradient entry is below ``tol``; a problem still above it after ``max_iter`` steps is
    finished by :func:`fit_logreg`.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(f"x must be a (sets, rows, features) tensor; got shape {tuple(getattr(x, 'shape', ()))}")
    S, n, d = x.shape
    if tuple(y.shape) not in ((n,), (S, n)):
        raise ValueError(f"y must be (rows,) or (sets, rows) matching x {tuple(x.shape)}; got {tuple(y.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or infinite values; features must be finite")
    y = y.expand(S, n) if y.ndim == 1 else y
    k = check_int("num_classes", num_classes, low=2)
    l2 = check_float("l2", l2, low=0.0)
    check_int("max_iter", max_iter, low=1)
    check_int("refresh", refresh, low=1)
    check_float("tol", tol, low=0.0, low_open=True)
    out: list[Linear] = []
    for lo in range(0, S, check_int("chunk", chunk, low=1)):
        out += _newton_logreg(x[lo:lo + chunk], y[lo:lo + chunk], k, l2, init, max_iter, tol, refresh)
    return out


def _newton_logreg(x, y, k, l2, init, max_iter, tol, refresh):
    S, n, d = x.shape
    xa = torch.cat([x, torch.ones(S, n, 1, dtype=x.dtype)], 2)              # (S, n, d+1): bias column
    onehot = F.one_hot(y, k).to(x.dtype)
    reg = torch.ones(d + 1, dtype=x.dtype)
    reg[-1] = 0.0                                                          # the bias is not decayed
    theta = torch.zeros(S, k, d + 1, dtype=x.dtype)
    if init is not None:
        theta[:] = torch.cat([init.W, init.b[:, None]], 1).to(x.dtype)

    def loss_of(t: torch.Tensor) -> torch.Tensor:
        z = xa @ t.transpose(1, 2)
        ce = (torch.logsumexp(z, 2) - (z * onehot).sum(2)).mean(1)
        return ce + 0.5 * l2 * (t * t * reg).sum((1, 2))

    def hessian_factor(p: torch.Tensor) -> torch.Tensor:
        # the mean CE's Hessian: X̃ᵀ diag(p_a) X̃ / n on the diagonal blocks, minus MᵀM / n with
        # M[m, (a, i)] = p_ma x̃_mi; plus the weight decay and a tiny ridge (the one flat direction,
        # the same shift of every bias, has no gradient) on the diagonal
        m = (p[..., None] * xa[:, :, None, :]).reshape(S, n, k * (d + 1))
        hess = torch.bmm(m.transpose(1, 2), m).div_(-n)
        blocks = hess.view(S, k, d + 1, k, d + 1)
        for a in range(k):
            blocks[:, a, :, a] += torch.bmm((xa * (p[..., a:a + 1] / n)).transpose(1, 2), xa)
        hess.diagonal(dim1=1, dim2=2).add_(l2 * reg.repeat(k) + 1e-10)
        factor, info = torch.linalg.cholesky_ex(hess)
        if (info > 0).any():
            factor[info > 0] = torch.linalg.cholesky(hess[info > 0] + 1e-6 * torch.eye(k * (d + 1), dtype=x.dtype))
        return factor

    loss = loss_of(theta)
    for it in range(max_iter + 1):
        p = (xa @ theta.transpose(1, 2)).softmax(2)                           # (S, n, k)
        grad = (p - onehot).transpose(1, 2) @ xa / n + l2 * theta * reg      # (S, k, d+1)
        done = grad.abs().flatten(1).amax(1) < tol
        if done.all() or it == max_iter:
            break
        if it % refresh == 0:
            factor = hessian_factor(p)
        step = torch.cholesky_solve(grad.reshape(S, -1, 1), factor).reshape(S, k, d + 1)
        step[done] = 0.0
        slope = (grad * step).sum((1, 2))
        t = torch.ones(S, dtype=x.dtype)
        for _ in range(30):   # backtracking (Armijo), per problem
            trial = loss_of(theta - t[:, None, None] * step)
            ok = (trial <= loss - 1e-4 * t * slope) | done
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        theta = theta - t[:, None, None] * step
        loss = loss_of(theta)
    models = [Linear(theta[i, :, :d].clone(), theta[i, :, d].clone()) for i in range(S)]
    for i in torch.nonzero(~done).flatten().tolist():   # not converged: L-BFGS finishes it
        models[i] = fit_logreg(x[i], y[i], k, l2=l2, init=models[i])
    return models


def gradpc_target(x: torch.Tensor, y: torch.Tensor, num_classes: int = 10, *, radius: float = 0.5,
                  warmup: int = 10, steps: int = 50, refit_bias: bool = False) -> Linear:
    """GradPC: a briefly trained model (``warmup`` L-BFGS iterations, standing in for one epoch),
    then ``steps`` normalised gradient-ascent steps of length radius/steps on the training loss
    (the target stays within ``radius`` of the warm start, with small weights, so it is reachable).
    ``refit_bias``: then :func:`refit_bias_of` (the clean bias gradient vanishes; module docstring)."""
    check_float("radius", radius, low=0.0, low_open=True)
    start = fit_logreg(x, y, num_classes, max_iter=check_int("warmup", warmup, low=1))
    W, b = start.W.clone(), start.b.clone()
    for _ in range(check_int("steps", steps, low=1)):
        gW, gb = loss_sum_grad(Linear(W, b), x, y)
        norm = torch.sqrt((gW * gW).sum() + (gb * gb).sum())
        W, b = W + radius / steps * gW / norm, b + radius / steps * gb / norm
    return refit_bias_of(Linear(W, b), x, y) if refit_bias else Linear(W, b)


def refit_bias_of(model: Linear, x: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> Linear:
    """``model`` with its weights kept and its bias re-fitted to (x, y): the bias minimising the
    mean cross-entropy (no weight decay on the bias), where the summed bias gradient is zero."""
    check_xy(x, y, model.W.shape[0])
    b = model.b.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([b], lr=1, max_iter=check_int("max_iter", max_iter, low=1), tolerance_grad=1e-9,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ model.W.T + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    return Linear(model.W, b.detach())


def bias_threshold(target: Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """The fewest poisons, as a fraction of the clean set, that can cancel the clean bias gradient
    at ``target``: Σ_j max(g_j, 0) / n with g = Σ_i (softmax_i − onehot_i) the summed clean bias
    gradient. Each poison adds softmax − onehot, whose entries are ≥ −1 (−1 at best, and only in
    its own label's entry), so entry j needs at least g_j poisons labelled j — for any features,
    in the pixel box or not. A necessary condition, like τ; the weights' part of the gradient
    adds more."""
    check_xy(x, y, target.W.shape[0])
    _, gb = loss_sum_grad(target, x, y)
    return float(gb.clamp(min=0).sum()) / len(y)


def box_threshold(target: Linear, x: torch.Tensor, y: torch.Tensor, epsilon: float) -> float:
    """:func:`bias_threshold` for poisons in the pixel box [0, 1]: every pixel, like the bias's
    constant input 1, is at most 1, so a poison labelled j lowers each entry of row j of the
    stationarity condition (clean gradient + weight decay at n + εn points) by at most 1 and no
    poison of another label lowers it at all. Row j's largest positive entry therefore needs that
    many poisons labelled j: Σ_j max_d max(G_jd, 0) / n, the bias counted as a feature. Necessary,
    not sufficient."""
    check_xy(x, y, target.W.shape[0])
    gW, gb = stationarity(target, x, y, poison_count(epsilon, len(y)))
    return float(torch.cat([gW, gb[:, None]], 1).clamp(min=0).amax(1).sum()) / len(y)


def reachability_threshold(target: Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """τ = max(⟨∇L(w_t; D_c), w_t⟩ / W((C−1)/e), 0) with the mean gradient over the clean set: the
    binary formula W(1/e) of Lu et al. generalised to C classes (:func:`poison_capacity`)."""
    check_xy(x, y, target.W.shape[0])
    gW, gb = stationarity(target, x, y)
    inner = float((gW * target.W).sum() + (gb * target.b).sum()) / len(y)
    return max(inner / poison_capacity(target.W.shape[0]), 0.0)


def gradient_canceling(x: torch.Tensor, y: torch.Tensor, target: Linear, epsilon: float, *, steps: int = 300,
                       lr: float = 0.05, box: tuple[float, float] | None = (0.0, 1.0), seed: int = 0,
                       progress: bool = False) -> Poisoned:
    """Craft ⌈εn⌉ poisons whose summed loss gradient at ``target`` cancels the clean one; Adam on
    the features, projected onto ``box`` (valid pixels) after every step.

    ``box=None`` leaves the features unconstrained, as the paper's reference code does: a poison
    with pixels far outside [0, 1] carries a gradient many times larger, so far fewer of them cancel
    the clean gradient — and a range check on the training data rejects every one of them.
    """
    check_float("epsilon", epsilon, low=0.0, high=1.0, low_open=True)
    check_xy(x, y, target.W.shape[0])
    n, k = len(y), poison_count(epsilon, len(y))
    if box is not None:
        if not (isinstance(box, tuple) and len(box) == 2 and all(isinstance(v, (int, float)) for v in box)
                and np.isfinite(box).all() and box[0] < box[1]):
            raise ValueError(f"box must be None or a (low, high) pair of finite numbers with low < high; got {box!r}")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n, generator=gen)[:k] if k <= n else torch.randint(0, n, (k,), generator=gen)
    gW_c, gb_c = stationarity(target, x, y, k)
    # A poison labelled j subtracts (1 − p_j)·x from row j of the gradient: give the labels to the
    # rows with the most positive mass to cancel, in proportion to it.
    need = gW_c.clamp(min=0).sum(1).double()
    labels = torch.multinomial(need / need.sum(), k, replacement=True, generator=gen).sort().values
    pools = [torch.nonzero(y == c).flatten() for c in range(len(need))]
    rows = torch.stack([pools[c][torch.randint(len(pools[c]), (1,), generator=gen)][0] for c in labels.tolist()])
    xp = x[rows].clone().requires_grad_(True)
    yp = labels.to(y.dtype)
    opt = torch.optim.Adam([xp], lr=lr)
    history = []
    for _ in tqdm(range(check_int("steps", steps, low=1)), desc=f"gradient canceling ε={epsilon}",
                  disable=not progress):
        gW, gb = loss_sum_grad(target, xp, yp)
        obj = (((gW_c + gW) ** 2).sum() + ((gb_c + gb) ** 2).sum()) / n ** 2
        opt.zero_grad()
        obj.backward()
        opt.step()
        if box is not None:
            with torch.no_grad():
                xp.clamp_(*box)
        history.append(float(obj.detach()))
    xs = torch.cat([x, xp.detach()])
    ys = torch.cat([y, yp])
    mask = torch.zeros(len(ys), dtype=torch.bool)
    mask[n:] = True
    name = f"gradient canceling ε={epsilon}" + ("" if box is not None else ", no pixel box")
    return Poisoned(xs, ys, mask, name, {"objective": history, "rows": rows})


def flip_copies(x: torch.Tensor, y: torch.Tensor, clean: Linear, epsilon: float, seed: int = 0) -> Poisoned:
    """Label flipping at the same budget: ⌈εn⌉ copies of the training rows the clean model is most
    sure about, labelled with its runner-up class (the strongest flips of the label-flip section)."""
    check_float("epsilon", epsilon, low=0.0, high=1.0, low_open=True)
    check_xy(x, y, clean.W.shape[0])
    n, k = len(y), poison_count(epsilon, len(y))
    flipped = flip_labels(y, k / n, mode="confident", num_classes=clean.W.shape[0],
                          probs=clean.logits(x).softmax(1), seed=seed)
    rows = flipped.info["rows"]
    xs, ys = torch.cat([x, x[rows]]), torch.cat([y, flipped.y[rows]])
    mask = torch.zeros(len(ys), dtype=torch.bool)
    mask[n:] = True
    return Poisoned(xs, ys, mask, f"label flip copies ε={epsilon}")


@dataclass
class CancelingResult:
    """Accuracies (%) of the clean model, the target and the retrained victims per ε."""

    clean: float
    target: float
    tau: float
    epsilons: tuple[float, ...]
    canceling: list[float]
    flipping: list[float]
    unboxed: list[float] = field(default_factory=list)   # poisons outside [0, 1] (``unboxed=True``)
    bias: float = 0.0                                    # :func:`bias_threshold` of the target
    box: list[float] = field(default_factory=list)       # :func:`box_threshold` per ε
    raw: CancelingResult | None = None   # with ``refit_bias``: GradPC's own target at the smallest ε

    def drops(self) -> dict[str, list[float]]:
        out = {"gradient canceling": [self.clean - a for a in self.canceling]}
        if self.unboxed:
            out["gradient canceling, no pixel box"] = [self.clean - a for a in self.unboxed]
        out["label flipping"] = [self.clean - a for a in self.flipping]
        return out

    def targets_table(self) -> str:
        """The target(s) attacked: accuracy, the reachability threshold τ, the bias and box
        thresholds and gradient canceling's drop at the smallest ε; GradPC's own target (``raw``)
        first where the bias was re-fitted."""
        e0 = min(self.epsilons)
        rows = [["target", "test accuracy", "tau", "bias threshold", "box threshold", f"GC drop at eps = {e0:g}"]
                + (["... no pixel box"] if self.unboxed else [])]
        for name, r in ([("GradPC as it is", self.raw), ("GradPC, bias re-fitted", self)] if self.raw
                        else [("GradPC", self)]):
            i = r.epsilons.index(min(r.epsilons))
            d = r.drops()
            rows.append([name, f"{r.target:.1f} %", f"{r.tau:.3f}", f"{r.bias:.3f}", f"{r.box[i]:.3f}",
                         f"{d['gradient canceling'][i]:.1f}"]
                        + ([f"{d['gradient canceling, no pixel box'][i]:.1f}"] if r.unboxed else []))
        return text_table(rows)

    def drops_table(self, paper: Sequence[str] | None = None) -> str:
        """Accuracy drop (points) per ε for each attack, with a column of published figures
        (``paper``, one string per ε) where given."""
        drops = self.drops()
        if paper is not None and len(paper) != len(self.epsilons):
            raise ValueError(f"paper must hold one figure per epsilon ({len(self.epsilons)}), got {len(paper)}")
        names = {"gradient canceling": "gradient canceling drop",
                 "gradient canceling, no pixel box": "... without the pixel box",
                 "label flipping": "label flipping drop"}
        rows = [["epsilon"] + [names[k] for k in drops] + (["paper (MNIST LR, GC)"] if paper is not None else [])]
        for i, e in enumerate(self.epsilons):
            rows.append([f"{e:g}"] + [f"{v[i]:.1f}" for v in drops.values()]
                        + ([paper[i]] if paper is not None else []))
        return text_table(rows)

    def plot(self, ax=None):
        """Accuracy drop against ε (log axis), one line per attack. Returns the axes."""
        from ..viz import plot_curve

        fig = plot_curve(list(self.epsilons), self.drops(), xlabel="epsilon (poisons / clean points)",
                         ylabel="accuracy drop (points)", title="model-targeted vs label flipping", ax=ax)
        ax = ax or fig.axes[0]
        ax.set_xscale("log")
        return ax


def canceling_experiment(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                         epsilons: Sequence[float] = (0.03, 0.1, 1.0), *, radius: float = 0.5, warmup: int = 10,
                         steps: int = 300, unboxed: bool = False, refit_bias: bool = False, seed: int = 0,
                         progress: bool = True) -> CancelingResult:
    """Clean model → GradPC target → per ε: gradient-canceling poisons and label-flip copies, each
    retrained from scratch (L-BFGS) and tested. Inputs are flattened images (N, d) in [0, 1].
    ``unboxed`` adds gradient canceling without the pixel box (the paper's code) per ε.
    ``refit_bias`` attacks GradPC's target with its bias re-fitted (:func:`refit_bias_of`) and
    reports GradPC's own target beside it at the smallest ε (``raw``, a result of its own)."""
    check_xy(x_train, y_train, names=("x_train", "y_train"))
    num_classes = int(y_train.max()) + 1
    check_xy(x_test, y_test, num_classes, names=("x_test", "y_test"))
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(f"x_test has {x_test.shape[1]} features but x_train has {x_train.shape[1]}; they must match")
    for e in epsilons:
        check_float("epsilons[i]", e, low=0.0, high=1.0, low_open=True)
    clean = fit_logreg(x_train, y_train, num_classes)
    gradpc = gradpc_target(x_train, y_train, num_classes, radius=radius, warmup=warmup)
    target = refit_bias_of(gradpc, x_train, y_train) if refit_bias else gradpc

    def accuracy_after(poisoned: Poisoned) -> float:
        return 100 * fit_logreg(poisoned.x, poisoned.y, num_classes, init=clean).accuracy(x_test, y_test)

    def attack(t: Linear, eps: list[float], flipping: list[float], desc: str) -> CancelingResult:
        res = CancelingResult(100 * clean.accuracy(x_test, y_test), 100 * t.accuracy(x_test, y_test),
                              reachability_threshold(t, x_train, y_train), tuple(eps), [], flipping,
                              bias=bias_threshold(t, x_train, y_train))
        for e in tqdm(eps, desc=desc, disable=not progress):
            res.box.append(box_threshold(t, x_train, y_train, e))
            res.canceling.append(accuracy_after(gradient_canceling(x_train, y_train, t, e, steps=steps, seed=seed)))
            if unboxed:
                free = gradient_canceling(x_train, y_train, t, e, steps=steps, box=None, seed=seed)
                res.unboxed.append(accuracy_after(free))
        return res

    flipping = [accuracy_after(flip_copies(x_train, y_train, clean, e, seed))
                for e in tqdm(epsilons, desc="label flipping", disable=not progress)]
    res = attack(target, list(epsilons), flipping, "gradient canceling")
    if refit_bias and epsilons:
        i = int(np.argmin(epsilons))
        res.raw = attack(gradpc, [epsilons[i]], [flipping[i]], "gradient canceling, GradPC's own target")
    return res
