"""Fast in-memory training, evaluation and a model cache keyed by the full training config.

Why it is fast: the whole dataset lives on the device as one tensor; each epoch draws one
``randperm`` and slices batches with ``index_select`` (no ``Dataset.__getitem__``, no PIL, no
collate, no worker processes); AdamW runs ``fused`` on CPU and CUDA; the loss is summed on the
device and read once per epoch. See ``benchmarks/train_speed.py`` for the comparison with the
textbook ``DataLoader`` loop.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ._validate import (
    check_choice,
    check_float,
    check_images,
    check_int,
    check_labels,
    check_nonempty,
    check_optimizer_settings,
)
from .io import IntegrityError, load_model, save_model, update_digest
from .models import MLP, MODEL_NAMES, build_model
from .paths import model_cache

_THREADS_SET = False
_PINNED: int | None = None   # intra-op threads while side_by_side runs jobs (else None)
_MALLOC_KEPT = False
MALLOC_MODES = ("keep", "system")
KEEP_BYTES = 256 * 2**20      # blocks up to this size come from, and go back to, malloc's heap


def cores() -> int:
    """The cores the course may use: ``LABSUPPORT_THREADS``, else all of them."""
    return max(1, int(os.environ.get("LABSUPPORT_THREADS", os.cpu_count() or 1)))


def configure_threads() -> int:
    """One intra-op thread per core (``LABSUPPORT_THREADS`` overrides; inside :func:`side_by_side`
    each job's share) and a single inter-op thread, which on 2 cores would otherwise only compete
    with the intra-op pool; and :func:`keep_freed_memory`. Returns the intra-op thread count."""
    global _THREADS_SET
    torch.set_num_threads(_PINNED or cores())
    keep_freed_memory()
    if not _THREADS_SET:
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already started: only allowed once per process
            pass
        _THREADS_SET = True
    return torch.get_num_threads()


@functools.cache
def glibc() -> bool:
    """Whether this process runs on GNU libc (where :func:`keep_freed_memory` acts)."""
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):                # another C library, or no confstr
        return False


def keep_freed_memory() -> bool:
    """Let glibc's malloc serve blocks up to 256 MiB from its heap and keep up to 256 MiB of freed
    memory there (``mallopt``), once per process. By default a block over 32 MiB is always a fresh
    mapping from the OS, unmapped when freed (a smaller one until freeing such mappings has raised
    the threshold from 128 KiB to its size): each new tensor that size is page-faulted in again.
    Lab 3's pre-training step in float32 (its logits are 32 MiB) runs 1.3-1.7x faster with this
    (``benchmarks/malloc_speed.py``); values are bit for bit the same. ``LABSUPPORT_MALLOC=system``
    leaves malloc alone; with another C library (macOS, musl) it does nothing. Returns whether the
    setting is in force."""
    global _MALLOC_KEPT
    mode = check_choice("LABSUPPORT_MALLOC", os.environ.get("LABSUPPORT_MALLOC", "keep"), MALLOC_MODES)
    if _MALLOC_KEPT or mode == "system" or not glibc():
        return _MALLOC_KEPT
    try:
        mallopt = ctypes.CDLL(None).mallopt      # the process's own C library
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    _MALLOC_KEPT = bool(mallopt(m_mmap_threshold, KEEP_BYTES)) and bool(mallopt(m_trim_threshold, KEEP_BYTES))
    return _MALLOC_KEPT


class _Stopped(Exception):
    """Raised inside a side-by-side job when another job failed or the run was interrupted."""


def side_by_side(jobs: list[Callable[[Callable[[int], None]], object]], *, device: torch.device, total: int,
                 desc: str, progress: bool = True, parallel: bool = True) -> list:
    """Run independent ``jobs`` and return their results in order. Each job is called with an
    ``advance(n)`` callback that moves the shared progress bar (of ``total``) on by ``n``.

    On a CPU with k >= 2 cores (:func:`cores`) the jobs run in Python threads, each with
    max(1, k // (jobs at once)) intra-op threads: all of them at once when there are at most 2k,
    else k at a time. The Lab 3 transformer's small ops use two cores at only ~1.35x the speed of
    one, so two tunings side by side finish ~1.4x sooner than one after the other; three at once
    on two cores (the OS shares the cores between them) finish ~1.2x sooner than two side by side
    and then the third alone (BENCHMARKS.md). On two cores every job so runs on one intra-op
    thread: the arithmetic is that of a one-thread run however the OS schedules the threads, and a
    model trained this way differs from one trained on all cores as models trained on two CPUs do
    (a few tenths of a point in Lab 3's numbers). Elsewhere (CUDA, one core, one job,
    ``parallel=False``) one after the other. Jobs run side by side must not draw from torch's
    global random generator (the order of draws between threads is not fixed). An exception in a
    job, or an interrupt, stops the other jobs at their next ``advance`` (the queued ones never
    start) and is raised here."""
    global _PINNED
    k = cores()
    workers = 1
    if parallel and device.type == "cpu" and _PINNED is None and k >= 2:
        workers = len(jobs) if len(jobs) <= 2 * k else k
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    if workers < 2:
        try:
            return [job(bar.update) for job in jobs]
        finally:
            bar.close()
    done, lock, stop = [0], threading.Lock(), threading.Event()

    def advance(n: int = 1) -> None:
        if stop.is_set():
            raise _Stopped
        with lock:
            done[0] += n

    def run(job):
        torch.set_num_threads(_PINNED)   # a new thread takes the count set last, but be explicit
        return job(advance)

    before = torch.get_num_threads()
    _PINNED = max(1, k // workers)
    torch.set_num_threads(_PINNED)
    pool = ThreadPoolExecutor(workers)
    try:
        futures = [pool.submit(run, job) for job in jobs]
        while not all(f.done() for f in futures):   # the bar moves in this thread (notebook widgets)
            time.sleep(0.1)
            if done[0] > bar.n:
                bar.update(done[0] - bar.n)
            if any(f.done() and f.exception() for f in futures):
                break
        stop.set()
        for f in futures:   # the first real error (the others were stopped because of it)
            if f.done() and f.exception() and not isinstance(f.exception(), _Stopped):
                raise f.exception()
        return [f.result() for f in futures]
    finally:   # on an error or an interrupt: running jobs stop at their next step, queued ones never start
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        _PINNED = None
        torch.set_num_threads(before)
        bar.close()


PRECISIONS = ("auto", "float32")


def precision() -> str:
    """``LABSUPPORT_PRECISION``: ``"auto"`` (the default: bfloat16 where native) or ``"float32"``
    (everywhere, e.g. to reproduce the numbers of a CPU without bfloat16 on one that has it)."""
    return check_choice("LABSUPPORT_PRECISION", os.environ.get("LABSUPPORT_PRECISION", "auto"), PRECISIONS)


def autocast(dev: torch.device, enabled: bool = True):
    """bfloat16 autocast where the hardware computes it natively (CUDA, CPUs with AVX512-BF16/AMX:
    2-3x faster steps here), else - or with ``LABSUPPORT_PRECISION=float32`` - a no-op. Used by
    Lab 3's transformer (trained and scored in it) and Neural Cleanse's trigger search (its mask
    norms and flags move within their run-to-run spread, BENCHMARKS.md).
    ``enabled=False``: float32 inside, even within an enabled autocast."""
    return torch.autocast("cuda" if dev.type == "cuda" else "cpu", dtype=torch.bfloat16,
                          enabled=enabled and bfloat16(dev))


def bfloat16(dev: torch.device) -> bool:
    """Whether :func:`autocast` computes in bfloat16 on ``dev`` (CUDA, or a CPU with native
    bfloat16, unless ``LABSUPPORT_PRECISION=float32``); cache keys and reports read it."""
    if precision() != "auto":
        return False
    return dev.type == "cuda" or (dev.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` pass through."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda' or a torch.device, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r} is not allowed; choose 'auto', 'cpu' or 'cuda[:N]'")
    return torch.device(device)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (inputs go there; results come back with ``.cpu()``)."""
    return next(model.parameters()).device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA)."""
    check_int("seed", seed, low=0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. The defaults are the course reference setting
    (AdamW lr 1e-3, batch 64, 10 epochs).

    Attributes:
        epochs: passes over the training set (>= 1).
        batch_size: examples per step (>= 1).
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).
        seed: seeds the initial weights and the shuffling.
        augment: ``"none"`` or ``"crop-flip"`` (random 4-pixel-padded crop + horizontal flip, CIFAR).
        label_smoothing: cross-entropy label smoothing in [0, 1).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    seed: int = 0
    augment: str = "none"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, low=1)
        check_optimizer_settings(self)
        check_choice("augment", self.augment, ("none", "crop-flip"))
        check_float("label_smoothing", self.label_smoothing, low=0.0, high=0.99)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def iterate_batches(n: int, batch_size: int, generator: torch.Generator,
                    device: torch.device) -> Iterator[torch.Tensor]:
    """Yield shuffled index batches covering ``range(n)`` once (the last batch may be smaller)."""
    perm = torch.randperm(n, generator=generator).to(device)
    for start in range(0, n, batch_size):
        yield perm[start:start + batch_size]


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after ``pad``-pixel zero padding and random horizontal flip, batched on device."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (n, w)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class LeanAdamW:
    """AdamW (Loshchilov & Hutter 2019) as one call of PyTorch's fused kernel per step.

    The same kernel and numerics as ``torch.optim.AdamW(fused=True)`` (a test checks they agree),
    minus ~0.4 ms of Python bookkeeping per step, which matters when a step costs ~1.5 ms.
    """

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params]
        self._count = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        pick = lambda seq: [seq[i] for i in live]  # noqa: E731
        torch._foreach_add_(pick(self.steps), 1)  # the kernel expects the step already counted
        torch._fused_adamw_(pick(self.params), [self.params[i].grad for i in live], pick(self.exp_avg),
                            pick(self.exp_avg_sq), [], pick(self.steps), lr=self.lr, beta1=self.betas[0],
                            beta2=self.betas[1], weight_decay=self.weight_decay, eps=self.eps,
                            amsgrad=False, maximize=False)
        self._count += 1
        if self._count % 64 == 0:
            self.scrub_denormals()

    @torch.no_grad()
    def scrub_denormals(self) -> None:
        """Zero first-moment entries below 1e-30 on CPU. Adam's first moment of a weight that has
        stopped receiving gradient decays by beta1 per step and reaches the denormal range after
        ~800 steps; x86 CPUs compute on denormals ~100x slower, which slowed whole runs 2-3x.
        Such entries change the update by < lr * 1e-22, i.e. not at all."""
        for m in self.exp_avg:
            if m.device.type == "cpu":
                m.masked_fill_(m.abs() < 1e-30, 0.0)


@contextmanager
def flush_denormals(dev: torch.device) -> Iterator[None]:
    """Flush denormal floats to zero while training on CPU, then restore IEEE behaviour.

    x86 CPUs compute on denormals ~100x slower (see :meth:`LeanAdamW.scrub_denormals`); besides
    Adam's decaying moments they appear in the backward pass of tanh-GELU, which ran 4x slower
    for it (13 ms vs 3 ms for a 1280 x 512 activation). Values below ~1e-38 change nothing.
    """
    if dev.type != "cpu":
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def make_optimizer(model: nn.Module, config: TrainConfig,
                   extra_params: Iterable[torch.nn.Parameter] = ()) -> LeanAdamW | torch.optim.Optimizer:
    """AdamW over the model's (and any extra) trainable parameters: the lean fused version when
    this PyTorch and device support it, else ``torch.optim.AdamW``."""
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    if hasattr(torch, "_fused_adamw_") and all(p.device.type in ("cpu", "cuda") for p in params):
        return LeanAdamW(params, config.lr, config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=True)

# ``f(xb, yb, idx) -> (xb, yb)``: changes each mini-batch before the step (see :func:`fit`)
BatchHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig = TrainConfig(),
        *, device: str | torch.device = "auto", progress: bool = True,
        batch_hook: BatchHook | None = None,
        extra_params: Iterable[torch.nn.Parameter] = (),
        extra_loss: Callable[[], torch.Tensor] | None = None, desc: str = "train") -> list[float]:
    """Train ``model`` in place with AdamW and cross-entropy; return the mean loss of each epoch.

    Args:
        model: any module mapping (N, C, H, W) to logits.
        x: training images (N, C, H, W), float in [0, 1].
        y: int64 labels (N,).
        config: hyper-parameters (:class:`TrainConfig`).
        device: ``"auto"`` (CUDA if present), ``"cpu"`` or ``"cuda"``.
        progress: show a tqdm bar over epochs.
        batch_hook: optional ``f(xb, yb, idx) -> (xb, yb)`` applied to every batch (``idx`` are the
            rows of ``x``) before the forward pass; attacks that poison on the fly use it (BaN).
        extra_params: more parameters optimised jointly with the model (a trigger generator).
        extra_loss: optional ``f() -> scalar`` added to each step's loss after ``batch_hook`` ran
            (BaN's trigger-diversity term).
    """
    check_images("x", x)
    check_nonempty("x", x)
    check_input_shape(model, x)
    check_labels("y", y, n=len(x))
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    dev = pick_device(device)
    if dev.type == "cpu":
        configure_threads()
    with flush_denormals(dev):
        return _fit(model, x, y, config, dev, progress, batch_hook, extra_params, extra_loss, desc)


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, dev: torch.device,
         progress: bool, batch_hook: Callable | None, extra_params: Iterable[torch.nn.Parameter],
         extra_loss: Callable[[], torch.Tensor] | None, desc: str) -> list[float]:
    model.to(dev).train()
    x_dev, y_dev = x.to(dev), y.to(dev, torch.int64)
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        # channels-last convolutions are ~1.4x faster with oneDNN on CPU and use tensor cores on GPU
        model.to(memory_format=torch.channels_last)
        x_dev = x_dev.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config, extra_params)
    manual = type(model) is MLP and batch_hook is None and extra_loss is None and config.augment == "none"
    history: list[float] = []
    bar = tqdm(range(config.epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        total = torch.zeros((), device=dev)
        for idx in iterate_batches(len(x_dev), config.batch_size, gen, dev):
            xb, yb = x_dev.index_select(0, idx), y_dev.index_select(0, idx)
            if batch_hook is not None:
                xb, yb = batch_hook(xb, yb, idx)
            if config.augment == "crop-flip":
                xb = crop_flip(xb, gen)
            optimizer.zero_grad(set_to_none=True)
            if manual:  # same gradients as autograd, ~2x faster for the small MLP on CPU
                loss = model.manual_step(xb, yb, config.label_smoothing)
            else:
                loss = F.cross_entropy(model(xb), yb, label_smoothing=config.label_smoothing)
                if extra_loss is not None:
                    (loss + extra_loss()).backward()
                else:
                    loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)
        history.append(float(total) / len(x_dev))
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    model.eval()
    return history


@torch.no_grad()
def check_input_shape(model: nn.Module, x: torch.Tensor) -> None:
    """Images must have the (C, H, W) a course model was built for (``model.in_shape``)."""
    want = getattr(model, "in_shape", None)
    if want is not None and tuple(x.shape[1:]) != tuple(want):
        raise ValueError(f"x holds images of shape {tuple(x.shape[1:])}, but the {type(model).__name__} "
                         f"was built for {tuple(want)} (C, H, W): use the data set it was trained on")


def _evaluate(model: nn.Module, x: torch.Tensor, batch_size: int,
              head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``head`` to the model's logits in eval mode, in large batches; results on CPU."""
    check_images("x", x)
    check_input_shape(model, x)
    check_int("batch_size", batch_size, low=1)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([head(model(x[i:i + batch_size].to(dev))).cpu()
                          for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Predicted class for each image (int64, on CPU)."""
    if len(x) == 0:
        check_images("x", x)
        return torch.empty(0, dtype=torch.int64)
    return _evaluate(model, x, batch_size, lambda z: z.argmax(1))


def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax probabilities (N, classes) on CPU."""
    return _evaluate(model, x, batch_size, lambda z: z.softmax(1))


# ---------------------------------------------------------------------------------------------
# Model cache
# ---------------------------------------------------------------------------------------------

def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 over the bytes, shapes and dtypes of tensors (identifies a training set exactly)."""
    digest = hashlib.sha256()
    for t in tensors:
        update_digest(digest, t, f"{tuple(t.shape)}|{t.dtype}|")
    return digest.hexdigest()


def cache_key(model_name: str, config: TrainConfig, x: torch.Tensor, y: torch.Tensor,
              num_classes: int) -> str:
    """The cache key: model name, number of classes, every config field and the data itself."""
    payload = json.dumps({"model": model_name, "classes": num_classes,
                          "config": dataclasses.asdict(config),
                          "data": tensor_fingerprint(x, y), "version": 1}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def train_model(model_name: str, x: torch.Tensor, y: torch.Tensor, config: TrainConfig = TrainConfig(),
                *, num_classes: int = 10, device: str | torch.device = "auto", cache: bool = True,
                progress: bool = True, desc: str | None = None) -> nn.Module:
    """Build ``model_name`` (seeded by ``config.seed``), train it on (x, y) and return it in eval mode.

    With ``cache=True`` a model trained before with exactly the same name, config and data is
    loaded from the model cache (safetensors) instead of being retrained.
    """
    check_choice("model_name", model_name, MODEL_NAMES)
    check_images("x", x)
    check_nonempty("x", x)
    check_labels("y", y, n=len(x), num_classes=num_classes)
    dev = pick_device(device)
    torch.manual_seed(config.seed)
    model = build_model(model_name, tuple(x.shape[1:]), num_classes).to(dev)
    path = None
    if cache:
        path = model_cache() / f"{model_name}-{cache_key(model_name, config, x, y, num_classes)}.safetensors"
        if path.exists():
            try:
                return load_model(path, model, require_digest=True).eval()
            except (IntegrityError, RuntimeError) as exc:  # corrupt, tampered or from another version
                warnings.warn(f"model cache entry {path.name} failed verification ({exc}); retraining it",
                              stacklevel=2)
                torch.manual_seed(config.seed)
                model = build_model(model_name, tuple(x.shape[1:]), num_classes).to(dev)
    fit(model, x, y, config, device=dev, progress=progress, desc=desc or f"train {model_name}")
    if path is not None:
        save_model(path, model, {"model": model_name, "config": dataclasses.asdict(config)})
    return model.eval()
