"""Pre-training, instruction tuning, scoring and generation for the Lab 3 transformer.

* :func:`pretrain` - the language-modelling objective on all corpus sentences, packed into
  ``block_size`` windows; cached as safetensors and reused by every later run.
* :func:`instruction_tune` - the loss on the answer tokens only (:func:`answer_mask`), the last
  block and the output layer evaluated at those positions alone, sequences bucketed by length so a
  batch pads to its own longest row. The bottom ``n_layer - train_top``
  blocks are frozen and their outputs computed once per distinct prompt (:class:`FrozenCache`):
  a sweep of many tuned models pays for the frozen body once.
* :func:`answer_logprobs` / :func:`predict` - the log-probability of every allowed answer at the
  answer position, argmax over the task's answer set (Wan et al. 2023's protocol);
  :func:`generate` - greedy decoding; :func:`example_losses` - per-example answer loss. They score
  in the arithmetic the models are trained in (:func:`autocast`: bfloat16 where the hardware has
  it): 1.7x faster passes on such a CPU than float32, the same prediction on 99.5 % of test rows.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._validate import check_int, check_optimizer_settings
from ..io import IntegrityError, load_model, save_model, tensors_sha256
from ..paths import model_cache
from ..training import autocast, bfloat16, configure_threads, flush_denormals, model_device, pick_device, side_by_side
from .corpus import ANSWERS, TEMPLATES, Examples
from .model import GPT, GPTConfig, Positions, math_attention
from .tokenizer import TextTokenizer

MAX_TEXT_TOKENS = 40     # Lab 3's examples hold each sentence cut to this many tokens (whole words)
PROMPT_TEXT_TOKENS = 48  # a row's text is cut to this many tokens inside a prompt: a trigger of up to
#                          8 tokens inserted anywhere in a cut sentence is always read
SORT_POOL = 4         # batches sorted together by length (see _buckets)


# ---------------------------------------------------------------------------------------------
# Pre-training
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps, low=1)
        check_int("warmup", self.warmup, low=0)
        check_optimizer_settings(self)


def pack(tok: TextTokenizer, texts: list[str], block_size: int) -> torch.Tensor:
    """All texts, each followed by ``<eos>``, concatenated and cut into ``block_size + 1`` windows."""
    ids = [i for row in tok.encode_batch(list(texts)) for i in row + [tok.eos_id]]
    n = (len(ids) - 1) // block_size
    flat = torch.tensor(ids[: n * block_size + 1])
    return torch.stack([flat[k * block_size: (k + 1) * block_size + 1] for k in range(n)])


def _lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) + lr * 0.05


@contextlib.contextmanager
def training_precision(dev: torch.device):
    """A training step's arithmetic: :func:`autocast`, and on a CPU under bfloat16 the math
    attention backend (25 % faster there than the CPU flash kernel for these short windows)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(autocast(dev))
        if dev.type == "cpu" and bfloat16(dev):
            stack.enter_context(math_attention())
        yield


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pretrain(tok: TextTokenizer, texts: list[str], config: GPTConfig = GPTConfig(),
             train: PretrainConfig = PretrainConfig(), *, device: str = "auto", cache: bool = True,
             progress: bool = True) -> GPT:
    """Pre-train a :class:`GPT` with next-token prediction on ``texts`` (cached as safetensors)."""
    if config.vocab_size != tok.vocab_size:
        config = GPTConfig(**{**config.to_dict(), "vocab_size": tok.vocab_size})
    configure_threads()
    dev = pick_device(device)
    torch.manual_seed(train.seed)
    model = GPT(config).to(dev)
    key = _digest(config.to_dict(), train.__dict__, tok.to_json(), texts,
                  str(torch.bfloat16) if bfloat16(dev) else "fp32", "bf16-loss")
    path = model_cache() / f"gpt-pretrain-{key}.safetensors"
    if cache and path.exists():
        try:
            return load_model(path, model, require_digest=True).eval()
        except (IntegrityError, RuntimeError) as exc:
            warnings.warn(f"{path.name} failed verification ({exc}); pre-training again", stacklevel=2)
    data = pack(tok, texts, config.block_size)
    gen = torch.Generator().manual_seed(train.seed)
    opt = _adamw(model, train.weight_decay, train.lr, betas=(0.9, 0.95))
    model.train()
    bar = tqdm(range(train.steps), desc="pre-train", disable=not progress, leave=False)
    with flush_denormals(dev):
        for step in bar:
            rows = torch.randint(0, len(data), (train.batch_size,), generator=gen)
            batch = data[rows].to(dev)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, train.steps, train.lr, train.warmup)
            with training_precision(dev):
                logits = model(batch[:, :-1])
            # on the autocast logits (bfloat16 where native), outside autocast (which would upcast
            # them): float32 logits made the CPU step 1.5x slower for the same held-out loss
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.2f}")
    model.eval()
    if cache:
        save_model(path, model, {"config": config.to_dict(), "pretrain": train.__dict__})
    return model


