"""Label flipping: the attacker changes labels only, never features.

Three ways to pick the rows (all return the flipped set with its ground-truth mask):

* ``random`` — uniformly chosen rows get a uniformly chosen wrong label;
* ``targeted`` — rows of class ``source`` are relabelled ``target`` (a → b);
* ``boundary`` — the rows a clean model is *least* sure about get the class it ranks second: the
  flips agree with the model's own confusion, so they move the boundary instead of being ignored as
  noise (the "nearest the boundary" heuristic of the label-flip literature);
* ``confident`` — the rows a clean model is *most* sure about get its runner-up class: each flip is a
  loud outlier (highest loss), which convex models feel and deep nets memorise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .._validate import check_choice, check_class, check_int, check_labels
from ..data import ImageData
from ..experiments import text_table
from ..metrics import clean_accuracy
from ..training import TrainConfig, predict_proba, train_model
from .common import Poisoned, poison_count

FLIP_MODES = ("random", "targeted", "boundary", "confident")


def flip_labels(y: torch.Tensor, rate: float, *, mode: str = "random", num_classes: int = 10,
                source: int | None = None, target: int | None = None, probs: torch.Tensor | None = None,
                seed: int = 0) -> Poisoned:
    """Flip ``round(rate * N)`` labels of ``y``.

    Args:
        y: int64 labels (N,).
        rate: fraction of *all* rows flipped, in [0, 1].
        mode: one of :data:`FLIP_MODES`.
        source, target: the classes of ``targeted`` mode (a → b).
        probs: (N, num_classes) class probabilities of a clean model (``boundary``/``confident``).
        seed: seeds the random choice.

    Returns:
        :class:`Poisoned` whose ``x`` is ``None`` (features are untouched), ``y`` the new labels.
    """
    check_choice("mode", mode, FLIP_MODES)
    check_int("num_classes", num_classes, low=2)
    y = check_labels("y", y, num_classes=num_classes).long()
    n = len(y)
    k = poison_count("rate", rate, n)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    new = y.clone()
    if mode == "targeted":
        if source is None or target is None:
            raise ValueError("mode='targeted' needs source=a and target=b (flip class a to b)")
        check_class("source", source, num_classes)
        check_class("target", target, num_classes)
        if source == target:
            raise ValueError(f"source and target must differ; both are {source}")
        pool = torch.nonzero(y == source).flatten()
        if k > len(pool):
            raise ValueError(f"rate={rate} asks for {k} flips but class {source} has only {len(pool)} rows; "
                             f"allowed: rate <= {len(pool) / n:.4f}")
        rows = pool[torch.randperm(len(pool), generator=gen)[:k]]
        new[rows] = target
    elif mode == "random":
        rows = torch.randperm(n, generator=gen)[:k]
        shift = torch.randint(1, num_classes, (k,), generator=gen)
        new[rows] = (y[rows] + shift) % num_classes
    else:
        if probs is None:
            raise ValueError(f"mode={mode!r} needs probs=, a clean model's class probabilities (N, {num_classes})")
        if not isinstance(probs, torch.Tensor) or probs.shape != (n, num_classes):
            raise ValueError(f"probs must be a tensor of shape ({n}, {num_classes}); got "
                             f"{getattr(probs, 'shape', type(probs).__name__)}")
        masked = probs.float().clone()
        p_true = masked.gather(1, y[:, None]).squeeze(1)
        masked.scatter_(1, y[:, None], -1.0)
        p_other, runner_up = masked.max(1)
        margin = p_true - p_other
        order = torch.argsort(margin, descending=(mode == "confident"), stable=True)
        rows = order[:k]
        new[rows] = runner_up[rows]
    mask = new != y
    desc = f"{mode} flip {source}->{target}" if mode == "targeted" else f"{mode} flip"
    return Poisoned(None, new, mask, f"{desc} {rate:.0%}", {"rows": rows.sort().values})


@dataclass
class FlipCurve:
    """Test accuracy (%) of each model after flipping, per mode, rate and seed.

    ``acc[model][mode]`` is an array (len(rates), len(seeds)); ``clean[model]`` (len(seeds),).
    """

    rates: tuple[float, ...]
    seeds: tuple[int, ...]
    acc: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    clean: dict[str, np.ndarray] = field(default_factory=dict)

    def mean_std(self, model: str, mode: str) -> tuple[np.ndarray, np.ndarray]:
        a = self.acc[model][mode]
        return a.mean(1), a.std(1)

    def drop(self, model: str, mode: str, rate: float) -> float:
        """Mean accuracy drop in points at ``rate`` (vs the clean models of the same seeds)."""
        i = self.rates.index(rate)
        return float((self.clean[model] - self.acc[model][mode][i]).mean())

    def table(self, paper: dict[str, str] | None = None, paper_title: str = "paper") -> str:
        """Mean test accuracy (%) over the seeds: one row per model, clean and then each mode at
        each rate; ``paper`` adds a column of published figures (model -> text)."""
        modes = list(next(iter(self.acc.values()))) if self.acc else []
        head = ["model", "clean"] + [f"{mode} {100 * r:g} %" for mode in modes for r in self.rates]
        rows = [head + ([paper_title] if paper is not None else [])]
        for m in self.acc:
            accs = [f"{a:.1f}" for mode in modes for a in self.mean_std(m, mode)[0]]
            rows.append([m, f"{self.clean[m].mean():.1f}", *accs] + ([paper.get(m, "")] if paper is not None else []))
        return text_table(rows)


def flip_curve(data: ImageData, *, models: Sequence[str] = ("logreg", "mlp", "cnn"),
               modes: Sequence[str] = ("random", "targeted", "boundary"), rates: Sequence[float] = (0.01, 0.03, 0.1),
               seeds: Sequence[int] = (0, 1), configs: dict[str, TrainConfig] | None = None,
               source: int = 0, target: int = 6, progress: bool = True) -> FlipCurve:
    """Train every model on every flipped set; clean models first (rate 0, same seeds).

    ``targeted`` flips class ``source`` to ``target`` (rate of the whole set, capped by the class);
    ``boundary`` uses the clean model of the same seed to pick rows.
    """
    for m in modes:
        check_choice("modes", m, FLIP_MODES)
    configs = configs or {}
    curve = FlipCurve(tuple(rates), tuple(seeds))
    steps = len(models) * len(seeds) * (1 + len(modes) * len(rates))
    bar = tqdm(total=steps, desc="label flips", disable=not progress)
    for name in models:
        cfg = configs.get(name, TrainConfig(epochs=5, batch_size=128, lr=2e-3))
        curve.acc[name] = {m: np.zeros((len(rates), len(seeds))) for m in modes}
        clean = np.zeros(len(seeds))
        for j, seed in enumerate(seeds):
            c = cfg.replace(seed=seed)
            base = train_model(name, data.x_train, data.y_train, c, num_classes=data.num_classes, progress=False)
            clean[j] = 100 * clean_accuracy(base, data.x_test, data.y_test)
            bar.update()
            probs = predict_proba(base, data.x_train) if ("boundary" in modes or "confident" in modes) else None
            for mode in modes:
                for i, rate in enumerate(rates):
                    flipped = flip_labels(data.y_train, rate, mode=mode, num_classes=data.num_classes,
                                          source=source, target=target, probs=probs, seed=seed)
                    model = train_model(name, data.x_train, flipped.y, c, num_classes=data.num_classes, progress=False)
                    curve.acc[name][mode][i, j] = 100 * clean_accuracy(model, data.x_test, data.y_test)
                    bar.update()
        curve.clean[name] = clean
    bar.close()
    return curve
