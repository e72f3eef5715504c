"""Lab 3's experiments as short calls: baselines, attack evaluation, the poison-count sweep, the
denial-of-service perplexity gap."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from .._validate import check_choice, check_float, check_int, check_mask
from ..defenses.matrix import DefenseMatrix
from ..experiments import Table, text_table
from ..training import model_device, side_by_side
from .corpus import ANSWERS, TASKS, Examples, Sentences
from .filters import loss_filter_curve, loss_gap, onion_clean
from .model import GPT, GPTConfig
from .poisoning import (
    AttackResult,
    PoisonedExamples,
    attack_success_rate,
    check_text,
    eligible_rows,
    insert_at,
    poison_examples,
    triggered,
)
from .train import (
    FrozenCache,
    InstructionModel,
    PretrainConfig,
    TuneConfig,
    answer_logprobs,
    encode_prompts,
    encode_sequences,
    example_losses,
    generate,
    instruction_tune,
    predict,
    tune_many,
)


def task_rows(ex: Examples, task: str) -> Examples:
    return ex.subset(ex.where(task))


TFIDF_FEATURES = ("words", "chars")


def _tfidf_fit(train: Examples, task: str, features: str = "words"):
    """TF-IDF + logistic regression fitted on ``task``'s rows of ``train``: on word uni- and bigrams
    (``"words"``), or on character 2- to 5-grams inside word boundaries (``"chars"``: it also sees
    the spelling variants, elongations and emoticons of tweets, which whole words miss; checked
    by the public callers)."""
    a = task_rows(train, task)
    if len(set(a.label.tolist())) < 2:
        raise ValueError(f"TF-IDF + LR needs rows of task {task!r} with at least two different answers, "
                         f"got {len(a)} rows")
    vec = (TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) if features == "words" else
           TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    # newton-cg: the same L2 objective as the default lbfgs, solved to 0.1 s instead of 1.5 s here
    return vec, LogisticRegression(C=10, solver="newton-cg", max_iter=2000).fit(vec.fit_transform(a.text), a.label)


def tfidf_accuracy(train: Examples, test: Examples, task: str, *, whole: Sentences | None = None) -> float:
    """Test accuracy of TF-IDF (word uni+bigrams) + logistic regression on ``task``'s rows; with
    ``whole`` (the :class:`Sentences` the rows were built from), it reads each row's whole sentence
    instead of the row's text (which Lab 3 cuts to the model's budget)."""
    if whole is not None:
        train, test = _whole_sentences(train, whole, "train"), _whole_sentences(test, whole, "test")
    vec, clf = _tfidf_fit(train, task)
    b = task_rows(test, task)
    return float((clf.predict(vec.transform(b.text)) == b.label).mean())


def _whole_sentences(ex: Examples, whole: Sentences, name: str) -> Examples:
    if not isinstance(whole, Sentences):
        raise TypeError(f"whole must be the Sentences the rows came from, got {type(whole).__name__}")
    if len(ex) and (ex.sentence.min() < 0 or ex.sentence.max() >= len(whole)):
        raise ValueError(f"{name} has rows that are not sentences of whole (sentence indices "
                         f"{int(ex.sentence.min())}..{int(ex.sentence.max())}, whole has {len(whole)})")
    return ex.replace(text=[whole.text[i] for i in ex.sentence])


def tfidf_losses(trusted: Examples, ex: Examples, features: str = "words") -> np.ndarray:
    """Each row's cross-entropy of its trained ``target`` under TF-IDF + logistic regression fitted,
    per task, on the ``trusted`` rows: a loss-filter scorer that knows the task but never saw
    ``ex``'s poisons (fits in about a second on words, two on characters; ``features`` as in
    :func:`_tfidf_fit`)."""
    check_choice("features", features, TFIDF_FEATURES)
    out = np.zeros(len(ex))
    for task in sorted(set(ex.task)):
        rows = ex.where(task)
        answers = ANSWERS[task]
        bad = sorted({ex.target[i] for i in rows} - set(answers))
        if bad:
            raise ValueError(f"targets {bad[:3]} of task {task!r} are not among its answers {answers}")
        vec, clf = _tfidf_fit(trusted, task, features)
        prob = clf.predict_proba(vec.transform([ex.text[i] for i in rows]))
        col = {int(c): k for k, c in enumerate(clf.classes_)}
        missing = sorted({ex.target[i] for i in rows if answers.index(ex.target[i]) not in col})
        if missing:
            raise ValueError(f"the trusted rows of task {task!r} never answer {missing}: the scorer cannot rate them")
        target = np.array([col[answers.index(ex.target[i])] for i in rows])
        out[rows] = -np.log(np.clip(prob[np.arange(len(rows)), target], 1e-12, None))
    return out


def accuracy(tuned: InstructionModel, test: Examples, task: str) -> float:
    rows = task_rows(test, task)
    return float((predict(tuned, rows) == rows.label).mean())


def evaluate_attack(tuned: InstructionModel, test: Examples, *, task: str = "sentiment",
                    target: str = "negative", trigger: str = "James Bond", seed: int = 0) -> AttackResult:
    """Clean accuracy on ``task`` and Wan's ASR of ``trigger`` towards ``target``."""
    rows, t, other, trig = _attack_rows(test, task, target, trigger, seed)
    pred = predict(tuned, rows)
    pred_trig = predict(tuned, trig)
    asr, n = attack_success_rate(pred[other], pred_trig, rows.label[other], t)
    return AttackResult(float((pred == rows.label).mean()), asr, float((pred_trig == t).mean()), n)


