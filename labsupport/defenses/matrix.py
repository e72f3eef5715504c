"""The defense x attack matrix of Lab 4: every detector and mitigation against Lab 2's attacks at
1 % and 10 % poison, with recall, precision, false-positive rate, CA and ASR after, and wall time.

Rows are (defense, attack, rate). What "after" means depends on the defense:

The default attacks are those the course MLP learns (:data:`MLP_ATTACKS`).

* activation clustering, spectral signatures, SPECTRE - drop the flagged training rows and retrain
  (the spectral defenses remove 1.5 eps of every class, eps = the target class's poisoned share,
  which a real defender must guess; SPECTRE then runs a second pass with eps = 0.1 on what the
  first kept);
* STRIP, SCALE-UP, activation probe - input filters at test time: a rejected input counts as a
  failed attack and, for clean inputs, as an error;
* Neural Cleanse - unlearn the flagged labels (nothing flagged: the model is unchanged);
  detection is per label (recall 1 = the target was flagged);
* fine-pruning - prune 90 % of the last hidden layer (CNN: of the last conv layer's channels),
  fine-tune (:data:`pruning.FINE_TUNE`, 20 epochs); it detects nothing.

Random-location and BaN run on the course CNN (:data:`CNN_ATTACKS`), the rest on the MLP.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import backdoor as bd
from .. import triggers as tr
from .._validate import check_choice, check_float, check_rate
from ..data import ImageData
from ..experiments import Table, TableView
from ..io import IntegrityError, atomic_write_bytes
from ..metrics import attack_success_rate, auroc, clean_accuracy
from ..paths import model_cache
from ..training import TrainConfig, predict, train_model
from .clustering import activation_clustering
from .neural_cleanse import reverse_engineer, unlearn
from .probe import ActivationProbe
from .pruning import fine_prune
from .scale_up import ScaleUp
from .spectral import spectral_signatures, spectre
from .strip import Strip

ATTACKS = ("BadNets", "blended", "random location", "clean-label", "composite", "BaN")
#: the attacks the course MLP learns (random-location and BaN triggers need a convolutional model:
#: on the MLP their ASR stays at 3-27 %, so there is no backdoor to detect)
MLP_ATTACKS = ("BadNets", "blended", "clean-label", "composite")
#: the attacks whose models (and retrained models) are the course CNN
CNN_ATTACKS = ("random location", "BaN")


def model_for(attack: str) -> str:
    """The victim architecture of ``attack`` in the matrix: "cnn" for a trigger that moves, else "mlp"."""
    return "cnn" if check_choice("attack", attack, ATTACKS) in CNN_ATTACKS else "mlp"


def _spectral_layer(model_name: str) -> str:
    return "hidden.0" if model_name == "mlp" else "penultimate"


MATRIX_FORMAT = "labsupport-defense-matrix/1"
DEFENSES = ("activation clustering", "spectral signatures", "SPECTRE", "STRIP", "SCALE-UP", "activation probe",
            "Neural Cleanse", "fine-pruning")
METRICS = ("recall", "precision", "fpr", "ca_after", "asr_after", "seconds")


def make_attack(name: str, data: ImageData, rate: float, target: int, config: TrainConfig, *, seed: int = 0,
                surrogate: torch.nn.Module | None = None, progress: bool = False):
    """The poisoned training set of attack ``name`` at ``rate`` and the model (:func:`model_for`)
    trained on it."""
    arch = model_for(name)
    x, y, c = data.x_train, data.y_train, data.image_shape[0]
    if name == "BaN":
        model, poisoned = bd.ban(x, y, target, rate=rate, model_name=arch, config=config, seed=seed,
                                 progress=progress)
        return poisoned, model.eval()
    if name == "BadNets":
        poisoned = bd.badnets(x, y, tr.Patch(tr.checkerboard(4, c)), target, rate=rate, seed=seed)
    elif name == "blended":
        poisoned = bd.badnets(x, y, tr.Blend(tr.noise_key(data.image_shape, seed=seed), alpha=0.2), target,
                              rate=rate, seed=seed)
    elif name == "random location":
        poisoned = bd.badnets(x, y, tr.RandomPatch(tr.checkerboard(4, c), seed=seed), target, rate=rate, seed=seed)
    elif name == "clean-label":
        corners = tr.Compose(tuple(tr.Patch(tr.checkerboard(3, c), k)
                                   for k in ("top-left", "top-right", "bottom-left", "bottom-right")))
        poisoned = bd.clean_label(x, y, corners, target, rate=rate, seed=seed, surrogate=surrogate, eps=0.2)
    else:
        poisoned = bd.composite(x, y, tr.Patch(tr.white_square(3, c), "top-left"),
                                tr.Patch(tr.white_square(3, c), "bottom-right"), target, rate=rate, seed=seed)
    model = train_model(arch, poisoned.x, poisoned.y, config, progress=progress, desc=name)
    return poisoned, model


@dataclass(repr=False)
class DefenseMatrix(TableView):
    """Results: ``cells[(defense, attack, rate)]`` -> metrics; ``before[(attack, rate)]`` -> (CA, ASR)."""

    cells: dict = field(default_factory=dict)
    before: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict, repr=False)

    @property
    def defenses(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.cells))

    @property
    def columns(self) -> list[tuple[str, float]]:
        return list(dict.fromkeys(k[1:] for k in self.cells))

    def get(self, defense: str, attack: str, rate: float, metric: str) -> float:
        return self.cells[(defense, attack, rate)][check_choice("metric", metric, METRICS)]

    def rows(self) -> list[list[str]]:
        def pct(v: float, scale: float = 100) -> str:
            return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{scale * v:.1f}"
        out = [["defense", "attack", "rate", "recall", "precision", "FPR", "CA before", "CA after",
                "ASR before", "ASR after", "time (s)"]]
        for (d, a, r), m in self.cells.items():
            ca, asr = self.before[(a, r)]
            out.append([d, a, f"{100 * r:g}%", pct(m["recall"]), pct(m["precision"]), pct(m["fpr"]), pct(ca),
                        pct(m["ca_after"]), pct(asr), pct(m["asr_after"]), pct(m["seconds"], 1)])
        return out

    def add(self, defense: str, attack: str, rate: float, *, before: tuple[float, float], **metrics) -> None:
        """One cell from outside :func:`run_matrix` (e.g. Lab 3's defenses on its text trigger):
        ``before`` = (CA, ASR) of the attacked model; metrics not given are unknown (NaN).
        Rates and metrics other than ``seconds`` are fractions in [0, 1]."""
        if not isinstance(defense, str) or not defense or not isinstance(attack, str) or not attack:
            raise ValueError("defense and attack must be non-empty strings")
        check_float("rate", rate, low=0.0, high=1.0, low_open=True)
        unknown = sorted(set(metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; allowed: {METRICS}")
        row = {k: float("nan") for k in METRICS}
        for name, v in {**metrics, "before CA": before[0], "before ASR": before[1]}.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise TypeError(f"{name} must be a number, got {type(v).__name__}")
            if not math.isnan(v) and not (0 <= v <= (math.inf if name == "seconds" else 1)):
                raise ValueError(f"{name} must be NaN or in [0, {'inf' if name == 'seconds' else 1}], got {v}")
        row.update({k: float(v) for k, v in metrics.items()})
        self.cells[(defense, attack, float(rate))] = row
        self.before[(attack, float(rate))] = (float(before[0]), float(before[1]))

    def merge(self, other: DefenseMatrix) -> DefenseMatrix:
        """A matrix with this one's cells and then ``other``'s (models: this one's)."""
        if not isinstance(other, DefenseMatrix):
            raise TypeError(f"other must be a DefenseMatrix, got {type(other).__name__}")
        return DefenseMatrix({**self.cells, **other.cells}, {**self.before, **other.before}, dict(self.models))

    def save(self, path: str | Path) -> Path:
        """Write the cells and before-values (not the models) as JSON, atomically."""
        def num(v):
            return None if isinstance(v, float) and math.isnan(v) else v
        doc = {"format": MATRIX_FORMAT,
               "cells": [[d, a, r, {k: num(m[k]) for k in METRICS}] for (d, a, r), m in self.cells.items()],
               "before": [[a, r, ca, asr] for (a, r), (ca, asr) in self.before.items()]}
        return atomic_write_bytes(path, json.dumps(doc, indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> DefenseMatrix:
        """Read a matrix written by :meth:`save`; a file that is not one raises :class:`IntegrityError`."""
        path = Path(path)
        try:
            doc = json.loads(path.read_bytes())
            if doc.get("format") != MATRIX_FORMAT:
                raise ValueError(f"format {doc.get('format')!r}, expected {MATRIX_FORMAT!r}")
            out = cls()
            before = {(a, float(r)): (ca, asr) for a, r, ca, asr in doc["before"]}
            for d, a, r, m in doc["cells"]:
                out.add(d, a, r, before=before[(a, float(r))],
                        **{k: float("nan") if m[k] is None else m[k] for k in METRICS})
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise IntegrityError(f"{path} is not a saved defense matrix ({exc}); delete it and run again "
                                 "what wrote it") from exc
        return out


SPECTRE_SECOND_PASS = 0.1  # SPECTRE's second pass: at most 1 in 10 of what the first pass kept is poison


def _target_share(poisoned: bd.PoisonedSet, target: int) -> float:
    """The spectral defenses' eps: the poisoned share of the target class (an oracle's guess),
    kept in [0.01, 0.6] so that 1.5 eps stays below the whole class."""
    return min(max(float(poisoned.mask[poisoned.y == target].float().mean()), 0.01), 0.6)


def _filtered_rates(model, flags_clean, flags_trig, x_eval, y_eval, x_trig, target) -> tuple[float, float]:
    """CA and ASR when flagged inputs are rejected (a rejected clean input counts as an error)."""
    ok = (predict(model, x_eval) == y_eval) & ~flags_clean
    hit = (predict(model, x_trig) == target) & ~flags_trig
    return float(ok.float().mean()), float(hit.float().mean())


def run_matrix(data: ImageData, *, attacks: Sequence[str] = MLP_ATTACKS, rates: Sequence[float] = (0.01, 0.1),
               defenses: Sequence[str] = DEFENSES, target: int = 9, config: TrainConfig = TrainConfig(
                   epochs=5, batch_size=128, lr=2e-3), n_defender: int = 2000, prune_ratio: float = 0.9,
               n_filter: int = 1000, seed: int = 0, progress: bool = True) -> DefenseMatrix:
    """Run every defense against every attack and rate (clean-label only where ``rate`` is at most
    half the target class's share of the training set: it poisons target-class images only).

    The first ``n_defender`` test images are the defender's trusted clean data (STRIP's and the
    probe's calibration, Neural Cleanse, unlearning, fine-pruning); CA and ASR are measured on the
    rest of the test set (the input filters STRIP and the probe: on its first ``n_filter`` images).
    The poisoned sets and models are kept in ``models[(attack, rate)]`` for closer looks.
    """
    for a in attacks:
        check_choice("attacks", a, ATTACKS)
    for d in defenses:
        check_choice("defenses", d, DEFENSES)
    for r in rates:
        check_rate("rates", r)
    xd, yd = data.x_test[:n_defender], data.y_test[:n_defender]
    xe, ye = data.x_test[n_defender:], data.y_test[n_defender:]
    # clean-label's PGD needs a clean surrogate; the other attacks do not
    clean_model = (train_model("mlp", data.x_train, data.y_train, config, progress=False)
                   if "clean-label" in attacks else None)
    target_share = float((data.y_train == target).float().mean())
    jobs = [(a, r) for a in attacks for r in rates if not (a == "clean-label" and r > target_share / 2)]
    out = DefenseMatrix()
    for attack, rate in tqdm(jobs, desc="defense matrix", disable=not progress):
        poisoned, model = make_attack(attack, data, rate, target, config, seed=seed, surrogate=clean_model)
        arch = model_for(attack)
        trig = poisoned.trigger
        keep = ye[:n_filter] != target
        x_trig = trig(xe[:n_filter][keep])
        out.models[(attack, rate)] = (poisoned, model)
        out.before[(attack, rate)] = (clean_accuracy(model, xe, ye), attack_success_rate(model, xe, ye, trig, target))
        for defense in defenses:
            t0 = time.perf_counter()
            m = {"recall": float("nan"), "precision": float("nan"), "fpr": float("nan")}
            if defense in ("activation clustering", "spectral signatures", "SPECTRE"):
                eps = _target_share(poisoned, target)
                if defense == "activation clustering":
                    det = activation_clustering(model, poisoned.x, poisoned.y, seed=seed)
                elif defense == "spectral signatures":
                    det = spectral_signatures(model, poisoned.x, poisoned.y, eps=eps, layer=_spectral_layer(arch))
                else:
                    det = spectre(model, poisoned.x, poisoned.y, eps=(eps, SPECTRE_SECOND_PASS),
                                  layer=_spectral_layer(arch), seed=seed)
                m.update({k: v for k, v in det.evaluate(poisoned.mask).items() if k in ("recall", "precision", "fpr")})
                kept = ~det.flags
                after = train_model(arch, poisoned.x[kept], poisoned.y[kept], config, progress=False)
                m["ca_after"] = clean_accuracy(after, xe, ye)
                m["asr_after"] = attack_success_rate(after, xe, ye, trig, target)
            elif defense in ("STRIP", "SCALE-UP", "activation probe"):
                if defense in ("STRIP", "SCALE-UP"):
                    filt = (Strip.fit(model, xd[:n_filter // 2], n=100, frr=0.01, seed=seed) if defense == "STRIP"
                            else ScaleUp.fit(model, xd, num_classes=data.num_classes, fpr=0.05))
                    f_clean, f_trig = filt.detect(xe[:n_filter]).flags, filt.detect(x_trig).flags
                else:
                    probe = ActivationProbe().fit(model, xd, trig(xd), seed=seed)
                    f_clean, f_trig = probe.detect(model, xe[:n_filter]).flags, probe.detect(model, x_trig).flags
                m.update(recall=float(f_trig.float().mean()), fpr=float(f_clean.float().mean()))
                tp, fp = int(f_trig.sum()), int(f_clean.sum())
                m["precision"] = tp / (tp + fp) if tp + fp else 0.0
                m["ca_after"], m["asr_after"] = _filtered_rates(model, f_clean, f_trig, xe[:n_filter], ye[:n_filter],
                                                                x_trig, target)
            elif defense == "Neural Cleanse":
                rev = reverse_engineer(model, xd, num_classes=data.num_classes, seed=seed, progress=False)
                flagged = rev.flagged()
                m.update(recall=float(target in flagged),
                         precision=(float(target in flagged) / len(flagged)) if flagged else 0.0,
                         fpr=len([k for k in flagged if k != target]) / (data.num_classes - 1))
                fixed = unlearn(model, xd, yd, rev, flagged, seed=seed) if flagged else model
                m["ca_after"] = clean_accuracy(fixed, xe, ye)
                m["asr_after"] = attack_success_rate(fixed, xe, ye, trig, target)
                m["flagged"] = flagged
                m["anomaly_target"] = float(rev.anomaly[target])
            else:
                fixed = fine_prune(model, xd, yd, prune_ratio)
                m["ca_after"] = clean_accuracy(fixed, xe, ye)
                m["asr_after"] = attack_success_rate(fixed, xe, ye, trig, target)
            m["seconds"] = time.perf_counter() - t0
            out.cells[(defense, attack, rate)] = m
    return out


def text_rows_path() -> Path:
    """Where Lab 3 saves its defenses' rows on its text trigger for Lab 4's matrix (beside the
    trained models: an empty model cache clears both)."""
    return model_cache() / "lab3-text-defense-rows.json"


def load_text_rows() -> DefenseMatrix | None:
    """Lab 3's text rows if Lab 3 has run with this model cache, else None (Lab 4 says how to get them)."""
    path = text_rows_path()
    return DefenseMatrix.load(path) if path.exists() else None


def seed_spread(data: ImageData, *, attack: str = "BadNets", rates: Sequence[float] = (0.01, 0.1),
                seeds: Sequence[int] = (0, 1, 2), target: int = 9,
                config: TrainConfig = TrainConfig(epochs=5, batch_size=128, lr=2e-3), n_defender: int = 2000,
                n_filter: int = 1000) -> Table:
    """The same poisoned set, models trained with different seeds: how much the detectors' results
    on the target class move with nothing but the training seed.

    Per (rate, seed): activation clustering's suspect cluster (precision / recall of the poisons in
    it), its Fisher separation and verdict (threshold 12), the within-class AUROC of spectral
    signatures (``hidden.0``) and of SPECTRE, and STRIP's recall at FRR 1 % (fitted and measured
    as :func:`run_matrix` does: on the first ``n_filter // 2`` test images, then the triggered
    non-target images among the ``n_filter`` after the defender's ``n_defender``).
    """
    for r in rates:
        check_rate("rates", r)
    header = ["rate", "seed", "AC cluster precision", "AC cluster recall", "AC separation", "AC verdict",
              "SS AUROC", "SPECTRE AUROC", "STRIP recall"]
    rows, data_rows = [header], []
    xd, xe, ye = data.x_test[:n_defender], data.x_test[n_defender:], data.y_test[n_defender:]
    for rate in rates:
        poisoned, _ = make_attack(attack, data, rate, target, config)
        cls = poisoned.y == target
        truth = poisoned.mask[cls]
        eps = _target_share(poisoned, target)
        x_trig = poisoned.trigger(xe[:n_filter][ye[:n_filter] != target])
        for seed in seeds:
            model = train_model("mlp", poisoned.x, poisoned.y, replace(config, seed=seed), progress=False)
            ac = activation_clustering(model, poisoned.x, poisoned.y, classes=[target])
            info = ac.info["classes"][target]
            in_cluster = torch.from_numpy(ac.info["embedding"][target][1])
            hit = int((in_cluster & truth).sum())
            kw = dict(eps=eps, layer="hidden.0", classes=[target])
            row = {"rate": rate, "seed": seed, "ac_precision": hit / max(int(in_cluster.sum()), 1),
                   "ac_recall": hit / max(int(truth.sum()), 1), "separation": info["separation"],
                   "flagged": info["poisoned"],
                   "ss_auroc": auroc(spectral_signatures(model, poisoned.x, poisoned.y, **kw).scores[cls], truth),
                   "spectre_auroc": auroc(spectre(model, poisoned.x, poisoned.y, **kw).scores[cls], truth),
                   "strip_recall": float(Strip.fit(model, xd[:n_filter // 2], n=100, frr=0.01)
                                         .detect(x_trig).flags.float().mean())}
            data_rows.append(row)
            rows.append([f"{100 * rate:g}%", str(seed), f"{row['ac_precision']:.2f}", f"{row['ac_recall']:.2f}",
                         f"{row['separation']:.1f}", "poisoned" if row["flagged"] else "clean",
                         f"{row['ss_auroc']:.3f}", f"{row['spectre_auroc']:.3f}", f"{row['strip_recall']:.2f}"])
    return Table(rows, data_rows)
