"""A byte-level BPE tokenizer trained on the course corpus with Hugging Face ``tokenizers``.

Byte-level BPE never meets an unknown character; every answer word of the instruction tasks is
kept a single token (with its leading space), so "the answer" is one position to score.
Saved as the library's JSON in the model cache, keyed by the corpus and settings, with its SHA-256
(checked on load: a damaged or changed file is trained again, with a warning).
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from .._validate import check_int
from ..io import read_verified_text, write_verified_text
from ..paths import model_cache
from .corpus import ANSWERS, TEMPLATES

PAD, EOS = "<pad>", "<eos>"


class TextTokenizer:
    """Thin wrapper: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ids of pad/eos."""

    MEMO_LIMIT = 400_000   # texts whose ids are kept (~0.3 GB at most; Lab 3 meets ~60,000)

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pad_id = tok.token_to_id(PAD)
        self.eos_id = tok.token_to_id(EOS)
        self.vocab_size = tok.get_vocab_size()
        self._memo: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """``encode`` of each text. A lab scores the same test prompts again and again (every
        model, every sweep point), so ids are remembered per text: each distinct text is encoded
        once (the same ids: this tokenizer pads and truncates nothing)."""
        with self._lock:   # tunings side by side share the tokenizer
            memo = self._memo
            missing = list(dict.fromkeys(t for t in texts if t not in memo))
            if len(memo) + len(missing) > self.MEMO_LIMIT:
                memo.clear()
                missing = list(dict.fromkeys(texts))
            if missing:
                memo.update(zip(missing, (tuple(e.ids) for e in self.tok.encode_batch(missing))))
            return [list(memo[t]) for t in texts]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def cut(self, texts: list[str], max_tokens: int) -> list[str]:
        """Each text shortened to at most ``max_tokens`` tokens at a word boundary (its first words;
        a text that fits is returned as it is). A first word longer than ``max_tokens`` is cut
        between tokens. Whole words keep what the model reads readable and let a trigger be
        inserted anywhere in it (see ``train.MAX_TEXT_TOKENS``)."""
        check_int("max_tokens", max_tokens, low=1)
        ids = self.encode_batch(list(texts))
        long = [i for i, e in enumerate(ids) if len(e) > max_tokens]
        out = list(texts)
        for i, enc in zip(long, self.tok.encode_batch([texts[i] for i in long])):
            text = texts[i]
            head = text[:enc.offsets[max_tokens - 1][1]]          # up to the last kept token's end
            inside = not (head[-1:].isspace() or text[len(head)].isspace())
            if inside and len(head.split()) > 1:                     # the cut splits a word: drop it
                head = head.rsplit(None, 1)[0]
            out[i] = head.rstrip()
            # whole words re-encode as the prefix of the ids (never longer on the corpus); make sure
            while len(self.encode(out[i])) > max_tokens and len(out[i].split()) > 1:
                out[i] = out[i].rsplit(None, 1)[0]
        return out

    def answer_id(self, word: str) -> int:
        """The single token id of `` word`` (answers are scored at one position)."""
        ids = self.encode(" " + word)
        if len(ids) != 1:
            raise ValueError(f"answer {word!r} is not a single token ({ids}); retrain the tokenizer "
                             "with it among the answer words")
        return ids[0]

    def to_json(self) -> str:
        return self.tok.to_str()


def train_tokenizer(texts: list[str], *, vocab_size: int = 4096, extra_words: tuple[str, ...] = (),
                    cache: bool = True) -> TextTokenizer:
    """Train (or load from the model cache) byte-level BPE on ``texts`` plus the task templates.

    Args:
        texts: the corpus sentences.
        vocab_size: the BPE vocabulary size (>= 512).
        extra_words: more words to keep whole, e.g. an attacker's answer.
    """
    check_int("vocab_size", vocab_size, low=512)
    answers = sorted({w for ws in ANSWERS.values() for w in ws} | set(extra_words))
    key = hashlib.sha256(json.dumps([texts, vocab_size, answers, TEMPLATES, 2]).encode()).hexdigest()[:20]
    path = model_cache() / f"tokenizer-{key}.json"
    if cache and path.exists():
        try:
            return TextTokenizer(Tokenizer.from_str(read_verified_text(path)))
        except Exception as exc:  # IntegrityError, or tokenizers' own error for a JSON it cannot read
            warnings.warn(f"{path.name} failed verification ({exc}); training the tokenizer again", stacklevel=2)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    templates = [t.format(text="") for ts in TEMPLATES.values() for t in ts]
    # the answers and templates are seen often enough to become single tokens
    tok.train_from_iterator(list(texts) + templates * 50 + [" " + a for a in answers] * 200, trainer)
    out = TextTokenizer(tok)
    for a in answers:
        out.answer_id(a)
    if cache:
        write_verified_text(path, out.to_json())
    return out