def _adamw(model: GPT, weight_decay: float, lr: float, **kw) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, as one fused kernel where the device has it
    (0.65 ms vs 4.8 ms per step for the per-parameter loop, this model on CPU)."""
    dev = model_device(model)
    return torch.optim.AdamW(model.param_groups(weight_decay), lr=lr, fused=dev.type in ("cpu", "cuda"), **kw)


# ---------------------------------------------------------------------------------------------
# Encoding: prompt + answer, the answer-only loss mask
# ---------------------------------------------------------------------------------------------

def answer_mask(prompt_len: int, total_len: int) -> torch.Tensor:
    """Which next-token predictions of a sequence ``prompt + answer`` carry the loss: position
    ``t`` predicts token ``t + 1``, so the answer's tokens are predicted from positions
    ``prompt_len - 1`` to ``total_len - 2``. Returns a bool mask of length ``total_len - 1``."""
    check_int("prompt_len", prompt_len, low=1)
    check_int("total_len", total_len, low=prompt_len + 1)
    mask = torch.zeros(total_len - 1, dtype=torch.bool)
    mask[prompt_len - 1:] = True
    return mask


def _prompts(tok: TextTokenizer, tasks, texts, templates, max_text: int) -> list[list[int]]:
    """Token ids of the prompts, each text cut to ``max_text`` tokens (whole words)."""
    texts = tok.cut(list(texts), max_text)
    return tok.encode_batch([TEMPLATES[task][t].format(text=text) for task, text, t in zip(tasks, texts, templates)])


def _prompt(tok: TextTokenizer, task: str, text: str, template: int, max_text: int) -> list[int]:
    return _prompts(tok, [task], [text], [template], max_text)[0]


def encode_prompts(tok: TextTokenizer, ex: Examples) -> list[list[int]]:
    """Token ids of each row's prompt, its text cut to :data:`PROMPT_TEXT_TOKENS` tokens."""
    return _prompts(tok, ex.task, ex.text, ex.template, PROMPT_TEXT_TOKENS)


def encode_answers(tok: TextTokenizer, targets: list[str]) -> list[list[int]]:
    """`` target`` + ``<eos>`` for each row (a one-word answer is one token)."""
    return [tok.encode(" " + a) + [tok.eos_id] for a in targets]


