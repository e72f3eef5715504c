"""Clean-label feature collision — "Poison Frogs" (Shafahi et al. 2018) — and its limits
(Schwarzschild et al. 2021, "Just How Toxic is Data Poisoning?").

The attacker wants one *target* test image t classified as the *base* class. A poison x starts at
a base-class image b and keeps its correct label; it is moved until its features collide with t's
while its pixels stay close to b::

    x = argmin_x ‖f(x) − f(t)‖² + β‖x − b‖²

solved by forward–backward splitting: a gradient step on the feature term, then the proximal step of
the pixel term, x ← (x̂ + λβ b) / (1 + λβ), with β = β0 (2048 / dim b)² and β0 = 0.25. Watermarking
blends the target into the base first (b ← (1 − γ) b + γ t, γ = 0.3). The victim retrains only the
last layer on frozen features (transfer learning): then a poison sitting on the target's features
drags the target across the boundary. Trained from scratch, or with the poison held inside a small
ℓ∞ ball, the attack collapses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validate import check_float, check_int
from ..data import ImageData
from ..training import TrainConfig, model_device, predict, train_model
from .gradient_canceling import Linear, fit_logreg, fit_logreg_many

SETUPS_FILE = "frogs_setups.json"


@dataclass(frozen=True)
class TransferTask:
    """The transfer-learning victim: frozen ``extractor``, a head retrained on (x_train, y_train)
    of the transfer classes (labels renumbered 0..k−1); targets come from (x_test, y_test)."""

    extractor: nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    _victim: _Victim | None = field(default=None, init=False, repr=False, compare=False)


def transfer_task(data: ImageData, extractor: nn.Module, transfer_classes: tuple[int, ...],
                  n_train: int = 2000, seed: int = 0) -> TransferTask:
    """Rows of ``transfer_classes`` (renumbered 0..k−1): ``n_train`` training rows (seeded), all test rows."""
    lookup = torch.full((data.num_classes,), -1, dtype=torch.long)
    lookup[list(transfer_classes)] = torch.arange(len(transfer_classes))
    tr = torch.nonzero(lookup[data.y_train] >= 0).flatten()
    tr = tr[torch.randperm(len(tr), generator=torch.Generator().manual_seed(seed))[:n_train]].sort().values
    te = torch.nonzero(lookup[data.y_test] >= 0).flatten()
    return TransferTask(extractor.eval(), data.x_train[tr], lookup[data.y_train[tr]], data.x_test[te],
                        lookup[data.y_test[te]], tuple(data.classes[c] for c in transfer_classes))


def features(extractor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The frozen features of ``x`` (computed where the extractor lives, returned on the CPU in
    float64 for the heads)."""
    with torch.no_grad():
        return extractor.features(x.to(model_device(extractor))).double().cpu()


HEAD_L2 = 1e-4


def fit_head(task: TransferTask) -> Linear:
    """Train the last layer (logistic regression on frozen features) on the clean transfer set."""
    return fit_logreg(features(task.extractor, task.x_train), task.y_train, len(task.classes), l2=HEAD_L2)