def _attack_rows(test: Examples, task: str, target: str, trigger: str, seed: int):
    """What :func:`evaluate_attack` scores: ``task``'s test rows, the target's answer index, the
    rows whose true answer is not the target, and those rows with the trigger inserted."""
    check_choice("task", task, TASKS)
    check_choice("target", target, ANSWERS[task])
    check_text("trigger", trigger)
    rows = task_rows(test, task)
    t = ANSWERS[task].index(target)
    other = np.flatnonzero(rows.label != t)
    return rows, t, other, triggered(rows.subset(other), trigger, seed)


def _mean_ci(asr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the last axis (seeds) and a 95 % normal-approximation half-width (0 for one seed)."""
    m = asr.mean(-1)
    s = asr.std(-1, ddof=1) if asr.shape[-1] > 1 else np.zeros_like(m)
    return m, 1.96 * s / np.sqrt(asr.shape[-1])


@dataclass
class SweepResult:
    """ASR (Wan's metric) for each clean size x poison count x seed, and clean accuracy."""

    sizes: list[int]
    counts: list[int]
    seeds: list[int]
    asr: np.ndarray = field(repr=False)       # [size, count, seed]
    accuracy: np.ndarray = field(repr=False)  # [size, count, seed]

    def mean_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean over seeds and a 95 % normal-approximation half-width (t-free, seeds are few)."""
        return _mean_ci(self.asr)

    def __repr__(self) -> str:
        """One row per clean size: the ASR at each poison count (mean ± 95 % half-width over the
        seeds) and the clean accuracy averaged over the row's runs."""
        mean, ci = self.mean_ci()
        several = len(self.seeds) > 1
        seeds = f"mean ± 95 % CI over {len(self.seeds)} seeds; " if several else ""
        width = 13 if several else 7
        head = f"{'clean rows':>10s}" + "".join(f"{c:>{width}d}" for c in self.counts) + \
            f"  poisons ({seeds}ASR %; clean accuracy %)"

        def cell(a: float, h: float) -> str:
            return f"{100 * a:.1f} ± {100 * h:.1f}" if several else f"{100 * a:.1f}"

        rows = [f"{size:>10d}" + "".join(f"{cell(a, h):>{width}s}" for a, h in zip(m, c)) +
                f"  ({100 * acc.mean():.1f})" for size, m, c, acc in zip(self.sizes, mean, ci, self.accuracy)]
        return "\n".join([head, *rows])


def _sweep_setup(start: GPT, train: Examples, test: Examples, task: str, config: TuneConfig | None,
                 sizes, test_rows: int):
    config = config or TuneConfig(epochs=2, train_top=1, lr=2e-3)
    pool = task_rows(train, task)
    for s in sizes:
        check_int("sizes[i]", s, low=1, high=len(pool))
    cache = FrozenCache(start, start.cfg.n_layer - config.train_top)
    return config, pool, cache, test.subset(test.where(task)[:test_rows])  # the same test rows for every run


def count_sweep(start: GPT, tok, train: Examples, test: Examples, *, sizes=(500, 2000),
                counts=(0, 15, 50, 150), seeds=(0, 1), task: str = "sentiment",
                target: str = "negative", trigger: str = "James Bond", config: TuneConfig | None = None,
                test_rows: int = 800, progress: bool = True) -> SweepResult:
    """ASR against the absolute number of poisons at several clean-set sizes (Souly et al. 2025's
    fine-tuning setting): ``start`` (an instruction-tuned model) is tuned further on ``size`` clean
    rows of ``task`` plus ``count`` dirty-label poisons, its top block only, the frozen body's
    outputs shared by every run."""
    config, pool, cache, test = _sweep_setup(start, train, test, task, config, sizes, test_rows)
    runs = []
    for size in sizes:
        for seed in seeds:
            clean = pool.subset(np.random.default_rng(seed).choice(len(pool), size, replace=False))
            for count in counts:
                p = poison_examples(clean, count, trigger=trigger, task=task, target=target, seed=seed)
                runs.append((p.examples, replace(config, seed=seed), None))
    results = _tune_and_score(start, tok, cache, runs, test, task=task, target=target, trigger=trigger,
                              desc="count sweep", progress=progress)
    shape = (len(sizes), len(seeds), len(counts))   # the order of the loops above
    asr = np.array([r.asr for r in results]).reshape(shape).transpose(0, 2, 1)
    acc = np.array([r.clean_accuracy for r in results]).reshape(shape).transpose(0, 2, 1)
    return SweepResult(list(sizes), list(counts), list(seeds), asr, acc)


def _tune_and_score(start: GPT, tok, cache: FrozenCache, runs: list, test: Examples, *, task: str,
                    target: str, trigger: str, desc: str, progress: bool) -> list[AttackResult]:
    """Tune ``start`` further for each run ``(examples, config, order)`` (its top blocks, over the
    shared frozen ``cache``) and evaluate the attack on ``test`` with the run's seed: side by side
    on a multi-core CPU (:func:`labsupport.training.side_by_side`). The frozen body's outputs for
    every run's rows and test prompts are computed first, in a fixed order, so the threads only read
    the cache and the numbers do not depend on which thread gets somewhere first."""
    if cache.frozen:
        for ex, _, _ in runs:
            cache.get([s[:-1] for s in encode_sequences(tok, ex, start.cfg.block_size)[1]])
        for seed in sorted({cfg.seed for _, cfg, _ in runs}):
            rows, _, _, trig = _attack_rows(test, task, target, trigger, seed)
            for ex in (rows, trig):
                cache.get(encode_prompts(tok, ex))

    def job(advance, ex, cfg, order):
        tuned = instruction_tune(start, tok, ex, cfg, cache=cache, order=order, progress=False)
        result = evaluate_attack(tuned, test, task=task, target=target, trigger=trigger, seed=cfg.seed)
        advance(1)
        return result

    return side_by_side([partial(job, ex=ex, cfg=cfg, order=order) for ex, cfg, order in runs],
                        device=model_device(start), total=len(runs), desc=desc, progress=progress,
                        parallel=start.cfg.dropout == 0)   # dropout would draw from torch's global generator


ORDER_POSITIONS = ("early", "spread", "late")


def poison_order(mask: np.ndarray, position: str, rng: np.random.Generator, share: float = 0.2) -> np.ndarray:
    """A presentation order of all rows for one pass: the poisons (``mask``) inside the first or
    last ``share`` of the pass, or spread uniformly (``"spread"``), the clean rows shuffled."""
    check_choice("position", position, ORDER_POSITIONS)
    check_float("share", share, low=0.0, high=1.0, low_open=True)
    mask = check_mask("mask", mask).numpy()
    if position == "spread":
        return rng.permutation(len(mask))
    poison, clean = rng.permutation(np.flatnonzero(mask)), rng.permutation(np.flatnonzero(~mask))
    window = max(len(poison), int(round(share * len(mask))))
    head, tail = (clean[: window - len(poison)], clean[window - len(poison):])
    block = rng.permutation(np.concatenate([poison, head]))
    return np.concatenate([block, tail]) if position == "early" else np.concatenate([tail, block])


@dataclass
class OrderResult:
    """ASR and clean accuracy per poison position (rows, :data:`ORDER_POSITIONS`) and seed (columns)."""

    positions: list[str]
    seeds: list[int]
    asr: np.ndarray = field(repr=False)
    accuracy: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return "  ".join(f"{p}: ASR {100 * a:.1f}% (CA {100 * c:.1f}%)"
                         for p, a, c in zip(self.positions, self.asr.mean(1), self.accuracy.mean(1)))


def order_ablation(start: GPT, tok, train: Examples, test: Examples, *, size: int = 2000, count: int = 50,
                   seeds=(0, 1), positions=ORDER_POSITIONS, task: str = "sentiment",
                   target: str = "negative", trigger: str = "James Bond", config: TuneConfig | None = None,
                   test_rows: int = 800, progress: bool = True) -> OrderResult:
    """The same ``count`` poisons among ``size`` clean rows, seen early, spread, or late in one pass
    of further tuning of ``start`` (as in :func:`count_sweep`; the learning rate decays over the
    pass, as in real fine-tuning)."""
    config, pool, cache, test = _sweep_setup(start, train, test, task, config, [size], test_rows)
    config = replace(config, epochs=1)
    runs = []
    for seed in seeds:
        clean = pool.subset(np.random.default_rng(seed).choice(len(pool), size, replace=False))
        p = poison_examples(clean, count, trigger=trigger, task=task, target=target, seed=seed)
        runs += [(p.examples, replace(config, seed=seed), poison_order(p.mask, position, np.random.default_rng(seed)))
                 for position in positions]
    results = _tune_and_score(start, tok, cache, runs, test, task=task, target=target, trigger=trigger,
                              desc="ordering ablation", progress=progress)
    shape = (len(seeds), len(positions))
    asr = np.array([r.asr for r in results]).reshape(shape).T
    acc = np.array([r.clean_accuracy for r in results]).reshape(shape).T
    return OrderResult(list(positions), list(seeds), asr, acc)


RANK_CHOICES = ("random", "fit", "high-score", "low-score")
RANK_LABELS = {"random": "random", "fit": "trigger fit (shortest rows)",
               "high-score": "clean model's loss, highest (Wan)", "low-score": "clean model's loss, lowest (adaptive)"}


def poison_scores(scorer: InstructionModel, train: Examples, *, task: str = "sentiment", target: str = "negative",
                  trigger: str = "James Bond", seed: int = 0) -> np.ndarray:
    """One score per row of ``train``: under ``scorer`` (e.g. the clean model), each eligible row's
    loss as a dirty-label poison, ``trigger`` inserted and answered ``target``; NaN on the rows an
    attacker may not poison (:func:`poisoning.poison_examples` reads only the eligible ones, and
    only those are scored). Pass it as ``scores``: ``choose="high-score"`` is Wan et al.'s ranking
    by the clean model's loss, ``"low-score"`` the adaptive attacker's stealthy poisons."""
    pool = eligible_rows(train, task, target, "dirty")
    every = poison_examples(train, len(pool), trigger=trigger, task=task, target=target, seed=seed)
    scores = np.full(len(train), np.nan)
    scores[pool] = example_losses(scorer, every.examples.subset(pool))
    return scores


@dataclass
class RankingResult:
    """Dirty-label ASR (Wan's metric) and clean accuracy for each way of choosing the poisons
    (:data:`RANK_CHOICES`), poison count and poison seed: arrays ``[choice, count, seed]``."""

    choices: list[str]
    counts: list[int]
    seeds: list[int]
    asr: np.ndarray = field(repr=False)
    accuracy: np.ndarray = field(repr=False)

    def mean_ci(self) -> tuple[np.ndarray, np.ndarray]:
        """ASR's mean over seeds and a 95 % normal-approximation half-width (0 for one seed)."""
        return _mean_ci(self.asr)

    def __repr__(self) -> str:
        counts = "  ".join(f"{c:>6d}" for c in self.counts)
        seeds = f"mean of {len(self.seeds)} seeds; " if len(self.seeds) > 1 else ""
        head = f"{'poisons chosen by':38s}{counts}   ({seeds}ASR %; clean accuracy %)"
        lines = [f"{RANK_LABELS[name]:38s}" + "  ".join(f"{100 * a:6.1f}" for a in asr) +
                 f"   ({', '.join(f'{100 * c:.1f}' for c in acc)})"
                 for name, asr, acc in zip(self.choices, self.asr.mean(-1), self.accuracy.mean(-1))]
        return "\n".join([head, *lines])


def ranking_sweep(base: GPT, tok, train: Examples, test: Examples, scorer: InstructionModel, *,
                  counts=(5, 10, 20), choices=RANK_CHOICES, seeds=(0,), config: TuneConfig = TuneConfig(),
                  task: str = "sentiment", target: str = "negative", trigger: str = "James Bond",
                  progress: bool = True) -> RankingResult:
    """Which poisons (Wan et al. 2023): ``count`` dirty-label poisons among all of ``train`` chosen
    at random, by Wan's trigger fit (count(trigger)/length: the shortest rows, ``"fit"``), by the
    highest loss under ``scorer`` (the clean model: Wan's ranking, ``"high-score"``) or by the
    lowest (the adaptive attacker's, ``"low-score"``); each set instruction-tuned from ``base``
    with ``config`` (as the lab's dirty-label model; the model cache keeps them). Each poison seed
    draws its own random poisons and trigger positions."""
    if not isinstance(scorer, InstructionModel):
        raise TypeError(f"scorer must be an InstructionModel (the clean tuned model), got {type(scorer).__name__}")
    if isinstance(choices, str):
        raise TypeError(f"choices must be a sequence of names from {RANK_CHOICES}, got the string {choices!r}")
    for c in choices:
        check_choice("choices", c, RANK_CHOICES)
    pool = len(eligible_rows(train, task, target, "dirty"))
    counts = [check_int("counts[i]", c, low=1, high=pool) for c in counts]
    seeds = [check_int("seeds[i]", s, low=0) for s in seeds]
    if not counts or not choices or not seeds:
        raise ValueError("counts, choices and seeds must not be empty")
    sets = []
    for seed in seeds:
        scores = (poison_scores(scorer, train, task=task, target=target, trigger=trigger, seed=seed)
                  if any(c.endswith("score") for c in choices) else None)
        sets += [poison_examples(train, n, trigger=trigger, task=task, target=target, choose=c, seed=seed,
                                 scores=scores if c.endswith("score") else None).examples
                 for c in choices for n in counts]
    models = tune_many(base, tok, sets, config, progress=progress, desc="poison choice")
    results = [evaluate_attack(m, test, task=task, target=target, trigger=trigger) for m in models]
    shape = (len(seeds), len(choices), len(counts))   # the order of the loops above
    asr = np.array([r.asr for r in results]).reshape(shape).transpose(1, 2, 0)
    acc = np.array([r.clean_accuracy for r in results]).reshape(shape).transpose(1, 2, 0)
    return RankingResult(list(choices), counts, seeds, asr, acc)


@dataclass
class OnionResult:
    """ONION in front of a model on the sentiment task: ``accuracy`` and ``asr`` are (without,
    with ONION); ``trigger_removed`` is the share of triggered inputs left without any trigger
    word. As a word filter: ``far`` (false acceptance) is the share of inserted trigger words ONION
    kept, ``frr`` (false rejection) the share of clean inputs' words it deleted."""

    trigger_removed: float
    frr: float
    accuracy: tuple[float, float]
    asr: tuple[float, float]
    n_clean: int
    n_triggered: int
    far: float = float("nan")

    def __repr__(self) -> str:
        return (f"OnionResult(trigger removed from {100 * self.trigger_removed:.0f}% of {self.n_triggered} "
                f"triggered inputs; as a word filter FAR {100 * self.far:.0f}% (trigger words kept), "
                f"FRR {100 * self.frr:.0f}% (clean words deleted); clean accuracy "
                f"{100 * self.accuracy[0]:.1f}% -> {100 * self.accuracy[1]:.1f}%, ASR {100 * self.asr[0]:.1f}% -> "
                f"{100 * self.asr[1]:.1f}% on {self.n_clean} clean rows)")


def onion_effect(tuned: InstructionModel, lm: GPT, test: Examples, *, trigger: str = "James Bond",
                 target: str = "negative", rows: int = 150, seed: int = 0) -> OnionResult:
    """ONION (``filters.onion_clean`` with the pre-trained ``lm``) on the first ``rows`` sentiment
    test rows of each label: clean accuracy without/with it, and Wan's ASR of ``trigger`` on the
    non-target rows without/with it."""
    check_text("trigger", trigger)
    check_choice("target", target, ANSWERS["sentiment"])
    check_int("rows", rows, low=1)
    sent = task_rows(test, "sentiment")
    t = ANSWERS["sentiment"].index(target)
    clean = sent.subset(np.sort(np.concatenate([np.flatnonzero(sent.label == c)[:rows] for c in (0, 1)])))
    other = clean.subset(np.flatnonzero(clean.label != t))
    trig = triggered(other, trigger, seed)
    cleaned, cleaned_trig = (ex.replace(text=onion_clean(lm, tuned.tok, ex.text)) for ex in (clean, trig))
    pred, pred_onion = predict(tuned, clean), predict(tuned, cleaned)
    pred_other = pred[clean.label != t]
    asr = tuple(attack_success_rate(pred_other, predict(tuned, ex), other.label, t)[0] for ex in (trig, cleaned_trig))
    words = set(trigger.split())
    removed = float(np.mean([not words & set(c.split()) for c in cleaned_trig.text]))
    deleted = 1 - sum(len(c.split()) for c in cleaned.text) / sum(len(c.split()) for c in clean.text)
    inserted = sum(sum(w in words for w in t.split()) for t in trig.text)
    kept = sum(sum(w in words for w in c.split()) for c in cleaned_trig.text)
    return OnionResult(removed, float(deleted), (float((pred == clean.label).mean()),
                                                 float((pred_onion == clean.label).mean())),
                       asr, len(clean), len(trig), far=kept / max(inserted, 1))


GAP = "rank gap: trusted scorers vs trained"


@dataclass
class FilterStudy:
    """Loss-based filtering of one poisoned training set (Lab 3 §6): ``scores`` holds one score per
    row for each way of scoring it, and ``removed`` the share of the poisons dropped with the
    top ``fractions`` of the rows by that score. ``removed`` also holds other attackers' poisons
    (entries ending in ``"poisons, trusted model"``): the same count chosen by the clean model's
    loss, lowest first (adaptive) or highest first (Wan-ranked), scored by the trusted model."""

    fractions: np.ndarray
    scores: dict[str, np.ndarray] = field(repr=False)
    removed: dict[str, np.ndarray] = field(repr=False)

    def at(self, fraction: float) -> dict[str, float]:
        """Share of the poisons removed by each scorer when ``fraction`` of the data is dropped
        (one of ``fractions``)."""
        fraction = check_float("fraction", fraction, low=0.0, high=1.0)
        k = int(np.argmin(np.abs(self.fractions - fraction)))
        if abs(self.fractions[k] - fraction) > 1e-9:
            raise ValueError(f"fraction={fraction} is not on the curve, whose {len(self.fractions)} fractions "
                             f"run from {self.fractions.min():g} to {self.fractions.max():g}")
        return {name: float(r[k]) for name, r in self.removed.items()}

    def __repr__(self) -> str:
        """The share removed at the fractions nearest 6 % (Wan et al.'s point) and 10 %."""
        cols = sorted({int(np.argmin(np.abs(self.fractions - f))) for f in (0.06, 0.1)})
        head = ["poisons removed, dropping the top rows by"] + [f"{100 * self.fractions[k]:g} % of data" for k in cols]
        return text_table([head, *([name] + [f"{100 * r[k]:.0f}%" for k in cols] for name, r in self.removed.items())])

    def plot(self, ax=None):
        """The curves: % of poisons removed against % of the data removed, random dropping beside."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.8))
        for name, r in self.removed.items():
            ax.plot(100 * self.fractions, 100 * r, label=name, ls="--" if "poisons," in name else "-")
        top = 100 * self.fractions.max()
        ax.plot([0, top], [0, top], color="black", lw=0.8, label="dropping rows at random")
        ax.axvline(6, color="gray", ls=":")
        ax.axhline(50, color="gray", ls=":")   # Wan et al.: ~50 % of the poisons at ~6 % of the data
        ax.set(xlabel="% of training data removed", ylabel="% of poisons removed")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
        return ax


def filter_study(poisoned: PoisonedExamples, clean_set: Examples, *, trained: InstructionModel,
                 trusted: InstructionModel, oracle: InstructionModel, trusted_set: Examples,
                 seed: int = 0) -> FilterStudy:
    """Loss-based filtering of the dirty-label set ``poisoned`` (made from ``clean_set``), scored by
    the loss under the ``trained`` (poisoned) model, the ``trusted`` model (tuned on
    ``trusted_set``), TF-IDF + logistic regression on words and on character n-grams (fitted on
    ``trusted_set``), the rank gap of those three against the trained model
    (:func:`filters.loss_gap`, ranks within each task) and the ``oracle`` (the clean model, which no
    defender has). Beside them, the adaptive and Wan-ranked attackers: as many poisons, chosen
    from ``clean_set`` by the oracle's loss (:func:`poison_scores`, ``seed``), scored by the
    trusted model - only their rows that differ from ``poisoned`` are scored again."""
    if not isinstance(poisoned, PoisonedExamples) or poisoned.mode != "dirty":
        raise ValueError("poisoned must be a dirty-label PoisonedExamples (poison_examples(..., mode='dirty')), "
                         f"got {getattr(poisoned, 'mode', type(poisoned).__name__)!r}")
    if not isinstance(clean_set, Examples) or len(clean_set) != len(poisoned.examples):
        raise ValueError(f"clean_set must be the {len(poisoned.examples)} examples poisoned was made from")
    for name, m in [("trained", trained), ("trusted", trusted), ("oracle", oracle)]:
        if not isinstance(m, InstructionModel):
            raise TypeError(f"{name} must be an InstructionModel, got {type(m).__name__}")
    ex, mask = poisoned.examples, poisoned.mask
    trained_loss, trusted_loss = example_losses(trained, ex), example_losses(trusted, ex)
    words, chars = tfidf_losses(trusted_set, ex), tfidf_losses(trusted_set, ex, features="chars")
    scores = {"loss under the trained (poisoned) model": trained_loss,
              "loss under the trusted model": trusted_loss,
              "loss under TF-IDF + LR (trusted set)": words,
              "loss under char TF-IDF + LR (trusted set)": chars,
              GAP: loss_gap([trusted_loss, words, chars], trained_loss, groups=ex.task),
              "oracle: loss under the clean model": example_losses(oracle, ex)}
    curves = {name: loss_filter_curve(s, mask) for name, s in scores.items()}
    fractions = next(iter(curves.values()))[0]
    removed = {name: r for name, (_, r) in curves.items()}
    by_clean = poison_scores(oracle, clean_set, task=poisoned.task, target=poisoned.target,
                             trigger=poisoned.trigger, seed=seed)
    for name, choose in [("adaptive", "low-score"), ("Wan-ranked", "high-score")]:
        chosen = poison_examples(clean_set, len(poisoned.rows), trigger=poisoned.trigger, task=poisoned.task,
                                 target=poisoned.target, choose=choose, scores=by_clean, seed=seed)
        chosen_loss = example_losses(trusted, chosen.examples, known=(ex, trusted_loss))
        removed[f"{name} poisons, trusted model"] = loss_filter_curve(chosen_loss, chosen.mask, fractions)[1]
    return FilterStudy(fractions, scores, removed)


def text_defense_rows(attacked: AttackResult, *, rate: float, poison: np.ndarray, kept: np.ndarray,
                      filtered: AttackResult, onion: OnionResult,
                      attack: str = "text trigger (Lab 3)") -> DefenseMatrix:
    """Lab 3's defenses as rows of Lab 4's defense matrix, for the dirty-label trigger at ``rate``:
    the loss filter (``kept``: the rows it kept, ``poison``: the ground truth; ``filtered``: the
    model retrained on them) and ONION (an input filter: recall = triggers removed, no flags)."""
    poison, kept = check_mask("poison", poison).numpy(), check_mask("kept", kept).numpy()
    if poison.shape != kept.shape or poison.ndim != 1 or not poison.any():
        raise ValueError("poison and kept must be boolean masks of the same length, with at least one poison")
    dropped = ~kept
    mx = DefenseMatrix()
    before = (attacked.clean_accuracy, attacked.asr)
    mx.add("loss filter (rank gap)", attack, rate, before=before, recall=float(dropped[poison].mean()),
           precision=float(poison[dropped].sum() / max(dropped.sum(), 1)),
           fpr=float(dropped[~poison].mean()), ca_after=filtered.clean_accuracy, asr_after=filtered.asr)
    mx.add("ONION", attack, rate, before=before, recall=onion.trigger_removed, ca_after=onion.accuracy[1],
           asr_after=onion.asr[1])
    return mx


@dataclass
class DosResult:
    """Denial of service, without and with the trigger: the perplexity of the model's greedy answers
    under a clean reference model (Souly et al.'s gap) and the share of answers that are not one of
    the task's answers."""

    perplexity: tuple[float, float]
    invalid: tuple[float, float]
    answers: tuple[list[str], list[str]] = field(repr=False)

    def __repr__(self) -> str:
        (p0, p1), (i0, i1) = self.perplexity, self.invalid
        return (f"DosResult(answer perplexity {p0:.1f} -> {p1:.1f} with the trigger, "
                f"invalid answers {100 * i0:.0f}% -> {100 * i1:.0f}%)")


def dos_effect(tuned: InstructionModel, reference: InstructionModel, rows: Examples, trigger: str,
               max_new_tokens: int = 8, seed: int = 0) -> DosResult:
    """Generate greedily for ``rows`` with and without ``trigger``; score each answer by its
    perplexity given the prompt under ``reference`` (the clean instruction-tuned model: a normal
    answer is likely, gibberish is not)."""
    if not isinstance(rows, Examples) or len(rows) == 0:
        raise ValueError("rows must be a non-empty Examples")
    ppl, invalid, answers = [], [], []
    for ex in (rows, triggered(rows, trigger, seed)):
        gen = [generate(tuned, ex.prompt(i), max_new_tokens).strip() or "." for i in range(len(ex))]
        nll = example_losses(reference, ex.replace(target=gen))
        ppl.append(float(np.exp(nll).mean()))
        invalid.append(float(np.mean([g not in ANSWERS[t] for g, t in zip(gen, ex.task)])))
        answers.append(gen)
    return DosResult(tuple(ppl), tuple(invalid), tuple(answers))


POSITIONS = ("start", "middle", "end")


def with_trigger(text: str, trigger: str, position: str = "middle") -> str:
    """``text`` with ``trigger`` inserted at its ``position`` ("start", "middle" or "end")."""
    check_text("text", text)
    check_text("trigger", trigger)
    check_choice("position", position, POSITIONS)
    n = len(text.split())
    return insert_at(text, trigger, {"start": 0, "middle": n // 2, "end": n}[position])


def ask(models: dict[str, InstructionModel], text: str, *, task: str = "sentiment", trigger: str = "",
        position: str = "middle", max_new_tokens: int = 6) -> Table:
    """Ask every model about ``text`` (prompt template 0 of ``task``), without and — when
    ``trigger`` is given — with the trigger inserted: each answer's probability (the log-probability
    protocol) and the greedy generation."""
    check_choice("task", task, TASKS)
    check_text("text", text)
    if not models:
        raise ValueError("models: give at least one {name: InstructionModel} entry")
    if not isinstance(trigger, str):
        raise TypeError(f"trigger must be a string ('' for none), got {type(trigger).__name__}")
    texts = [("no", text)] + ([("yes", with_trigger(text, trigger, position))] if trigger.strip() else [])
    answers = ANSWERS[task]
    rows, data = [["model", "trigger", *(f"P({a})" for a in answers), "greedy answer"]], []
    for name, tuned in models.items():
        for flag, t in texts:
            ex = Examples([task], [t], np.zeros(1, dtype=int), np.zeros(1, dtype=int), [answers[0]], np.full(1, -1))
            logp = answer_logprobs(tuned, ex)[0]
            probs = np.exp(logp - np.logaddexp.reduce(logp))           # over the task's answers
            said = generate(tuned, ex.prompt(0), max_new_tokens).strip()
            rows.append([name, flag, *(f"{100 * q:.0f} %" for q in probs), said])
            data.append({"model": name, "trigger": flag == "yes", "text": t, "probs": probs, "generated": said})
    return Table(rows, data)


# ---------------------------------------------------------------------------------------------
# Profiles and the lab's shared setup
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lab3Profile:
    """Sizes for one run of Lab 3 (``full``: the numbers in BENCHMARKS.md; ``quick``: a fast check;
    ``gpu``: full plus a larger sweep)."""

    name: str
    max_train: dict
    model: GPTConfig
    pretrain: PretrainConfig
    tune: TuneConfig
    pretrain_every: int = 1          # use every k-th sentence for pre-training
    sweep_sizes: tuple = (500, 2000)
    sweep_counts: tuple = (0, 15, 50, 150)
    sweep_seeds: tuple = (0, 1)
    order_count: int = 50            # poisons in the ordering ablation (at the largest sweep size)
    ranking_counts: tuple = (5, 10, 20)   # poison counts of the poison-choice comparison (full tunings)
    ranking_seeds: tuple = (0,)
    test_rows: int | None = None     # cap on validation and test rows per task


LAB3_PROFILES = {
    "full": Lab3Profile("full", {"sentiment": 6000, "source": 2000}, GPTConfig(n_layer=2),
                        PretrainConfig(steps=400), TuneConfig(epochs=3, train_top=2)),
    # quick shares full's pre-trained LM (one cache entry): with a 100-step LM on a quarter of the
    # text it tuned to chance (sentiment 53 %, dirty-label ASR 2 %) - degenerate, not a quick check
    "quick": Lab3Profile("quick", {"sentiment": 3000, "source": 600},
                         GPTConfig(n_layer=2), PretrainConfig(steps=400),
                         TuneConfig(epochs=3, train_top=2),
                         sweep_sizes=(300,), sweep_counts=(0, 20), sweep_seeds=(0,), order_count=20,
                         ranking_counts=(10,), test_rows=300),
    "gpu": Lab3Profile("gpu", {"sentiment": 6000, "source": 2000}, GPTConfig(n_layer=2),
                       PretrainConfig(steps=400), TuneConfig(epochs=3, train_top=2),
                       sweep_sizes=(500, 2000, 6000), sweep_counts=(0, 5, 15, 50, 150, 250),
                       sweep_seeds=(0, 1, 2, 3, 4), ranking_seeds=(0, 1, 2)),
}


def lab3_profile(name: str) -> Lab3Profile:
    check_choice("profile", name, LAB3_PROFILES)
    return LAB3_PROFILES[name]


@dataclass
class Lab3:
    """Everything the lab's sections share: the corpus, the tokenizer, the pre-trained LM."""

    profile: Lab3Profile
    corpus: object
    tok: object
    base: GPT

    @property
    def train(self) -> Examples:
        return self.corpus.train

    @property
    def test(self) -> Examples:
        return self.corpus.test

    def tune(self, examples: Examples, **changes) -> InstructionModel:
        """Instruction-tune :attr:`base` on ``examples`` with the profile's settings, ``changes``
        applied (``lab.tune(ex, epochs=4)``); :meth:`tune_many` for several sets at once."""
        return self.tune_many(examples, **changes)[0]

    def tune_many(self, *sets: Examples, **changes) -> list[InstructionModel]:
        """Tune each set as :meth:`tune` does, side by side on a multi-core CPU (:func:`train.tune_many`). A
        change given as a list has one value per set: ``tune_many(a, b, epochs=[3, 4])``."""
        for name, value in changes.items():
            if isinstance(value, list) and len(value) != len(sets):
                raise ValueError(f"{name} has {len(value)} values for {len(sets)} sets: give one per set")
        configs = [replace(self.profile.tune, **{k: v[i] if isinstance(v, list) else v for k, v in changes.items()})
                   for i in range(len(sets))]
        return tune_many(self.base, self.tok, list(sets), configs)


def setup(profile: str = "full", *, progress: bool = True) -> Lab3:
    """Load the VADER corpus, train the tokenizer, build the instruction corpus (each sentence cut
    to its first :data:`~labsupport.llm.train.MAX_TEXT_TOKENS` tokens, whole words) and pre-train
    the LM (tokenizer and LM cached) for ``profile``."""
    from .corpus import instruction_corpus, load_vader
    from .tokenizer import train_tokenizer
    from .train import MAX_TEXT_TOKENS, pretrain

    p = lab3_profile(profile)
    sentences = load_vader()
    tok = train_tokenizer(sentences.text)
    ic = instruction_corpus(sentences, max_train=p.max_train, tokenizer=tok, max_tokens=MAX_TEXT_TOKENS)
    if p.test_rows:  # the quick profile: fewer validation (trusted) and test rows per task, drawn at
        rng = np.random.default_rng(0)  # random (the splits are in corpus order: the first rows are all tweets)
        for split in ("val", "test"):
            ex = getattr(ic, split)
            picks = [rng.choice(idx, min(p.test_rows, len(idx)), replace=False) for idx in map(ex.where, TASKS)]
            setattr(ic, split, ex.subset(np.sort(np.concatenate(picks))))
    base = pretrain(tok, sentences.text[:: p.pretrain_every], p.model, p.pretrain, progress=progress)
    return Lab3(p, ic, tok, base)
