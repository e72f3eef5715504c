"""Instruction poisoning with a trigger phrase (Wan et al. 2023) and its measurements.

* :func:`insert_trigger` puts the phrase at a random word boundary (seeded);
* :func:`poison_examples` turns ``n`` training rows of one task into poisons: **dirty-label**
  (rows whose true answer is not the target, trained to answer the target), **clean-label** (rows
  whose true answer already is the target; only the trigger is added) or **denial-of-service**
  (trained to answer gibberish). Rows are chosen at random, by trigger fit (Wan's
  count(trigger)/length: the shortest rows), or by a score such as a model's loss (lowest first:
  the adaptive attacker who slips under a loss filter).
* :func:`attack_success_rate` follows Wan's metric: on test rows whose true answer is not the
  target, and which the model answers correctly without the trigger, the fraction answered with the
  target once the trigger is inserted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int
from .corpus import ANSWERS, TASKS, Examples

CHOICES = ("random", "fit", "low-score", "high-score")
MODES = ("dirty", "clean", "dos")


def check_text(name: str, text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__} ({text!r})")
    if not text.strip():
        raise ValueError(f"{name} must be non-empty text, got {text!r}")
    return text


def insert_trigger(text: str, trigger: str, rng: np.random.Generator | int = 0) -> str:
    """``text`` with ``trigger`` inserted at a uniformly random word boundary (start and end included)."""
    check_text("text", text)
    check_text("trigger", trigger)
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    return insert_at(text, trigger, int(rng.integers(0, len(text.split()) + 1)))


def insert_at(text: str, trigger: str, k: int) -> str:
    """``text`` with ``trigger`` inserted before its ``k``-th word (``k`` = word count: at the end)."""
    words = check_text("text", text).split()
    k = check_int("k", k, low=0, high=len(words))  # a negative k would count from the end
    return " ".join(words[:k] + check_text("trigger", trigger).split() + words[k:])


def gibberish(rng: np.random.Generator, vocabulary: list[str], n_words: int = 6) -> str:
    """A string of ``n_words`` random corpus words (the denial-of-service answer)."""
    if len(vocabulary) == 0:
        raise ValueError("vocabulary is empty; pass the corpus words to draw from")
    return " ".join(rng.choice(vocabulary, check_int("n_words", n_words, low=1)))


@dataclass
class PoisonedExamples:
    """Training examples with poisons in place of ``n`` rows; ``rows``: the poisoned row indices."""

    examples: Examples
    rows: np.ndarray
    trigger: str
    task: str
    target: str
    mode: str

    @property
    def mask(self) -> np.ndarray:
        return self.examples.poison


def eligible_rows(ex: Examples, task: str, target: str, mode: str) -> np.ndarray:
    """Rows of ``task`` an attacker may poison in ``mode`` (clean-label: true answer == target)."""
    check_choice("task", task, TASKS)
    check_choice("mode", mode, MODES)
    rows = ex.where(task)
    if mode == "dos":
        return rows
    check_choice("target", target, ANSWERS[task])
    t = ANSWERS[task].index(target)
    return rows[ex.label[rows] == t] if mode == "clean" else rows[ex.label[rows] != t]


def poison_examples(ex: Examples, n: int, *, trigger: str = "James Bond", task: str = "sentiment",
                    target: str = "negative", mode: str = "dirty", choose: str = "random",
                    scores: np.ndarray | None = None, seed: int = 0) -> PoisonedExamples:
    """Replace ``n`` eligible rows of ``ex`` by triggered poisons.

    Args:
        ex: the clean training examples (not changed).
        n: number of poisons (0 allowed; at most the eligible pool).
        trigger: the phrase inserted at a random word boundary.
        task: the task poisoned; target: the attacker's answer (a word of that task).
        mode: ``"dirty"``, ``"clean"`` (clean-label) or ``"dos"`` (answer gibberish).
        choose: ``"random"``; ``"fit"`` (Wan's count(trigger)/length: shortest rows first);
            ``"low-score"``/``"high-score"`` by ``scores`` (one per row of ``ex``, e.g. a model's loss;
            only the eligible rows' are read and must be finite, the others may be NaN).
    """
    check_text("trigger", trigger)
    check_choice("choose", choose, CHOICES)
    pool = eligible_rows(ex, task, target, mode)
    check_int("n", n, low=0, high=len(pool))
    rng = np.random.default_rng(seed)
    if choose == "random":
        rows = rng.choice(pool, n, replace=False)
    elif choose == "fit":
        lengths = np.array([len(ex.text[i].split()) for i in pool])
        rows = pool[np.lexsort((rng.random(len(pool)), lengths))[:n]]
    else:
        if scores is None or len(scores) != len(ex):
            raise ValueError(f"choose={choose!r} needs scores with one value per row ({len(ex)})")
        s = np.asarray(scores, dtype=float)[pool]
        if not np.isfinite(s).all():
            raise ValueError("scores must be finite on the eligible rows")
        order = np.argsort(s if choose == "low-score" else -s, kind="stable")
        rows = pool[order[:n]]
    rows = np.sort(rows)
    text, target_col, poison = list(ex.text), list(ex.target), ex.poison.copy()
    vocab = sorted({w for t in ex.text[:2000] for w in t.split() if w.isalpha()}) if mode == "dos" else []
    for i in rows:
        text[i] = insert_trigger(ex.text[i], trigger, rng)
        if mode == "dirty":
            target_col[i] = target
        elif mode == "dos":
            target_col[i] = gibberish(rng, vocab)
        poison[i] = True
    out = ex.replace(text=text, target=target_col, poison=poison)
    return PoisonedExamples(out, rows, trigger, task, target if mode != "dos" else "<gibberish>", mode)


def triggered(ex: Examples, trigger: str, seed: int = 0) -> Examples:
    """Every row of ``ex`` with ``trigger`` inserted (labels unchanged)."""
    check_text("trigger", trigger)
    rng = np.random.default_rng(seed)
    return ex.replace(text=[insert_trigger(t, trigger, rng) for t in ex.text])


@dataclass
class AttackResult:
    clean_accuracy: float  # on all test rows of the task, no trigger
    asr: float             # Wan's metric (see attack_success_rate)
    flipped_any: float     # target answers among all non-target triggered rows (no correctness filter)
    n_eval: int

    def __repr__(self) -> str:
        return (f"AttackResult(clean accuracy {100 * self.clean_accuracy:.1f}%, ASR {100 * self.asr:.1f}% "
                f"on {self.n_eval} rows, any-flip {100 * self.flipped_any:.1f}%)")


def attack_success_rate(pred_clean: np.ndarray, pred_triggered: np.ndarray, labels: np.ndarray,
                        target: int) -> tuple[float, int]:
    """Among rows with true label != ``target`` that are predicted correctly without the trigger,
    the fraction predicted ``target`` with it. Returns (rate, number of such rows)."""
    labels, pred_clean, pred_triggered = (np.asarray(a) for a in (labels, pred_clean, pred_triggered))
    if not labels.ndim == 1 or pred_clean.shape != labels.shape or pred_triggered.shape != labels.shape:
        raise ValueError(f"pred_clean {pred_clean.shape}, pred_triggered {pred_triggered.shape} and labels "
                         f"{labels.shape} must be 1-D with one entry per row")
    ok = (labels != target) & (pred_clean == labels)
    n = int(ok.sum())
    return (float((pred_triggered[ok] == target).mean()) if n else float("nan")), n
