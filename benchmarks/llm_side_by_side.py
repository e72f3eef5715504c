"""Lab 3's independent tunings side by side (:func:`labsupport.llm.train.tune_many`) vs one after
the other on all cores (what ``lab.tune`` does for one set at a time).

The full profile's dirty-label and clean-label sets (1 % poisons each; ``--sets 3`` adds the
denial-of-service set), tuned without the model cache: one after the other
with every core, then side by side in Python threads with the cores split between them.
Alternating rounds (the machine's speed drifts). The ASR of the dirty- and clean-label models is
printed: the two ways differ only in arithmetic (thread count). The last line is
``speedup: N.Nx``.

    python benchmarks/llm_side_by_side.py [--rounds 1] [--sets 2]
"""

from __future__ import annotations

import argparse
import platform
import time
from unittest import mock

import torch

from labsupport.llm import experiments as E
from labsupport.llm import poisoning, train
from labsupport.training import configure_threads, cores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--sets", type=int, default=2, choices=(2, 3))
    args = ap.parse_args()
    lab = E.setup("full", progress=False)
    n = int(0.01 * len(lab.train))
    sets = [poisoning.poison_examples(lab.train, n, trigger="James Bond", target="negative", mode=mode, seed=0).examples
            for mode in ("dirty", "clean", "dos")[: args.sets]]
    cfg = lab.profile.tune
    print(f"machine: {platform.machine()}, {cores()} cores, torch {torch.__version__}, "
          f"{len(sets)} sets of {len(lab.train)} rows x {cfg.epochs} epochs")
    fresh = mock.patch.object(train, "_tune_path", lambda *a, **k: None)   # never load from the model cache
    times = {"one after the other": [], "side by side": []}
    with fresh:
        for _ in range(args.rounds):
            configure_threads()
            start = time.perf_counter()
            alone = [train.instruction_tune(lab.base, lab.tok, ex, cfg, progress=False) for ex in sets]
            times["one after the other"].append(time.perf_counter() - start)
            start = time.perf_counter()
            together = train.tune_many(lab.base, lab.tok, sets, cfg, progress=False)
            times["side by side"].append(time.perf_counter() - start)
    for name, models in (("one after the other", alone), ("side by side", together)):
        asr = [E.evaluate_attack(m, lab.test).asr for m in models[:2]]
        print(f"{name:20s} {min(times[name]):6.1f} s (best of {args.rounds}), ASR dirty / clean-label "
              f"{100 * asr[0]:.1f} / {100 * asr[1]:.1f} %")
    print(f"speedup: {min(times['one after the other']) / min(times['side by side']):.1f}x")


if __name__ == "__main__":
    main()
