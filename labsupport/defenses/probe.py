"""An activation probe (the course's toy detector): a second, small model - logistic regression
- trained on the poisoned model's hidden activations to tell triggered inputs from clean ones.

It needs examples of triggered inputs, so it models a defender who caught some (or an auditor
with a suspected trigger); the interesting question is whether it also catches a trigger it
never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..experiments import Table
from .common import Detection, activations, check_open_fraction


@dataclass
class ActivationProbe:
    """Logistic regression on standardized activations at ``layer``."""

    layer: str = "penultimate"
    fpr: float = 0.05
    threshold: float = 0.5
    pipeline: object = field(default=None, repr=False)

    def fit(self, model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor, *, seed: int = 0) -> ActivationProbe:
        """Train on the activations of ``clean`` (label 0) and ``triggered`` (label 1) inputs; the
        threshold is set so that ``fpr`` of the clean training inputs are flagged."""
        check_open_fraction("fpr", self.fpr)
        a = torch.cat([activations(model, clean, self.layer), activations(model, triggered, self.layer)]).numpy()
        t = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
        self.pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, random_state=seed))
        self.pipeline.fit(a, t)
        clean_scores = self.pipeline.predict_proba(a[: len(clean)])[:, 1]
        self.threshold = float(np.quantile(clean_scores, 1 - self.fpr))
        return self

    def scores(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.pipeline is None:
            raise RuntimeError("the probe is not trained yet; call fit(model, clean, triggered) first")
        return torch.from_numpy(self.pipeline.predict_proba(activations(model, x, self.layer).numpy())[:, 1])

    def detect(self, model: nn.Module, x: torch.Tensor) -> Detection:
        s = self.scores(model, x)
        return Detection(f"activation probe ({self.layer})", s, s > self.threshold, {"threshold": self.threshold})


def cross_trigger(model: nn.Module, x_fit: torch.Tensor, x_test: torch.Tensor, triggers: dict[str, Callable],
                  *, layer: str = "penultimate", fpr: float = 0.05, seed: int = 0) -> Table:
    """Train one probe per trigger (on ``x_fit`` clean vs triggered) and test every probe on every
    trigger (``x_test`` clean vs triggered): does a probe trained on one trigger catch another?

    The table's rows are the training triggers, its columns the test triggers; each cell holds
    AUROC and recall at the probe's threshold (``fpr`` of the clean training inputs flagged).
    ``data`` keeps one dict per (train, test) pair.
    """
    if not triggers:
        raise ValueError("triggers: give at least one {name: trigger} entry")
    if len(x_fit) < 2 or len(x_test) < 2:
        raise ValueError(f"x_fit and x_test need at least 2 images each; got {len(x_fit)} and {len(x_test)}")
    truth = torch.cat([torch.zeros(len(x_test), dtype=torch.bool), torch.ones(len(x_test), dtype=torch.bool)])
    names = list(triggers)
    rows, data = [["probe trained on ↓ / tested on →", *names]], []
    for train_name in names:
        probe = ActivationProbe(layer, fpr).fit(model, x_fit, triggers[train_name](x_fit), seed=seed)
        row = [train_name]
        for test_name in names:
            out = probe.detect(model, torch.cat([x_test, triggers[test_name](x_test)])).evaluate(truth)
            data.append({"train": train_name, "test": test_name, "auroc": out["auroc"], "recall": out["recall"],
                         "fpr": out["fpr"]})
            row.append(f"AUROC {out['auroc']:.3f}, recall {100 * out['recall']:.0f} %")
        rows.append(row)
    return Table(rows, data)
