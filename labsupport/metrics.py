"""Course metrics: clean accuracy (CA), attack success rate (ASR) and detector scores.

ASR follows the course convention: the fraction of triggered test inputs whose true class is not
the target that the model classifies as the target. Always report it next to the same rate for
the unpoisoned model (a weak model or a strong trigger can "succeed" without any poison).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ._validate import apply_trigger, check_images, check_labels, check_mask
from .training import predict, predict_proba

TargetSpec = int | Callable[[torch.Tensor], torch.Tensor]


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of (x, y) classified correctly."""
    check_images("x", x)
    check_labels("y", y, n=len(x))
    if len(y) == 0:
        raise ValueError("x and y are empty; need at least one example")
    _check_model_classes("y", y, model, x)
    return float((predict(model, x) == y.cpu()).float().mean())


def _check_model_classes(name: str, labels: torch.Tensor, model: nn.Module, x: torch.Tensor) -> None:
    """``labels`` must name classes of ``model`` (one forward pass of one image reads how many)."""
    k = predict_proba(model, x[:1]).shape[1]
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ValueError(f"{name} must name classes of the model, in [0, {k - 1}]; got labels in "
                         f"[{int(labels.min())}, {int(labels.max())}]")


def target_labels(target: TargetSpec, y: torch.Tensor) -> torch.Tensor:
    """The attacker's label for each row: a constant class or ``target(y)`` (e.g. all-to-all)."""
    if callable(target):
        out = target(y)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            raise ValueError("target(y) must return a label tensor of the same shape as y")
        return out.long()
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be a class index or a function y -> target labels, got {target!r}")
    return torch.full_like(y, target)


def attack_success_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        trigger: Callable[[torch.Tensor], torch.Tensor], target: TargetSpec,
                        *, only_correct: bool = False) -> float:
    """ASR: among test inputs whose true label differs from the attacker's label, the fraction
    classified as the attacker's label once the trigger is applied.

    Args:
        model: the model under attack.
        x, y: clean test images and labels.
        trigger: callable applied to the images.
        target: target class, or a function mapping true labels to target labels (all-to-all).
        only_correct: keep only inputs the model classifies correctly without the trigger, so the
            rate measures the trigger and not the model's mistakes.
    """
    check_images("x", x)
    check_labels("y", y, n=len(x))
    goal = target_labels(target, y)
    if len(y):
        _check_model_classes("target", goal, model, x)
    keep = goal != y
    if only_correct:
        keep &= predict(model, x) == y
    if not bool(keep.any()):
        raise ValueError("no test input is eligible for ASR (all already have the target label)")
    pred = predict(model, apply_trigger("trigger", trigger, x[keep]))
    return float((pred == goal[keep]).float().mean())


def detection_scores(flags: torch.Tensor, truth: torch.Tensor,
                     scores: torch.Tensor | None = None) -> dict[str, float]:
    """Precision, recall, F1 (and AUROC when per-row ``scores`` are given) of a poison detector.

    Args:
        flags: boolean mask, True = flagged as poison.
        truth: boolean ground-truth poison mask.
        scores: optional per-row suspicion scores (higher = more suspicious).
    """
    flags, truth = check_mask("flags", flags), check_mask("truth", truth)
    if flags.shape != truth.shape:
        raise ValueError(f"flags {tuple(flags.shape)} and truth {tuple(truth.shape)} must have the same shape")
    tp = int((flags & truth).sum())
    fp = int((flags & ~truth).sum())
    fn = int((~flags & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"precision": precision, "recall": recall, "f1": f1}
    if scores is not None:
        out["auroc"] = auroc(scores, truth)
    return out


def auroc(scores: torch.Tensor, truth: torch.Tensor) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) statistic, ties averaged."""
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    truth = check_mask("truth", truth)
    if scores.shape != truth.shape:
        raise ValueError(f"scores ({len(scores)} rows) and truth ({len(truth)} rows) must have one entry per row")
    if bool(scores.isnan().any()):
        raise ValueError(f"scores contain {int(scores.isnan().sum())} NaN value(s); a detector's scores must be "
                         "numbers (NaN would sort arbitrarily and give a meaningless AUROC)")
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative row in truth")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average the ranks of tied scores
    uniq, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks[order])
    ranks[order] = (sums / counts)[inverse]
    u = float(ranks[truth].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
