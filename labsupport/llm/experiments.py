"""Lab 3's experiments as short calls: baselines, attack evaluation, the poison-count sweep, the
denial-of-service perplexity gap."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from .._validate import check_choice, check_int
from .corpus import ANSWERS, TASKS, Examples
from .filters import sentence_nll
from .model import GPT, GPTConfig
from .poisoning import AttackResult, attack_success_rate, check_text, poison_examples, triggered
from .train import (FrozenCache, InstructionModel, PretrainConfig, TuneConfig, generate, instruction_tune,
                    predict)


def task_rows(ex: Examples, task: str) -> Examples:
    return ex.subset(ex.where(task))


def tfidf_accuracy(train: Examples, test: Examples, task: str) -> float:
    """Test accuracy of TF-IDF (word uni+bigrams) + logistic regression on ``task``'s rows."""
    a, b = task_rows(train, task), task_rows(test, task)
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    clf = LogisticRegression(C=10, max_iter=2000).fit(vec.fit_transform(a.text), a.label)
    return float((clf.predict(vec.transform(b.text)) == b.label).mean())


def accuracy(tuned: InstructionModel, test: Examples, task: str) -> float:
    rows = task_rows(test, task)
    return float((predict(tuned, rows) == rows.label).mean())


def evaluate_attack(tuned: InstructionModel, test: Examples, *, task: str = "sentiment",
                    target: str = "negative", trigger: str = "James Bond", seed: int = 0) -> AttackResult:
    """Clean accuracy on ``task`` and Wan's ASR of ``trigger`` towards ``target``."""
    check_choice("task", task, TASKS)
    check_choice("target", target, ANSWERS[task])
    check_text("trigger", trigger)
    rows = task_rows(test, task)
    t = ANSWERS[task].index(target)
    pred = predict(tuned, rows)
    other = np.flatnonzero(rows.label != t)
    pred_trig = predict(tuned, triggered(rows.subset(other), trigger, seed))
    asr, n = attack_success_rate(pred[other], pred_trig, rows.label[other], t)
    return AttackResult(float((pred == rows.label).mean()), asr, float((pred_trig == t).mean()), n)


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
        m = self.asr.mean(-1)
        s = self.asr.std(-1, ddof=1) if self.asr.shape[-1] > 1 else np.zeros_like(m)
        return m, 1.96 * s / np.sqrt(self.asr.shape[-1])


def count_sweep(start: GPT, tok, train: Examples, test: Examples, *, sizes=(500, 2000),
                counts=(0, 15, 50, 150), seeds=(0, 1), task: str = "sentiment",
                target: str = "negative", trigger: str = "James Bond", config: TuneConfig | None = None,
                test_rows: int = 800, progress: bool = True) -> SweepResult:
    """ASR against the absolute number of poisons at several clean-set sizes (Souly et al. 2025's
    fine-tuning setting): ``start`` (an instruction-tuned model) is tuned further on ``size`` clean
    rows of ``task`` plus ``count`` dirty-label poisons, its top block only, the frozen body's
    outputs shared by every run."""
    config = config or TuneConfig(epochs=2, train_top=1, lr=2e-3)
    pool = task_rows(train, task)
    for s in sizes:
        check_int("sizes[i]", s, low=1, high=len(pool))
    cache = FrozenCache(start, start.cfg.n_layer - config.train_top)
    test = test.subset(test.where(task)[:test_rows])  # the same rows for every run
    asr = np.zeros((len(sizes), len(counts), len(seeds)))
    acc = np.zeros_like(asr)
    bar = tqdm(total=asr.size, desc="count sweep", disable=not progress)
    for i, size in enumerate(sizes):
        for k, seed in enumerate(seeds):
            clean = pool.subset(np.random.default_rng(seed).choice(len(pool), size, replace=False))
            for j, count in enumerate(counts):
                p = poison_examples(clean, count, trigger=trigger, task=task, target=target, seed=seed)
                tuned = instruction_tune(start, tok, p.examples, replace(config, seed=seed), cache=cache,
                                         progress=False)
                r = evaluate_attack(tuned, test, task=task, target=target, trigger=trigger, seed=seed)
                asr[i, j, k], acc[i, j, k] = r.asr, r.clean_accuracy
                bar.update()
    bar.close()
    return SweepResult(list(sizes), list(counts), list(seeds), asr, acc)


def perplexity_gap(tuned: InstructionModel, lm: GPT, prompts: list[str], trigger: str,
                   max_new_tokens: int = 8, seed: int = 0) -> tuple[float, float]:
    """Souly et al.'s denial-of-service metric: mean perplexity (under the pre-trained ``lm``) of
    the greedy answers without and with ``trigger`` inserted in the prompts' text."""
    rng = np.random.default_rng(seed)
    plain, trig = [], []
    for p in prompts:
        head, sep, tail = p.partition("\n")
        words = head.split()
        k = int(rng.integers(1, len(words) + 1))
        plain.append(generate(tuned, p, max_new_tokens) or ".")
        trig.append(generate(tuned, " ".join(words[:k] + trigger.split() + words[k:]) + sep + tail,
                             max_new_tokens) or ".")
    return (float(np.exp(sentence_nll(lm, tuned.tok, plain)).mean()),
            float(np.exp(sentence_nll(lm, tuned.tok, trig)).mean()))


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
    test_rows: int | None = None     # cap on test rows per task


LAB3_PROFILES = {
    "full": Lab3Profile("full", {"sentiment": 6000, "source": 2000}, GPTConfig(n_layer=2),
                        PretrainConfig(steps=400), TuneConfig(epochs=3, train_top=2)),
    "quick": Lab3Profile("quick", {"sentiment": 2000, "source": 300},
                         GPTConfig(n_layer=2), PretrainConfig(steps=100),
                         TuneConfig(epochs=3, train_top=2), pretrain_every=4,
                         sweep_sizes=(300,), sweep_counts=(0, 20), sweep_seeds=(0,), test_rows=300),
    "gpu": Lab3Profile("gpu", {"sentiment": 6000, "source": 2000}, GPTConfig(n_layer=2),
                       PretrainConfig(steps=400), TuneConfig(epochs=3, train_top=2),
                       sweep_sizes=(500, 2000, 6000), sweep_counts=(0, 5, 15, 50, 150, 250),
                       sweep_seeds=(0, 1, 2, 3, 4)),
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
        cfg = replace(self.profile.tune, **changes)
        return instruction_tune(self.base, self.tok, examples, cfg, desc="instruction-tune")


def setup(profile: str = "full", *, progress: bool = True) -> Lab3:
    """Load the VADER corpus, build the instruction corpus, train the tokenizer and pre-train the
    LM (both cached) for ``profile``."""
    from .corpus import instruction_corpus, load_vader
    from .tokenizer import train_tokenizer
    from .train import pretrain

    p = lab3_profile(profile)
    sentences = load_vader()
    ic = instruction_corpus(sentences, max_train=p.max_train)
    if p.test_rows:
        keep = np.concatenate([ic.test.where(t)[: p.test_rows] for t in TASKS])
        ic.test = ic.test.subset(np.sort(keep))
    tok = train_tokenizer(sentences.text)
    base = pretrain(tok, sentences.text[:: p.pretrain_every], p.model, p.pretrain, progress=progress)
    return Lab3(p, ic, tok, base)
