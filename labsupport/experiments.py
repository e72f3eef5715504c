"""Profiles (``full`` / ``quick`` / ``gpu``), lab data loading and attack reports.

A profile fixes every size and training setting a lab uses, so the parameters cell at the top of
a notebook is the only place to change them.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ._validate import check_choice, check_int
from .backdoor import PoisonedSet, badnets
from .data import ImageData, load_dataset
from .metrics import TargetSpec, attack_success_rate, clean_accuracy
from .training import TrainConfig, train_model


@dataclass(frozen=True)
class Profile:
    """Sizes and training settings for one run of a lab.

    Attributes:
        name: ``"full"`` (paper-like sizes, the default), ``"quick"`` (fast checks) or ``"gpu"``.
        n_train, n_test: stratified subset sizes (``None`` = the whole split).
        reference: the course reference training setting (AdamW 1e-3, batch 64, 10 epochs).
        fast: a shorter setting for the many attack variants (same model, larger batches).
        cnn: setting for the small CNN / ResNet18.
        ban: setting for BaN (generator and classifier trained jointly need a little longer).
        sweep: setting for poison-count sweeps (one model per count).
        sweep_counts: poison counts of the sweep.
        image_model: the convolutional model of the profile (``"cnn"``, or ``"resnet18"`` on GPU).
    """

    name: str
    n_train: int | None
    n_test: int | None
    reference: TrainConfig
    fast: TrainConfig
    cnn: TrainConfig
    ban: TrainConfig
    sweep: TrainConfig
    sweep_counts: tuple[int, ...]
    image_model: str = "cnn"


PROFILES: dict[str, Profile] = {
    "full": Profile("full", None, None, TrainConfig(),
                    TrainConfig(epochs=5, batch_size=128, lr=2e-3),
                    TrainConfig(epochs=2, batch_size=128, lr=2e-3),
                    TrainConfig(epochs=2, batch_size=128, lr=3e-3),
                    TrainConfig(epochs=3, batch_size=128, lr=2e-3),
                    (10, 30, 100, 300, 1000)),
    "quick": Profile("quick", 10_000, 2_000, TrainConfig(epochs=5),
                     TrainConfig(epochs=5, batch_size=64, lr=2e-3),
                     TrainConfig(epochs=3, batch_size=128, lr=3e-3),
                     TrainConfig(epochs=10, batch_size=128, lr=2e-3),
                     TrainConfig(epochs=4, batch_size=64, lr=2e-3),
                     (5, 20, 50, 100, 300)),
    "gpu": Profile("gpu", None, None, TrainConfig(),
                   TrainConfig(epochs=10, batch_size=128, lr=1e-3),
                   TrainConfig(epochs=30, batch_size=128, lr=1e-3, augment="crop-flip"),
                   TrainConfig(epochs=30, batch_size=128, lr=1e-3, augment="crop-flip"),
                   TrainConfig(epochs=5, batch_size=128, lr=2e-3),
                   (10, 30, 100, 300, 1000, 3000), image_model="resnet18"),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (``"full"``, ``"quick"`` or ``"gpu"``)."""
    return PROFILES[check_choice("profile", name, PROFILES)]


def load_lab_data(dataset: str, profile: Profile | str, seed: int = 0) -> ImageData:
    """Load ``dataset`` and cut it to the profile's sizes (stratified, seeded)."""
    prof = get_profile(profile) if isinstance(profile, str) else profile
    data = load_dataset(dataset)
    if prof.n_train is None and prof.n_test is None:
        return data
    return data.subset(min(prof.n_train or len(data.y_train), len(data.y_train)),
                       min(prof.n_test or len(data.y_test), len(data.y_test)), seed=seed)


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

@dataclass
class AttackReport:
    """One row of a results table: clean accuracy (CA) and attack success rate (ASR) of a
    poisoned model next to the same numbers for the clean baseline."""

    attack: str
    model: str
    poisons: int
    rate: float
    ca_baseline: float
    ca: float
    asr: float
    asr_baseline: float
    paper: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ca_drop(self) -> float:
        """Clean-accuracy drop in percentage points (positive = worse than the baseline)."""
        return 100 * (self.ca_baseline - self.ca)

    def row(self) -> list[str]:
        return [self.attack, self.model, str(self.poisons), f"{100 * self.rate:.2f}%",
                f"{100 * self.ca_baseline:.2f}", f"{100 * self.ca:.2f}", f"{self.ca_drop:+.2f}",
                f"{100 * self.asr_baseline:.2f}", f"{100 * self.asr:.2f}", self.paper]

    def __str__(self) -> str:
        return (f"{self.attack} [{self.model}, {self.poisons} poisons = {100 * self.rate:.2f}%]: "
                f"CA {100 * self.ca:.2f}% (baseline {100 * self.ca_baseline:.2f}%, drop "
                f"{self.ca_drop:+.2f} pts), ASR {100 * self.asr:.2f}% (clean model "
                f"{100 * self.asr_baseline:.2f}%)" + (f" | paper: {self.paper}" if self.paper else ""))