def craft_poisons(extractor: nn.Module, targets: torch.Tensor, bases: torch.Tensor, *, steps: int = 500,
                  lr: float = 0.01, beta0: float = 0.25, watermark: float = 0.0, eps: float | None = None,
                  progress: bool = False) -> torch.Tensor:
    """One poison per (target, base) row pair, all crafted at once.

    Args:
        targets, bases: images (P, C, H, W); poison i collides with target i starting from base i.
        steps, lr: forward–backward iterations and the initial step size λ of the forward step. Each
            poison's λ adapts, as in the paper's code: a step that raises that poison's objective is
            rejected and λ halved; an accepted step grows λ by 1.2.
        beta0: the pixel-closeness weight before the (2048 / dim b)² scaling.
        watermark: opacity γ of the target blended into the base (0 = none; the paper: 0.2–0.3).
        eps: if set, an ℓ∞ budget around the base replaces the proximal step (projection).
    """
    check_int("steps", steps, low=1)
    check_float("lr", lr, low=0.0, low_open=True)
    check_float("beta0", beta0, low=0.0)
    gamma = check_float("watermark", watermark, low=0.0, high=1.0, high_open=True)
    if eps is not None:
        check_float("eps", eps, low=0.0, high=1.0, low_open=True)
    dev = model_device(extractor)   # crafted where the extractor lives (a GPU when there is one), returned on the CPU
    targets, bases = targets.to(dev), bases.to(dev)
    base = ((1 - gamma) * bases + gamma * targets).clamp(0, 1)
    beta = 0.0 if eps is not None else beta0 * (2048 / base[0].numel()) ** 2
    with torch.no_grad():
        goal = extractor.features(targets)

    def objective(x: torch.Tensor) -> torch.Tensor:   # per poison
        return ((extractor.features(x) - goal) ** 2).sum(1) + beta * ((x - base) ** 2).flatten(1).sum(1)

    x = base.clone() if eps is None else torch.minimum(torch.maximum(base, bases - eps), bases + eps)
    lam = torch.full((len(x), 1, 1, 1), float(lr), device=dev)
    with torch.no_grad():
        current = objective(x)
    for _ in tqdm(range(steps), desc="feature collision", disable=not progress):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(((extractor.features(x) - goal) ** 2).sum(), x)
        with torch.no_grad():
            x = x.detach()
            step = x - lam * grad                                  # forward: the feature term
            if eps is None:
                step = (step + lam * beta * base) / (1 + lam * beta)   # backward: the pixel term's prox
            else:
                step = torch.minimum(torch.maximum(step, bases - eps), bases + eps)
            step = step.clamp(0, 1)
            value = objective(step)
            better = value <= current
            x = torch.where(better[:, None, None, None], step, x)
            current = torch.where(better, value, current)
            lam = torch.where(better[:, None, None, None], lam * 1.2, lam * 0.5)
    return x.cpu()


def make_setups(task: TransferTask, n: int = 50, seed: int = 0) -> list[dict[str, int]]:
    """Draw ``n`` (target test row, base class) pairs (seeded): targets the clean head classifies
    correctly, base classes different from the target's."""
    rng = np.random.default_rng(seed)
    k = len(task.classes)
    victim = _Victim.of(task)   # the clean head and test features, kept on the task for the attack
    correct = victim.clean_head.logits(victim.ftest).argmax(1) == task.y_test
    out = []
    for t in rng.choice(torch.nonzero(correct).flatten().numpy(), size=n, replace=False):
        tc = int(task.y_test[t])
        bc = int(rng.choice([c for c in range(k) if c != tc]))
        out.append({"target": int(t), "target_class": tc, "base_class": bc})
    return out


PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
TRANSFER_CLASSES = (5, 6, 7, 8, 9)
N_TRANSFER = 500


def course_task(data: ImageData, config: TrainConfig = TrainConfig(epochs=5, batch_size=128, lr=2e-3),
                *, progress: bool = False) -> TransferTask:
    """The course setting: the course MLP trained on Fashion-MNIST classes 0–4 (T-shirt … Coat),
    frozen; its head retrained on 500 images of classes 5–9 (Sandal … Ankle boot)."""
    if data.name != "fashion-mnist" or len(data.y_test) != 10_000:
        raise ValueError(f"the saved setups index the full Fashion-MNIST test split; got {data!r}")
    pre = torch.isin(data.y_train, torch.tensor(PRETRAIN_CLASSES))
    extractor = train_model("mlp", data.x_train[pre], data.y_train[pre], config, progress=progress,
                            desc="feature extractor (classes 0-4)")
    return transfer_task(data, extractor, TRANSFER_CLASSES, n_train=N_TRANSFER)


def load_setups(task: TransferTask | None = None) -> list[dict[str, int]]:
    """The course's fixed list of 50 (target test row, base class) setups, saved with the package
    (made once by ``make_setups(course_task(data), 50, seed=0)``); checked against ``task``."""
    setups = json.loads(resources.files(__package__).joinpath(SETUPS_FILE).read_text())["setups"]
    if task is not None:
        for s in setups:
            if int(task.y_test[s["target"]]) != s["target_class"]:
                raise ValueError(f"saved setup {s} does not match this task's test labels; "
                                 "the setups belong to course_task(load_dataset('fashion-mnist'))")
    return setups


