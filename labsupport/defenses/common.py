"""What every detector of Lab 4 shares: the :class:`Detection` it returns (per-row scores and a
flag mask, scored against any attack's ground-truth mask), reading a model's activations at a
named layer, and the argument checks.

One shape for every detector: data (+ model) in, a :class:`Detection` out::

    det = activation_clustering(model, poisoned.x, poisoned.y)
    det.evaluate(poisoned.mask)   # precision, recall, F1, false-positive rate, AUROC
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from .._validate import check_float, check_images, check_int, check_labels, check_mask
from ..metrics import auroc, detection_scores
from ..training import model_device

#: layer names every course model understands (besides its own module names, e.g. ``"hidden.0"``)
SPECIAL_LAYERS = ("input", "penultimate", "logits")


@dataclass
class Detection:
    """A detector's verdict on a set of rows.

    Attributes:
        name: the detector and its main setting, e.g. ``"activation clustering (ica, size)"``.
        scores: float tensor (N,), higher = more suspicious.
        flags: bool tensor (N,), True = flagged as poison / triggered.
        info: detector-specific details (per-class decisions, thresholds, embeddings).
    """

    name: str
    scores: torch.Tensor
    flags: torch.Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = torch.as_tensor(self.scores, dtype=torch.float64).flatten()
        self.flags = check_mask("flags", self.flags)
        if self.scores.shape != self.flags.shape:
            raise ValueError(f"scores {tuple(self.scores.shape)} and flags {tuple(self.flags.shape)} differ")

    @property
    def n_flagged(self) -> int:
        return int(self.flags.sum())

    def evaluate(self, truth: torch.Tensor) -> dict[str, float]:
        """Precision, recall, F1, false-positive rate (clean rows flagged) and AUROC of the scores
        against the boolean ground-truth mask ``truth``."""
        truth = check_mask("truth", truth)
        out = detection_scores(self.flags, truth)
        clean = ~truth
        out["fpr"] = float((self.flags & clean).sum()) / max(int(clean.sum()), 1)
        out["auroc"] = auroc(self.scores, truth) if 0 < int(truth.sum()) < len(truth) else float("nan")
        out["flagged"] = float(self.n_flagged)
        return out

    def __repr__(self) -> str:
        return f"Detection({self.name!r}: {self.n_flagged} of {len(self.flags)} rows flagged)"


def layer_names(model: nn.Module) -> list[str]:
    """The layer names :func:`activations` accepts for ``model``."""
    return [*SPECIAL_LAYERS, *(n for n, _ in model.named_modules() if n)]


@torch.no_grad()
def activations(model: nn.Module, x: torch.Tensor, layer: str = "penultimate", *,
                batch_size: int = 4096) -> torch.Tensor:
    """The activations of ``model`` at ``layer`` for images ``x``, flattened to (N, D), float32 on CPU.

    Args:
        layer: ``"input"`` (the pixels), ``"penultimate"`` (``model.features``: the last hidden
            layer, what Chen et al. and Tran et al. inspect), ``"logits"`` (the output layer, the
            default of a widely used toolkit for a PyTorch ``Sequential``) or any module name of
            ``model`` (``"hidden.0"`` is the MLP's first hidden layer, after its ReLU).
    """
    check_images("x", x)
    names = layer_names(model)
    if layer not in names:
        raise ValueError(f"layer={layer!r} is not a layer of {type(model).__name__}; choose one of {names}")
    if layer == "input":
        return x.flatten(1).float().cpu()
    dev = model_device(model)
    was = model.training
    model.eval()
    out: list[torch.Tensor] = []
    try:
        if layer in ("penultimate", "logits"):
            fn = model.features if layer == "penultimate" else model
            for i in range(0, len(x), batch_size):
                out.append(fn(x[i:i + batch_size].to(dev)).flatten(1).float().cpu())
        else:
            module = dict(model.named_modules())[layer]
            grabbed: list[torch.Tensor] = []
            handle = module.register_forward_hook(lambda _m, _i, o: grabbed.append(o))
            try:
                for i in range(0, len(x), batch_size):
                    model(x[i:i + batch_size].to(dev))
                    h = grabbed.pop()
                    # a Linear inside the MLP is followed by ReLU in forward(); report what the next
                    # layer sees
                    if isinstance(module, nn.Linear) and layer.startswith("hidden."):
                        h = h.relu()
                    out.append(h.flatten(1).float().cpu())
            finally:
                handle.remove()
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def check_open_fraction(name: str, value: float) -> float:
    """A fraction strictly inside (0, 1) (a rate, a quantile, a false-rejection rate)."""
    return check_float(name, value, low=0.0, high=1.0, low_open=True, high_open=True)


def check_data(x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None) -> None:
    """Images and labels of the same length."""
    check_images("x", x)
    check_labels("y", y, n=len(x), num_classes=num_classes)


def check_classes(y: torch.Tensor, classes: list[int] | None, min_rows: int) -> list[int]:
    """The classes a per-class detector analyses: ``classes`` (default: every label in ``y``), each
    with at least ``min_rows`` rows."""
    present = sorted(int(c) for c in torch.unique(y))
    if classes is None:
        classes = present
    classes = [check_int(f"classes[{i}]", c, low=0) for i, c in enumerate(classes)]
    if not classes:
        raise ValueError("classes is empty; name at least one class to analyse")
    counts = torch.bincount(y, minlength=max(classes) + 1)
    short = [c for c in classes if int(counts[c]) < min_rows]
    if short:
        raise ValueError(f"classes {short} have fewer than {min_rows} rows in y (counts "
                         f"{[int(counts[c]) for c in short]}); the detector needs at least {min_rows} "
                         f"per class. Classes present: {present}")
    return classes


def scale(a: np.ndarray) -> np.ndarray:
    """Each column divided by its standard deviation (constant columns left as they are), not centred."""
    sd = a.std(0)
    return a / np.where(sd > 1e-6, sd, 1.0)


def standardize(a: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at 0)."""
    return scale(a - a.mean(0))


def one_thread() -> threadpool_limits:
    """A context in which numpy, scipy and scikit-learn use one thread. The per-class problems of
    the detectors are small (a few thousand rows, at most 256 columns): on 2 cores their BLAS and
    OpenMP threads only spin against PyTorch's (activation clustering of the 20k-image subset
    2.1 s -> 0.75 s, SPECTRE 1.2 s -> 0.8 s)."""
    return threadpool_limits(1)