HEADER = ["attack", "model", "poisons", "rate", "CA base", "CA", "drop (pts)", "ASR base", "ASR",
          "paper"]


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings (the first is the header) as aligned plain-text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def html_table(rows: Sequence[Sequence[str]]) -> str:
    """Rows of strings (the first is the header) as an HTML table, escaped."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class TableView:
    """Shows a table as text (``print``, ``repr``) or HTML (notebooks) from ``rows()``: rows of
    strings, the first the header."""

    def rows(self) -> list[list[str]]:
        raise NotImplementedError

    def __str__(self) -> str:
        return text_table(self.rows())

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return html_table(self.rows())


class Table(TableView):
    """Fixed rows of strings; ``data`` keeps the numbers behind them."""

    def __init__(self, rows: Sequence[Sequence[str]], data: list[dict] | None = None) -> None:
        self._rows = [list(r) for r in rows]
        self.data = data or []

    def rows(self) -> list[list[str]]:
        return self._rows


class ReportTable(TableView):
    """A list of :class:`AttackReport` shown as text (``print``) or HTML (notebooks)."""

    def __init__(self, reports: Sequence[AttackReport]) -> None:
        self.reports = list(reports)

    def rows(self) -> list[list[str]]:
        return [HEADER] + [r.row() for r in self.reports]


def evaluate_backdoor(attack: str, model: nn.Module, baseline: nn.Module, data: ImageData,
                      trigger: Callable[[torch.Tensor], torch.Tensor], target: TargetSpec, *,
                      poisons: int, model_name: str = "mlp", paper: str = "") -> AttackReport:
    """Measure CA and ASR of ``model`` and of the clean ``baseline`` on ``data``'s test split."""
    check_int("poisons", poisons, low=0)
    n = len(data.y_train)
    return AttackReport(
        attack, model_name, poisons, poisons / n,
        ca_baseline=clean_accuracy(baseline, data.x_test, data.y_test),
        ca=clean_accuracy(model, data.x_test, data.y_test),
        asr=attack_success_rate(model, data.x_test, data.y_test, trigger, target),
        asr_baseline=attack_success_rate(baseline, data.x_test, data.y_test, trigger, target),
        paper=paper)


def evaluate_multi_target(attack: str, model: nn.Module, baseline: nn.Module, data: ImageData,
                          poisoned: PoisonedSet, *, model_name: str = "cnn", n_eval: int = 2000,
                          paper: str = "") -> tuple[AttackReport, list[float]]:
    """Report a multi-target backdoor: ASR is the mean over regions of each region trigger's ASR
    for its own target (on the first ``n_eval`` test images: regions x 2 models add up).
    Returns the report and the per-region ASRs of ``model``."""
    if "triggers" not in poisoned.info or "targets" not in poisoned.info:
        raise ValueError("poisoned must come from multi_target() (info needs 'triggers' and 'targets')")
    n_eval = check_int("n_eval", n_eval, low=1)
    x, y = data.x_test[:n_eval], data.y_test[:n_eval]
    pairs = list(zip(poisoned.info["triggers"], poisoned.info["targets"]))
    per_region = [attack_success_rate(model, x, y, t, tgt) for t, tgt in pairs]
    clean_region = [attack_success_rate(baseline, x, y, t, tgt) for t, tgt in pairs]
    report = AttackReport(attack, model_name, poisoned.count, poisoned.rate,
                          ca_baseline=clean_accuracy(baseline, data.x_test, data.y_test),
                          ca=clean_accuracy(model, data.x_test, data.y_test),
                          asr=sum(per_region) / len(pairs), asr_baseline=sum(clean_region) / len(pairs),
                          paper=paper)
    return report, per_region


def train_and_evaluate(attack: str, poisoned: PoisonedSet, data: ImageData, baseline: nn.Module,
                       config: TrainConfig, *, model_name: str = "mlp", paper: str = "",
                       progress: bool = True) -> tuple[nn.Module, AttackReport]:
    """Train ``model_name`` on the poisoned set (cached) and report it against ``baseline``."""
    model = train_model(model_name, poisoned.x, poisoned.y, config, num_classes=data.num_classes,
                        progress=progress, desc=attack)
    report = evaluate_backdoor(attack, model, baseline, data, poisoned.trigger, poisoned.target,
                               poisons=poisoned.count, model_name=model_name, paper=paper)
    return model, report


def count_sweep(data: ImageData, trigger: Callable[[torch.Tensor], torch.Tensor], target: int,
                counts: Sequence[int], config: TrainConfig, *, model_name: str = "mlp", seed: int = 0,
                progress: bool = True) -> list[AttackReport]:
    """The "how many poisons" sweep: one BadNets model per poison count, same trigger, target and
    training ``config``. A clean model trained with the same ``config`` is the baseline of every
    row, so the CA drop reflects the poison and not a shorter training run."""
    if not counts:
        raise ValueError("counts must list at least one poison count")
    for i, c in enumerate(counts):
        check_int(f"counts[{i}]", c, low=0)
    baseline = train_model(model_name, data.x_train, data.y_train, config, num_classes=data.num_classes,
                           progress=False)
    reports = []
    for count in tqdm(list(counts), desc="poison-count sweep", disable=not progress):
        poisoned = badnets(data.x_train, data.y_train, trigger, target, count=count, seed=seed,
                           num_classes=data.num_classes)
        _, rep = train_and_evaluate(f"BadNets x{count}", poisoned, data, baseline, config,
                                    model_name=model_name, progress=False)
        reports.append(rep)
    return reports