@dataclass
class FrogsResult:
    """Per-setup outcome: did the target flip to the base class, and the poisoned head's accuracy."""

    name: str
    success: np.ndarray
    accuracy: np.ndarray
    clean_accuracy: float
    poisons: torch.Tensor | None = None      # (setups × per_target, C, H, W), setup by setup
    base_rows: torch.Tensor | None = None    # their base images' rows in the transfer training set
    linf: np.ndarray | None = None           # each poison's ℓ∞ distance from its base image
    collision: np.ndarray | None = None      # ‖f(poison) − f(target)‖ / ‖f(base) − f(target)‖ per poison
    baseline: float | None = None            # share of targets the clean victim already puts in the base class

    @property
    def rate(self) -> float:
        return float(self.success.mean())

    @property
    def error_bar(self) -> float:
        """Binomial standard error √(p(1 − p)/n)."""
        p = self.rate
        return float(np.sqrt(p * (1 - p) / len(self.success)))

    @property
    def ca_drop(self) -> float:
        return float(100 * (self.clean_accuracy - self.accuracy.mean()))

    def __str__(self) -> str:
        away = "" if self.linf is None else f", poisons {np.median(self.linf):.2f} from their bases (median ℓ∞)"
        if self.collision is not None:
            away += f", feature distance to the target {np.median(self.collision):.3f} of the base's (median)"
        if self.baseline is not None:
            away += f"; the clean victim already puts {100 * self.baseline:.0f}% of the targets in the base class"
        return (f"{self.name}: success {100 * self.rate:.0f}% ± {100 * self.error_bar:.0f} "
                f"({int(self.success.sum())}/{len(self.success)}), "
                f"clean-accuracy drop {self.ca_drop:+.2f} points{away}")


