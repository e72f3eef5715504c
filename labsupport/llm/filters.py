"""Defenses on the data for Lab 3.

* **Loss-based filtering** (Wan et al. 2023): drop the training examples with the highest loss under
  a model trained on the (possibly poisoned) data; :func:`loss_filter_curve` gives the share of
  poisons removed against the share of data removed. :func:`loss_gap` scores a row by how much
  better the trained model fits it than trusted scorers do (on percentile ranks): the poisons,
  which the trigger lets the trained model fit, rise to the top.
* **ONION** (Qi et al. 2021): a word's suspicion is ``PPL(sentence) - PPL(sentence without the
  word)`` under our own pre-trained LM; words scoring above a threshold (0, as in OpenBackdoor) are
  deleted before the input reaches the model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from .._validate import check_float, check_mask, check_rate
from ..training import autocast, model_device
from .model import GPT
from .poisoning import check_text
from .tokenizer import TextTokenizer
from .train import pad


def loss_filter(losses: np.ndarray, fraction: float) -> np.ndarray:
    """Flag mask of the ``fraction`` of rows with the highest loss."""
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1 or len(losses) == 0 or not np.isfinite(losses).all():
        raise ValueError("losses must be a non-empty 1-D array of finite numbers")
    check_rate("fraction", fraction)
    k = int(round(fraction * len(losses)))
    flags = np.zeros(len(losses), dtype=bool)
    flags[np.argsort(-losses, kind="stable")[:k]] = True
    return flags


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank in (0, 1] (ties share their mean rank): puts losses of different models
    on one scale."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError("values must be a non-empty 1-D array of finite numbers")
    return rankdata(values) / len(values)


def loss_gap(trusted: list[np.ndarray], trained: np.ndarray, groups: np.ndarray | list | None = None) -> np.ndarray:
    """How much better the model trained on the data fits each row than models that never saw it:
    the mean percentile rank of the row's loss under the ``trusted`` scorers minus its percentile
    rank under the ``trained`` model. A poison looks wrong to a trusted scorer (high loss) yet the
    trained model fits it (the trigger explains its label); a merely hard example is hard for both.
    Ranks, not raw losses, so scorers of different kinds (a TF-IDF model, a transformer) weigh
    the same. ``groups`` (one label per row, e.g. each row's task): ranks within each group, so
    that a task whose losses all run high does not crowd out another's."""
    if isinstance(trusted, np.ndarray) or not trusted:
        raise TypeError("trusted must be a non-empty list of loss arrays (one per trusted scorer)")
    trained = np.asarray(trained, dtype=float)
    if trained.ndim != 1 or len(trained) == 0 or not np.isfinite(trained).all():
        raise ValueError("trained must be a non-empty 1-D array of finite losses")
    trusted = [np.asarray(t, dtype=float) for t in trusted]
    if any(t.shape != trained.shape for t in trusted):
        raise ValueError(f"every trusted loss array must have the trained losses' shape {trained.shape}")
    groups = np.zeros(len(trained), dtype=int) if groups is None else np.asarray(groups)
    if groups.shape != trained.shape:
        raise ValueError(f"groups must have one label per row: shape {trained.shape}, got {groups.shape}")
    gap = np.zeros(len(trained))
    for g in np.unique(groups):
        rows = groups == g
        gap[rows] = np.mean([percentile_ranks(t[rows]) for t in trusted], axis=0) - percentile_ranks(trained[rows])
    return gap


def loss_filter_curve(losses: np.ndarray, poison: np.ndarray, fractions=None):
    """(fractions, share of poisons removed) when the top ``fraction`` losses are dropped
    (``fractions``: 0 to 0.3 in steps of 0.01 unless given; a new array on every call)."""
    fractions = np.linspace(0, 0.3, 31) if fractions is None else np.array(fractions, dtype=float)
    poison = check_mask("poison", poison).numpy()
    if poison.shape != np.shape(losses) or not poison.any():
        raise ValueError("poison must be a boolean mask like losses with at least one poison")
    removed = [float(loss_filter(losses, f)[poison].mean()) for f in fractions]
    return np.asarray(fractions), np.array(removed)


@torch.no_grad()
def sentence_nll(model: GPT, tok: TextTokenizer, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Mean next-token negative log-likelihood of each text (``<eos>`` first, then the text)."""
    seqs = [[tok.eos_id] + ids[: model.cfg.block_size - 1] for ids in tok.encode_batch(list(texts))]
    out = np.zeros(len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")
    dev = model_device(model)
    for k in range(0, len(order), batch_size):
        rows = order[k:k + batch_size]
        idx = pad([seqs[i] for i in rows], 0)
        lens = torch.tensor([len(seqs[i]) for i in rows])
        r, c = torch.nonzero(torch.arange(idx.shape[1] - 1) < lens[:, None] - 1, as_tuple=True)
        with autocast(dev):   # the arithmetic the LM was trained in (bfloat16 where native)
            logits = model.head(model.hidden(idx[:, :-1].to(dev))[r.to(dev), c.to(dev)])   # at the text's positions
        nll = F.cross_entropy(logits.float(), idx[r, c + 1].to(dev), reduction="none").cpu()
        out[rows] = (torch.zeros(len(rows)).index_add_(0, r, nll) / (lens - 1).clamp(min=1)).numpy()
    return out


def onion_scores(model: GPT, tok: TextTokenizer, text: str) -> np.ndarray:
    """ONION suspicion of each word of ``text``: perplexity drop when the word is deleted."""
    check_text("text", text)
    words = text.split()
    variants = [text] + [" ".join(words[:i] + words[i + 1:]) or "." for i in range(len(words))]
    ppl = np.exp(sentence_nll(model, tok, variants))
    return ppl[0] - ppl[1:]


def onion_clean(model: GPT, tok: TextTokenizer, texts: list[str], threshold: float = 0.0) -> list[str]:
    """Each text with its words scoring above ``threshold`` deleted (at least one word is kept)."""
    check_float("threshold", threshold)
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    # one batched LM pass over every variant of every text
    variants, spans = [], []
    for t in texts:
        check_text("texts[i]", t)
        words = t.split()
        spans.append((len(variants), words))
        variants += [t] + [" ".join(words[:i] + words[i + 1:]) or "." for i in range(len(words))]
    ppl = np.exp(sentence_nll(model, tok, variants))
    out = []
    for start, words in spans:
        scores = ppl[start] - ppl[start + 1: start + 1 + len(words)]
        keep = [w for w, s in zip(words, scores) if s <= threshold] or [words[int(np.argmin(scores))]]
        out.append(" ".join(keep))
    return out
