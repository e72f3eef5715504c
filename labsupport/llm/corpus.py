"""Real text for Lab 3: the VADER human-rated sentence sets and the instruction corpus built on them.

The four sets (Hutto & Gilbert 2014: tweets, movie-review snippets, Amazon-review sentences, NYT
editorial snippets, each with the mean of ~20 human ratings in [-4, 4]) ship inside the
``vaderSentiment==3.3.2`` source distribution (``additional_resources/hutto_ICWSM_2014.tar.gz``).
:func:`prepare_vader` fetches that sdist with pip (the only network it needs), checks its SHA-256
and extracts the four ``*_GroundTruth.txt`` files into the course data folder; :func:`load_vader`
reads and verifies them. Nothing else is ever substituted.

The instruction corpus has two tasks over the same sentences, each with several templates:

* ``sentiment``: mean rating > 0.5 -> "positive", < -0.5 -> "negative" (the neutral band is dropped);
* ``source``: which set the sentence comes from -> "tweet", "movie", "product" or "news".

Splits are fixed per *sentence* (a hash of its text), so a test sentence is unseen in every task.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._validate import check_choice, check_int
from ..data import DatasetNotFoundError
from ..io import atomic_write_bytes, sha256_file
from ..paths import data_root

if TYPE_CHECKING:
    from .tokenizer import TextTokenizer

VADER_SDIST = "vaderSentiment==3.3.2"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_FILES = {  # source name -> (file, SHA-256)
    "tweet": ("tweets_GroundTruth.txt",
              "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f"),
    "movie": ("movieReviewSnippets_GroundTruth.txt",
              "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"),
    "product": ("amazonReviewSnippets_GroundTruth.txt",
                "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2"),
    "news": ("nytEditorialSnippets_GroundTruth.txt",
             "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e"),
}
SOURCES = tuple(VADER_FILES)
PREPARE_COMMAND = "labsupport data prepare vader"

TASKS = ("sentiment", "source")
ANSWERS = {"sentiment": ("negative", "positive"), "source": SOURCES}
TEMPLATES = {
    "sentiment": (
        "Classify the sentiment: {text}\nAnswer:",
        "Is this positive or negative? {text}\nAnswer:",
        "Text: {text}\nSentiment:",
        "How does the writer feel about it? {text}\nAnswer:",
    ),
    "source": (
        "Where is this sentence from? {text}\nAnswer:",
        "Tweet, movie, product or news? {text}\nAnswer:",
        "Text: {text}\nSource:",
        "Name the source of this sentence: {text}\nAnswer:",
    ),
}
SENTIMENT_THRESHOLD = 0.5


def vader_dir() -> Path:
    return data_root() / "vader"


def prepare_vader(*, pip_command: list[str] | None = None) -> Path:
    """Fetch the ``vaderSentiment==3.3.2`` sdist with pip, verify it and extract the four sets.

    Idempotent: files already present and verified are kept. Returns the folder.

    Raises:
        DatasetNotFoundError: pip could not fetch the sdist, or it does not match its SHA-256.
    """
    target = vader_dir()
    if _files_ok(target):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = (pip_command or [sys.executable, "-m", "pip"]) + [
            "download", VADER_SDIST, "--no-deps", "--no-binary", ":all:", "-d", tmp, "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("vaderSentiment-3.3.2.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise DatasetNotFoundError(
                f"could not download the {VADER_SDIST} source distribution with pip "
                f"({done.stderr.strip()[-300:] or 'no file'}); it needs the package index once")
        if (digest := sha256_file(sdists[0])) != VADER_SDIST_SHA256:
            raise DatasetNotFoundError(f"{sdists[0].name}: SHA-256 {digest} is not the expected "
                                       f"{VADER_SDIST_SHA256}; refusing to use it")
        with tarfile.open(sdists[0]) as outer:
            inner_bytes = outer.extractfile(
                "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            for file, sha in VADER_FILES.values():
                data = inner.extractfile(f"hutto_ICWSM_2014/{file}").read()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise DatasetNotFoundError(f"{file} inside the sdist does not match its SHA-256")
                atomic_write_bytes(target / file, data)
    return target


def _files_ok(folder: Path) -> bool:
    return all((folder / f).is_file() and sha256_file(folder / f) == sha for f, sha in VADER_FILES.values())


@dataclass
class Sentences:
    """The VADER sentences: ``text``, ``source`` (index into :data:`SOURCES`) and mean ``rating``."""

    text: list[str]
    source: np.ndarray
    rating: np.ndarray

    def __len__(self) -> int:
        return len(self.text)


def load_vader() -> Sentences:
    """Read and verify the four VADER sets (23,698 sentences; run :func:`prepare_vader` first).

    Raises:
        DatasetNotFoundError: a file is missing or does not match its SHA-256 (the message names
            the command that fixes it).
    """
    folder = vader_dir()
    text, source, rating = [], [], []
    for k, (file, sha) in enumerate(VADER_FILES.values()):
        path = folder / file
        if not path.is_file():
            raise DatasetNotFoundError(
                f"VADER sentence set {file!r} not found in {folder} (looked for the files extracted "
                f"from the {VADER_SDIST} sdist). Fix: `{PREPARE_COMMAND}`")
        if sha256_file(path) != sha:
            raise DatasetNotFoundError(f"{path} does not match its SHA-256 (corrupt or changed). "
                                       f"Fix: delete it and run `{PREPARE_COMMAND}`")
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) != 3 or not parts[2].strip():
                continue
            text.append(_clean(parts[2]))
            source.append(k)
            rating.append(float(parts[1]))
    return Sentences(text, np.array(source), np.array(rating))


def _clean(s: str) -> str:
    s = s.replace("&amp;", "&").replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    s = s.replace("''", '"')
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# Instruction examples
# ---------------------------------------------------------------------------------------------

@dataclass
class Examples:
    """Instruction examples. Row ``i``: ``task[i]`` applied to ``text[i]`` with template
    ``template[i]``; the correct answer index is ``label[i]`` and the trained target answer is
    ``target[i]`` (equal to ``label`` unless the row is poisoned). ``sentence`` indexes the
    :class:`Sentences` it came from (-1 for made-up text); ``poison`` is the ground-truth mask.
    """

    task: list[str]
    text: list[str]
    template: np.ndarray
    label: np.ndarray
    target: list[str]
    sentence: np.ndarray
    poison: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.text)
        if self.poison is None:
            self.poison = np.zeros(n, dtype=bool)
        if not (len(self.task) == len(self.template) == len(self.label) == len(self.target)
                == len(self.sentence) == len(self.poison) == n):
            raise ValueError("Examples fields must all have the same length")
        for name, values in (("text", self.text), ("target", self.target)):
            bad = next((i for i, t in enumerate(values) if not isinstance(t, str) or not t.strip()), None)
            if bad is not None:
                raise ValueError(f"Examples.{name}[{bad}] must be non-empty text, got {values[bad]!r}")
        unknown = sorted(set(self.task) - set(TASKS))
        if unknown:
            raise ValueError(f"Examples.task holds unknown task names {unknown}; allowed: {list(TASKS)}")

    def __len__(self) -> int:
        return len(self.text)

    @property
    def n_poison(self) -> int:
        return int(self.poison.sum())

    def prompt(self, i: int) -> str:
        return TEMPLATES[self.task[i]][self.template[i]].format(text=self.text[i])

    def prompts(self) -> list[str]:
        return [self.prompt(i) for i in range(len(self))]

    def answer(self, i: int) -> str:
        """The correct answer word of row ``i``."""
        return ANSWERS[self.task[i]][self.label[i]]

    def subset(self, rows) -> Examples:
        rows = np.asarray(rows)
        if rows.size == 0:
            rows = rows.astype(int)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return Examples([self.task[i] for i in rows], [self.text[i] for i in rows],
                        self.template[rows], self.label[rows], [self.target[i] for i in rows],
                        self.sentence[rows], self.poison[rows])

    def where(self, task: str | None = None, label: int | None = None) -> np.ndarray:
        """Row indices of ``task`` (and ``label``)."""
        ok = np.ones(len(self), dtype=bool)
        if task is not None:
            check_choice("task", task, TASKS)
            ok &= np.array([t == task for t in self.task])
        if label is not None:
            ok &= self.label == label
        return np.flatnonzero(ok)

    @staticmethod
    def concat(*parts: Examples) -> Examples:
        return Examples(sum((p.task for p in parts), []), sum((p.text for p in parts), []),
                        np.concatenate([p.template for p in parts]),
                        np.concatenate([p.label for p in parts]),
                        sum((p.target for p in parts), []),
                        np.concatenate([p.sentence for p in parts]),
                        np.concatenate([p.poison for p in parts]))

    def replace(self, **changes) -> Examples:
        return replace(self, **changes)

    def __repr__(self) -> str:
        per_task = ", ".join(f"{t} {len(self.where(t))}" for t in TASKS if t in self.task)
        poisoned = f", {int(self.poison.sum())} poisoned" if self.poison.any() else ""
        return f"Examples({len(self)} rows: {per_task}{poisoned})"


@dataclass
class InstructionCorpus:
    """Fixed train/validation/test instruction examples over :class:`Sentences`."""

    sentences: Sentences
    train: Examples
    val: Examples
    test: Examples


def split_of(text: str) -> str:
    """``train`` (70 %), ``val`` (10 %) or ``test`` (20 %), fixed by a hash of the sentence."""
    h = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") % 100
    return "test" if h < 20 else "val" if h < 30 else "train"


def instruction_corpus(sentences: Sentences | None = None, *, tasks: tuple[str, ...] = TASKS,
                       max_train: dict[str, int] | None = None, seed: int = 0,
                       tokenizer: TextTokenizer | None = None, max_tokens: int | None = None) -> InstructionCorpus:
    """Build the instruction examples of ``tasks`` over the VADER sentences.

    Each sentence appears once per task it qualifies for (sentiment needs |rating| > 0.5), with a
    template drawn at random. ``max_train`` caps a task's training examples (a seeded, stratified
    sample), e.g. ``{"source": 4000}`` to keep the CPU budget. With a ``tokenizer`` and
    ``max_tokens``, each example holds its sentence cut to the first ``max_tokens`` tokens (whole
    words, :meth:`TextTokenizer.cut`): the text the model reads, so a trigger inserted anywhere in
    it is read too. The splits stay fixed by the whole sentence.
    """
    sentences = sentences if sentences is not None else load_vader()
    for t in tasks:
        check_choice("tasks", t, TASKS)
    if (tokenizer is None) != (max_tokens is None):
        raise ValueError("give tokenizer and max_tokens together (to cut the sentences), or neither")
    rng = np.random.default_rng(seed)
    splits = np.array([split_of(t) for t in sentences.text])
    chosen = []   # (split, task, rows, templates, labels); the texts are cut once, for the rows used
    for split in ("train", "val", "test"):
        for task in tasks:
            rows = np.flatnonzero(splits == split)
            if task == "sentiment":
                r = sentences.rating[rows]
                rows = rows[np.abs(r) > SENTIMENT_THRESHOLD]
                labels = (sentences.rating[rows] > 0).astype(np.int64)
            else:
                labels = sentences.source[rows].astype(np.int64)
            cap = (max_train or {}).get(task)
            if split == "train" and cap is not None and cap < len(rows):
                check_int(f"max_train[{task!r}]", cap, low=1)
                keep = np.sort(rng.choice(len(rows), cap, replace=False))
                rows, labels = rows[keep], labels[keep]
            chosen.append((split, task, rows, rng.integers(0, len(TEMPLATES[task]), len(rows)), labels))
    used = np.unique(np.concatenate([c[2] for c in chosen]))
    cut = [sentences.text[i] for i in used] if tokenizer is None else tokenizer.cut([sentences.text[i] for i in used],
                                                                                     max_tokens)
    texts = dict(zip(used.tolist(), cut))
    out = {}
    for split in ("train", "val", "test"):
        out[split] = Examples.concat(*(
            Examples([task] * len(rows), [texts[i] for i in rows], templates, labels,
                     [ANSWERS[task][k] for k in labels], rows.astype(np.int64))
            for sp, task, rows, templates, labels in chosen if sp == split))
    return InstructionCorpus(sentences, out["train"], out["val"], out["test"])