def encode_sequences(tok: TextTokenizer, ex: Examples, block_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and ``prompt + answer + <eos>`` sequences whose inputs (all but the last token) fit in
    ``block_size``: a long answer (the denial-of-service gibberish) shortens the sentence, never
    the answer."""
    prompts, answers = encode_prompts(tok, ex), encode_answers(tok, ex.target)
    for i, a in enumerate(answers):
        max_text = PROMPT_TEXT_TOKENS
        while len(prompts[i]) + len(a) - 1 > block_size:
            max_text -= len(prompts[i]) + len(a) - 1 - block_size
            if max_text < 1:
                raise ValueError(f"answer of row {i} ({len(a)} tokens) leaves no room for its prompt "
                                 f"in block_size={block_size}")
            prompts[i] = _prompt(tok, ex.task[i], ex.text[i], ex.template[i], max_text)
    return prompts, [p + a for p, a in zip(prompts, answers)]


# ---------------------------------------------------------------------------------------------
# Frozen body cache and instruction tuning
# ---------------------------------------------------------------------------------------------

class FrozenCache:
    """The outputs of the frozen bottom blocks of a pre-trained model, computed once per distinct
    token sequence and kept (as bfloat16 on CPU) for every run that tunes the same top."""

    def __init__(self, base: GPT, frozen: int):
        self.base, self.frozen = base, frozen
        self.store: dict[tuple[int, ...], torch.Tensor] = {}

    @torch.no_grad()
    def get(self, seqs: list[list[int]], batch_size: int = 256) -> list[torch.Tensor]:
        missing = list({tuple(s) for s in seqs if tuple(s) not in self.store})
        missing.sort(key=len)
        dev = model_device(self.base)
        for k in range(0, len(missing), batch_size):
            chunk = missing[k:k + batch_size]
            idx = pad([list(s) for s in chunk], 0).to(dev)
            with autocast(dev, enabled=False):   # float32, whoever asks (training or scoring)
                h = _run_blocks(self.base, idx, self.frozen)
            for s, row in zip(chunk, h):
                self.store[s] = row[: len(s)].to("cpu", torch.bfloat16)
        return [self.store[tuple(s)] for s in seqs]


def _run_blocks(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    x = model.embed(idx)
    for block in model.blocks[:n]:
        x = block(x)
    return x


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Token-id lists as one ``[n, longest]`` tensor, right-padded with ``value``."""
    lens = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    out = np.full((len(seqs), int(lens.max())), value, dtype=np.int64)
    out[np.arange(out.shape[1]) < lens[:, None]] = np.concatenate(seqs)
    return torch.from_numpy(out)


@dataclass(frozen=True)
class TuneConfig:
    """Instruction-tuning settings: ``train_top`` top blocks are trained (the rest frozen)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    train_top: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        check_int("train_top", self.train_top, low=1)
        check_optimizer_settings(self)


@dataclass
class InstructionModel:
    """A tuned model: the full :class:`GPT` (frozen bottom shared with its base) and its tokenizer."""

    model: GPT
    tok: TextTokenizer
    frozen: int
    cache: FrozenCache

    def hidden(self, seqs: list[list[int]], positions: Positions | None = None) -> torch.Tensor:
        """Final hidden states of padded ``seqs`` (via the frozen cache): ``[b, t, c]``, or
        ``[n, c]`` at ``positions = (rows, cols)`` only (see :meth:`GPT.hidden`)."""
        dev = model_device(self.model)
        if positions is not None:
            positions = (positions[0].to(dev), positions[1].to(dev))
        if self.frozen == 0:
            return self.model.hidden(pad(seqs, 0).to(dev), positions=positions)
        feats = self.cache.get(seqs)
        x = torch.zeros(len(seqs), max(map(len, seqs)), self.model.cfg.n_embd)
        for i, f in enumerate(feats):
            x[i, : len(f)] = f.float()
        return self.model.hidden(None, self.frozen, x.to(dev), positions=positions)

    def last_hidden(self, seqs: list[list[int]]) -> torch.Tensor:
        """``[b, c]``: each sequence's final hidden state at its last token (the next-token input)."""
        last = torch.tensor([len(s) - 1 for s in seqs])
        return self.hidden(seqs, (torch.arange(len(seqs)), last))


def _buckets(lengths: np.ndarray, batch_size: int, gen: np.random.Generator,
             pool: int = SORT_POOL) -> list[np.ndarray]:
    """Batches of rows of similar length, "sortish": shuffle, sort each pool of ``pool`` batches by
    length, cut into batches, shuffle the batches. Sorting the whole set instead would make each
    batch one source (tweets are short, editorials long) and one label, and the model would not
    generalise (measured: 53 % vs 74 % sentiment accuracy)."""
    perm = gen.permutation(len(lengths))
    batches = []
    for k in range(0, len(perm), pool * batch_size):
        chunk = perm[k:k + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    gen.shuffle(batches)
    return batches


def instruction_tune(base: GPT, tok: TextTokenizer, train: Examples, config: TuneConfig = TuneConfig(),
                     *, cache: FrozenCache | None = None, order: np.ndarray | None = None,
                     reuse: bool = True, progress: bool = True, desc: str = "instruction-tune",
                     on_step: Callable[[int], None] | None = None) -> InstructionModel:
    """Instruction-tune a copy of ``base`` on ``train`` with the loss on answer tokens only.

    Args:
        base: the pre-trained model (left unchanged).
        train: the examples; ``train.target`` are the trained answers (poisoned rows included).
        config: epochs, batch, lr, ``train_top`` (blocks trained; the others frozen), seed.
        cache: a :class:`FrozenCache` of ``base`` to share between runs (made if None).
        order: a fixed presentation order of rows for a single pass (the ordering ablation);
            None shuffles length buckets each epoch.
        reuse: keep the tuned weights in the model cache (safetensors, verified on load), keyed by
            the base model's weights, the tokenizer, the exact rows and answers, ``config``,
            ``order`` and the device: running the same tuning again loads them instead (the
            course's own :class:`GPT` only; a transformers model is always tuned afresh).
        on_step: called with 1 after every optimiser step (:func:`tune_many`'s shared progress bar),
            and with the steps skipped when the result is loaded from the cache.
    """
    if not isinstance(train, Examples) or len(train) == 0:
        raise ValueError("train must be a non-empty Examples")
    check_int("train_top", config.train_top, low=1, high=base.cfg.n_layer)
    frozen = base.cfg.n_layer - config.train_top
    if cache is None or cache.base is not base or cache.frozen != frozen:
        cache = FrozenCache(base, frozen)
    configure_threads()
    torch.manual_seed(config.seed)
    model = copy.deepcopy(base)
    if frozen:  # the input embedding is frozen with the bottom blocks; the output layer is tuned
        model.untie()
    for name, p in model.named_parameters():
        top = not name.startswith("blocks.") or int(name.split(".")[1]) >= frozen
        p.requires_grad_(top and (frozen == 0 or not name.startswith("w")))
    tuned = InstructionModel(model, tok, frozen, cache)
    dev = model_device(model)
    path = _tune_path(base, tok, train, config, order, dev) if reuse and isinstance(base, GPT) else None
    if path is not None and path.exists():
        try:
            load_model(path, model, require_digest=True)
            model.eval()
            if on_step:
                on_step(tune_steps(len(train), config, order))
            return tuned
        except (IntegrityError, RuntimeError) as exc:
            warnings.warn(f"{path.name} failed verification ({exc}); tuning again", stacklevel=2)
    prompts, seqs = encode_sequences(tok, train, base.cfg.block_size)
    if frozen:
        cache.get([s[:-1] for s in seqs])
    lengths = np.array([len(s) for s in seqs])
    gen = np.random.default_rng(config.seed)
    if order is not None:
        batches = [np.asarray(order)[k:k + config.batch_size] for k in range(0, len(order), config.batch_size)]
        plan = [batches] * config.epochs
    else:
        plan = [_buckets(lengths, config.batch_size, gen) for _ in range(config.epochs)]
    total = sum(len(b) for b in plan)
    opt = _adamw(model, config.weight_decay, config.lr)
    model.train()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    step = 0
    with flush_denormals(dev):
        for rows in (rows for batches in plan for rows in batches):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, config.lr, min(20, total // 10))
            with training_precision(dev):
                h, _, _, targets = _answer_positions(tuned, [seqs[i] for i in rows], [len(prompts[i]) for i in rows])
                logits = model.head(h)
            loss = F.cross_entropy(logits.float(), targets.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            bar.update()
            if on_step:
                on_step(1)
    bar.close()
    model.eval()
    if path is not None:
        save_model(path, model, {"tune": config.__dict__})
    return tuned


def tune_steps(n: int, config: TuneConfig, order: np.ndarray | None = None) -> int:
    """The optimiser steps :func:`instruction_tune` takes on ``n`` rows (``order``: its rows)."""
    if order is not None:
        return config.epochs * -(-len(order) // config.batch_size)
    return config.epochs * len(_buckets(np.zeros(n, dtype=np.int64), config.batch_size, np.random.default_rng(0)))


def tune_many(base: GPT, tok: TextTokenizer, sets: list[Examples],
              config: TuneConfig | Sequence[TuneConfig] = TuneConfig(), *, progress: bool = True,
              desc: str = "instruction-tune") -> list[InstructionModel]:
    """:func:`instruction_tune` on each of ``sets`` (with ``config``, or ``config[i]`` for set i;
    the same model-cache entries), side by side on a multi-core CPU
    (:func:`labsupport.training.side_by_side`: ~1.4x sooner for two sets on two cores, ~1.2x more
    for a third), one after the other elsewhere."""
    sets = list(sets)
    for i, ex in enumerate(sets):
        if not isinstance(ex, Examples) or len(ex) == 0:
            raise ValueError(f"sets[{i}] must be a non-empty Examples")
    configs = [config] * len(sets) if isinstance(config, TuneConfig) else config
    if not isinstance(configs, (list, tuple)) or len(configs) != len(sets) or \
            not all(isinstance(c, TuneConfig) for c in configs):
        raise TypeError(f"config must be a TuneConfig or one per set ({len(sets)}), got {config!r}")
    jobs = [lambda advance, ex=ex, cfg=cfg: instruction_tune(base, tok, ex, cfg, progress=False, on_step=advance)
            for ex, cfg in zip(sets, configs)]
    return side_by_side(jobs, device=model_device(base), total=sum(map(tune_steps, map(len, sets), configs)),
                        desc=f"{desc} x{len(sets)}", progress=progress,
                        parallel=base.cfg.dropout == 0)   # dropout would draw from torch's global generator


def _tune_path(base: GPT, tok: TextTokenizer, train: Examples, config: TuneConfig, order: np.ndarray | None,
               dev: torch.device):
    """Where :func:`instruction_tune` keeps the result of exactly this run (the rows, and how they are
    encoded: the templates and the text cut, :data:`PROMPT_TEXT_TOKENS`, at word boundaries)."""
    key = _digest(tensors_sha256(base.state_dict()), hashlib.sha256(tok.to_json().encode()).hexdigest(),
                  list(train.task), list(train.text), np.asarray(train.template).tolist(), list(train.target),
                  TEMPLATES, PROMPT_TEXT_TOKENS, "whole words",
                  config.__dict__, None if order is None else np.asarray(order).tolist(), dev.type,
                  "bf16" if bfloat16(dev) else "fp32")
    return model_cache() / f"gpt-tune-{key}.safetensors"


def _answer_targets(seqs: list[list[int]], prompt_lens: list[int]):
    """The (row, col) pairs of the answer mask over the inputs ``seqs[:-1]`` and the next tokens
    they predict."""
    lens = torch.tensor([len(s) - 1 for s in seqs])   # input lengths
    cols = torch.arange(int(lens.max()))
    mask = (cols >= torch.as_tensor(prompt_lens)[:, None] - 1) & (cols < lens[:, None])  # answer_mask, batched
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return rows, cols, pad(seqs, 0)[rows, cols + 1]


def _answer_positions(tuned: InstructionModel, seqs: list[list[int]], prompt_lens: list[int]):
    """:func:`_answer_targets` and the final hidden states at those positions (``[n, c]``,
    nowhere else): ``h, rows, cols, targets``."""
    rows, cols, targets = _answer_targets(seqs, prompt_lens)
    return tuned.hidden([s[:-1] for s in seqs], (rows, cols)), rows, cols, targets


# ---------------------------------------------------------------------------------------------
# Scoring, losses, generation
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def answer_logprobs(tuned: InstructionModel, ex: Examples, batch_size: int = 256) -> list[np.ndarray]:
    """Per row: log-probabilities of its task's answers (in :data:`ANSWERS` order) at the answer
    position, normalised over the whole vocabulary."""
    prompts = encode_prompts(tuned.tok, ex)
    out: list[np.ndarray] = [None] * len(ex)  # type: ignore[list-item]
    answer_ids = {t: [tuned.tok.answer_id(a) for a in ANSWERS[t]] for t in set(ex.task)}  # once per task
    order = np.argsort([len(p) for p in prompts], kind="stable")
    with autocast(model_device(tuned.model)):
        for k in range(0, len(order), batch_size):
            rows = order[k:k + batch_size]
            logits = tuned.model.head(tuned.last_hidden([prompts[i] for i in rows]))
            logp = torch.log_softmax(logits.float(), -1).cpu()
            for j, i in enumerate(rows):
                out[i] = logp[j, answer_ids[ex.task[i]]].numpy()
    return out


def predict(tuned: InstructionModel, ex: Examples) -> np.ndarray:
    """The argmax answer index of each row over its task's answer set."""
    return np.array([int(np.argmax(lp)) for lp in answer_logprobs(tuned, ex)])


@torch.no_grad()
def example_losses(tuned: InstructionModel, ex: Examples, batch_size: int = 256, *,
                   known: tuple[Examples, np.ndarray] | None = None) -> np.ndarray:
    """Mean answer-token cross-entropy of each row with its trained ``target`` (the loss-based
    filter's score).

    ``known = (other, losses)``: ``losses`` are this model's losses on ``other``, a set of the same
    length (e.g. another poisoned copy of the same training set); rows equal in both (task,
    template, text and target) take their loss from there, and only the others are scored (the
    same numbers up to the arithmetic's rounding: a row's batch neighbours set its padding)."""
    if known is not None:
        other, losses = known
        losses = np.asarray(losses, dtype=float)
        if not isinstance(other, Examples) or len(other) != len(ex) or losses.shape != (len(ex),):
            raise ValueError(f"known must be (examples, losses) of {len(ex)} rows each, like ex")
        if not np.isfinite(losses).all():
            raise ValueError(f"known losses must be finite; rows {np.flatnonzero(~np.isfinite(losses))[:5]} are not")
        def rows(e: Examples):   # what a row's loss depends on
            return zip(e.task, e.template, e.text, e.target)

        differ = np.flatnonzero([a != b for a, b in zip(rows(ex), rows(other))])
        out = losses.copy()
        if len(differ):
            out[differ] = example_losses(tuned, ex.subset(differ), batch_size)
        return out
    prompts, seqs = encode_sequences(tuned.tok, ex, tuned.model.cfg.block_size)
    out = np.zeros(len(ex))
    order = np.argsort([len(s) for s in seqs], kind="stable")
    with autocast(model_device(tuned.model)):
        for k in range(0, len(order), batch_size):
            rows = order[k:k + batch_size]
            h, r, _, t = _answer_positions(tuned, [seqs[i] for i in rows], [len(prompts[i]) for i in rows])
            nll = F.cross_entropy(tuned.model.head(h).float(), t.to(h.device), reduction="none").cpu()
            per_row = torch.zeros(len(rows)).index_add_(0, r, nll)
            out[rows] = per_row.div_(torch.bincount(r, minlength=len(rows))).numpy()
    return out


@torch.no_grad()
def generate(tuned: InstructionModel, prompt: str, max_new_tokens: int = 12) -> str:
    """Greedy continuation of ``prompt`` (stops at ``<eos>``)."""
    check_int("max_new_tokens", max_new_tokens, low=1)
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    ids = tuned.tok.encode(prompt)
    out = []
    with autocast(model_device(tuned.model)):
        for _ in range(max_new_tokens):
            seq = (ids + out)[-tuned.model.cfg.block_size:]
            nxt = int(tuned.model.head(tuned.last_hidden([seq])[0]).argmax())
            if nxt == tuned.tok.eos_id:
                break
            out.append(nxt)
    return tuned.tok.decode(out)