def check_setups(task: TransferTask, setups: list[dict[str, int]], per_target: int = 1) -> None:
    """Each setup names a test row of ``task`` (``target``) and another class of the transfer task
    (``base_class``) with at least ``per_target`` training images to draw bases from."""
    if not isinstance(setups, (list, tuple)) or len(setups) == 0:
        raise ValueError("setups must be a non-empty list of {'target': test row, 'base_class': class} "
                         f"dicts (see load_setups); got {setups!r:.80}")
    per_target = check_int("per_target", per_target, low=1)
    counts = {int(c): int(n) for c, n in zip(*torch.unique(task.y_train, return_counts=True))}
    for i, s in enumerate(setups):
        try:
            target, base = int(s["target"]), int(s["base_class"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"setups[{i}] must be a dict with integer 'target' and 'base_class'; got {s!r}") from None
        if not 0 <= target < len(task.y_test):
            raise ValueError(f"setups[{i}]['target']={target} is not a test row; allowed: [0, {len(task.y_test) - 1}]")
        if base not in counts:
            raise ValueError(f"setups[{i}]['base_class']={base} is not a class of the transfer task; "
                             f"allowed: {sorted(counts)}")
        if base == int(task.y_test[target]):
            raise ValueError(f"setups[{i}]: the base class {base} is the target's own class; a poison must "
                             "carry another class's label")
        if per_target > counts[base]:
            raise ValueError(f"per_target={per_target} is more than the {counts[base]} training images of base "
                             f"class {base} (setups[{i}])")


def base_rows(task: TransferTask, setups: list[dict[str, int]], per_target: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each setup, ``per_target`` base images of its base class drawn from the transfer training
    set's class (seeded); returns (P*per_target,) target rows and base rows."""
    check_setups(task, setups, per_target)
    rng = np.random.default_rng(seed)
    t_rows, b_rows = [], []
    for s in setups:
        pool = torch.nonzero(task.y_train == s["base_class"]).flatten().numpy()
        for b in rng.choice(pool, size=per_target, replace=False):
            t_rows.append(s["target"])
            b_rows.append(int(b))
    return torch.tensor(t_rows), torch.tensor(b_rows)


def poison_frogs(task: TransferTask, setups: list[dict[str, int]], *, per_target: int = 5, watermark: float = 0.3,
                 eps: float | None = None, beta0: float = 0.25, steps: int = 500, lr: float = 0.01, seed: int = 0,
                 name: str | None = None, progress: bool = True) -> FrogsResult:
    """Craft ``per_target`` poisons per setup (bases from the transfer training set, which they
    replace so the set's size is unchanged), retrain the head per setup, and score it.
    ``beta0`` trades camouflage for collision (see :func:`craft_poisons`)."""
    t_rows, b_rows = base_rows(task, setups, per_target, seed)
    poisons = craft_poisons(task.extractor, task.x_test[t_rows], task.x_train[b_rows], steps=steps, lr=lr,
                            beta0=beta0, watermark=watermark, eps=eps, progress=progress)
    victim = _Victim.of(task)
    success, acc, clean_acc = _score_heads(task, setups, poisons, b_rows, per_target, victim)
    label = name or (f"feature collision, {per_target} poison(s)/target"
                     + (f", watermark {watermark}" if watermark else "")
                     + (f", ℓ∞ ≤ {eps:.3f}" if eps is not None else "") + (f", β0 {beta0:g}" if beta0 != 0.25 else ""))
    linf = (poisons - task.x_train[b_rows]).abs().flatten(1).amax(1).numpy()
    goal = victim.ftest[t_rows]
    collision = ((features(task.extractor, poisons) - goal).norm(dim=1)
                 / (victim.ftrain[b_rows] - goal).norm(dim=1)).numpy()
    return FrogsResult(label, success, acc, clean_acc, poisons, b_rows, linf, collision)


@dataclass(frozen=True)
class _Victim:
    """What every refit of a task's head shares: the clean head and the frozen features."""

    clean_head: Linear
    ftrain: torch.Tensor
    ftest: torch.Tensor

    @classmethod
    def of(cls, task: TransferTask) -> _Victim:
        """Computed once per task (its extractor is frozen) and kept on it."""
        if task._victim is None:
            victim = cls(fit_head(task), features(task.extractor, task.x_train), features(task.extractor, task.x_test))
            object.__setattr__(task, "_victim", victim)
        return task._victim


def poisoned_feature_sets(task: TransferTask, ftrain: torch.Tensor, poisons: torch.Tensor, b_rows: torch.Tensor,
                          per_target: int) -> torch.Tensor:
    """(setups, rows, features): the transfer set's features once per setup, with that setup's
    ``per_target`` poisons in place of their base rows (which keep the base label)."""
    fpoison = features(task.extractor, poisons)
    sets = ftrain.expand(len(poisons) // per_target, -1, -1).clone()
    for i in range(len(sets)):
        sets[i, b_rows[i * per_target:(i + 1) * per_target]] = fpoison[i * per_target:(i + 1) * per_target]
    return sets


def _score_heads(task: TransferTask, setups: list[dict[str, int]], poisons: torch.Tensor, b_rows: torch.Tensor,
                 per_target: int, victim: _Victim) -> tuple[np.ndarray, np.ndarray, float]:
    """Per setup, the head retrained with its poisons - all setups' heads at once
    (:func:`fit_logreg_many`, from the clean head; convex, so the start does not change the
    result): did the target flip to the base class, and the head's test accuracy. Also the clean
    head's accuracy."""
    sets = poisoned_feature_sets(task, victim.ftrain, poisons, b_rows, per_target)
    heads = fit_logreg_many(sets, task.y_train, len(task.classes), l2=HEAD_L2, init=victim.clean_head)
    success = np.array([int(h.logits(victim.ftest[s["target"]][None]).argmax()) == s["base_class"]
                        for h, s in zip(heads, setups)])
    acc = np.array([h.accuracy(victim.ftest, task.y_test) for h in heads])
    return success, acc, victim.clean_head.accuracy(victim.ftest, task.y_test)


def budget_curve(task: TransferTask, setups: list[dict[str, int]], result: FrogsResult,
                 counts: tuple[int, ...] | None = None, *, progress: bool = False) -> dict[int, FrogsResult]:
    """How many poisons a target needs: for each c in ``counts`` (default 1 … per_target), the
    victim sees only the first c of each setup's poisons from ``result`` (one crafting run, so the
    points differ only in the budget); success and clean-accuracy drop per c."""
    per = _poisons_per_target(setups, result)
    counts = tuple(range(1, per + 1)) if counts is None else tuple(counts)
    if not counts:
        raise ValueError("counts is empty")
    out, victim = {}, _Victim.of(task)
    for c in tqdm(counts, desc="poisons per target", disable=not progress):
        check_int("counts", c, low=1, high=per)
        if c == per:
            out[c] = result
            continue
        use = (torch.arange(len(setups))[:, None] * per + torch.arange(c)).flatten()
        success, acc, clean_acc = _score_heads(task, setups, result.poisons[use], result.base_rows[use], c, victim)
        out[c] = FrogsResult(f"{result.name}, {c} of {per} poisons/target", success, acc, clean_acc,
                             result.poisons[use], result.base_rows[use],
                             None if result.linf is None else result.linf[use.numpy()],
                             None if result.collision is None else result.collision[use.numpy()])
    return out


def budget_summary(budget: dict[int, FrogsResult], *, success: float = 0.7, ca_drop: float = 0.5) -> str:
    """One line per budget of :func:`budget_curve`: success ± its standard error and the
    clean-accuracy drop, marked where both targets (success >= ``success``, drop <= ``ca_drop``
    points) hold."""
    _check_budget(budget)
    return "\n".join(f"{c} poison(s)/target: success {100 * r.rate:3.0f}% ± {100 * r.error_bar:.0f}, "
                     f"clean-accuracy drop {r.ca_drop:.2f} points"
                     + ("  <- both targets" if r.rate >= success and r.ca_drop <= ca_drop else "")
                     for c, r in budget.items())


def plot_budget(budget: dict[int, FrogsResult], *, success: float = 0.7, ca_drop: float = 0.5):
    """Success (with error bars) and the clean-accuracy drop against the poisons per target, on two
    y axes, the two targets dotted. Returns the figure."""
    import matplotlib.pyplot as plt

    _check_budget(budget)
    counts, runs = list(budget), list(budget.values())
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.errorbar(counts, [100 * r.rate for r in runs], yerr=[100 * r.error_bar for r in runs], marker="o", capsize=3,
                label="success (%)")
    ax2 = ax.twinx()
    ax2.plot(counts, [r.ca_drop for r in runs], "s--", color="tab:red", label="clean-accuracy drop")
    ax.set(xlabel="poisons per target", ylabel="success (%)", xticks=counts)
    ax2.set_ylabel("clean-accuracy drop (points)", color="tab:red")
    ax.axhline(100 * success, color="gray", ls=":")
    ax2.axhline(ca_drop, color="tab:red", ls=":", lw=0.8)
    ax.set_title("the attacker's budget: success vs collateral damage")
    fig.tight_layout()
    return fig


def _check_budget(budget) -> None:
    if not isinstance(budget, dict) or not budget or not all(isinstance(r, FrogsResult) for r in budget.values()):
        raise TypeError("budget must be budget_curve's non-empty dict of poisons per target -> FrogsResult")


def _poisons_per_target(setups: list[dict[str, int]], result: FrogsResult) -> int:
    if not isinstance(result, FrogsResult) or result.poisons is None or result.base_rows is None:
        raise TypeError("result must be a FrogsResult from poison_frogs (with its poisons)")
    if not setups or len(result.poisons) % len(setups) or len(result.success) != len(setups):
        raise ValueError(f"result has {len(result.success)} setups and {len(result.poisons)} poisons; "
                         f"setups has {len(setups)}: pass the setups the result was made on")
    return len(result.poisons) // len(setups)


SCRATCH_CONFIG = TrainConfig(epochs=20, batch_size=64, lr=1e-3)


def from_scratch(task: TransferTask, setups: list[dict[str, int]], result: FrogsResult, *,
                 config: TrainConfig = SCRATCH_CONFIG, progress: bool = False) -> FrogsResult:
    """The same poisons against a victim that trains the whole course MLP from scratch on the
    transfer set (one model per setup, its poisons in place of their bases, the same seed for every
    model, so only the poisons differ): the poisons collide in the frozen extractor's features,
    which this victim never uses. ``baseline`` is the share of targets the clean from-scratch model
    already puts in the base class - the rate to compare ``success`` with."""
    per = _poisons_per_target(setups, result)
    k = len(task.classes)

    def fit(x: torch.Tensor) -> torch.Tensor:
        model = train_model("mlp", x, task.y_train, config, num_classes=k, cache=False, progress=False)
        return predict(model, task.x_test)

    clean = fit(task.x_train)
    success, acc = np.zeros(len(setups), dtype=bool), np.zeros(len(setups))
    for i, s in enumerate(tqdm(setups, desc="victims trained from scratch", disable=not progress)):
        x = task.x_train.clone()
        x[result.base_rows[i * per:(i + 1) * per]] = result.poisons[i * per:(i + 1) * per]
        pred = fit(x)
        success[i] = int(pred[s["target"]]) == s["base_class"]
        acc[i] = float((pred == task.y_test).float().mean())
    baseline = float(np.mean([int(clean[s["target"]]) == s["base_class"] for s in setups]))
    return FrogsResult(f"{result.name}, victim trained from scratch", success, acc,
                       float((clean == task.y_test).float().mean()), result.poisons, result.base_rows,
                       result.linf, result.collision, baseline)
