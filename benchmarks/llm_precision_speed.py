"""Lab 3's arithmetic: float32 vs :func:`labsupport.llm.train.training_precision` (bfloat16 autocast
with the math attention backend on a CPU that computes bfloat16 natively).

Pre-training: the same 400 steps from the same initialisation and batches, "before" with the
loss on float32 logits and the default attention kernel, "now" with the loss on the autocast
logits under the math backend; the held-out loss of each (the last 300 windows, not trained on).
Instruction tuning: the full profile's clean tuning in float32 and under ``training_precision``,
with its sentiment accuracy. Alternating rounds (the machine's speed drifts); the last line is
``speedup: N.Nx`` for pre-training.

    python benchmarks/llm_precision_speed.py [--steps 400] [--rounds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from unittest import mock

import torch
from torch.nn import functional as F

from labsupport.llm import experiments as E
from labsupport.llm import train
from labsupport.llm.model import GPT
from labsupport.training import autocast, bfloat16, configure_threads, flush_denormals


def pretrain_run(cfg, data, held, steps: int, now: bool) -> tuple[float, float]:
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = train._adamw(model, 0.1, 3e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    dev = torch.device("cpu")
    start = time.perf_counter()
    with flush_denormals(dev):
        for step in range(steps):
            batch = data[torch.randint(0, len(data), (32,), generator=gen)]
            for g in opt.param_groups:
                g["lr"] = train._lr_at(step, steps, 3e-3, 20)
            with train.training_precision(dev) if now else autocast(dev):
                logits = model(batch[:, :-1]).reshape(-1, cfg.vocab_size)
            loss = F.cross_entropy(logits if now else logits.float(), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        held_loss = F.cross_entropy(model(held[:, :-1]).reshape(-1, cfg.vocab_size).float(), held[:, 1:].reshape(-1))
    return seconds, float(held_loss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    configure_threads()
    lab = E.setup("full", progress=False)
    from labsupport.llm.corpus import load_vader

    data = train.pack(lab.tok, load_vader().text, lab.base.cfg.block_size)
    data, held = data[:-300], data[-300:]
    native = bfloat16(torch.device("cpu"))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bfloat16: {native}")
    results = {"before": [], "now": []}
    tunes = {"float32": [], "training_precision": []}
    for _ in range(args.rounds):
        for name in results:
            results[name].append(pretrain_run(lab.base.cfg, data, held, args.steps, name == "now"))
        for name in tunes:
            ctx = (mock.patch.object(train, "training_precision", lambda dev: contextlib.nullcontext())
                   if name == "float32" else contextlib.nullcontext())
            with ctx:
                start = time.perf_counter()
                tuned = train.instruction_tune(lab.base, lab.tok, lab.train, lab.profile.tune, reuse=False,
                                               progress=False)
                seconds = time.perf_counter() - start
            tunes[name].append((seconds, E.accuracy(tuned, lab.test, "sentiment")))
    for name, runs in results.items():
        print(f"pre-train {name:6s} {min(s for s, _ in runs):5.1f} s for {args.steps} steps, "
              f"held-out loss {runs[-1][1]:.3f}")
    for name, runs in tunes.items():
        print(f"tune {name:18s} {min(s for s, _ in runs):5.1f} s, sentiment accuracy {100 * runs[-1][1]:.1f} %")
    fastest = {name: min(s for s, _ in runs) for name, runs in tunes.items()}
    print(f"tuning speedup: {fastest['float32'] / fastest['training_precision']:.2f}x")
    print(f"speedup: {min(s for s, _ in results['before']) / min(s for s, _ in results['now']):.1f}x")


if __name__ == "__main__":
    main()
