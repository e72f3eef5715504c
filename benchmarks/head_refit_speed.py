"""Poison Frogs' victim heads: 50 last-layer refits by batched Newton vs one L-BFGS fit at a time.

Both solve the same 50 convex problems (the course transfer task: 500 frozen-feature rows, five
classes, weight decay 1e-4; each setup's five "collide" poisons in place of their bases), each
started from the clean head. Prints each solver's time, the largest objective difference (Newton
minus L-BFGS, negative = Newton lower), how many of the 250,000 test predictions differ, and
``speedup: N.Nx`` as its last line.

    python benchmarks/head_refit_speed.py
"""

from __future__ import annotations

import platform
import time

import torch
from torch.nn import functional as F

import labsupport as ls
from labsupport.poisoning import feature_collision as frogs
from labsupport.poisoning import gradient_canceling as gc


def main() -> None:
    ls.configure_threads()
    task = frogs.course_task(ls.load_dataset("fashion-mnist"))
    setups = frogs.load_setups(task)
    result = frogs.poison_frogs(task, setups, per_target=5, beta0=0.001, steps=3000, progress=False)
    ftrain, ftest = frogs.features(task.extractor, task.x_train), frogs.features(task.extractor, task.x_test)
    sets = frogs.poisoned_feature_sets(task, ftrain, result.poisons, result.base_rows, 5)
    clean = frogs.fit_head(task)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    t = time.perf_counter()
    single = [gc.fit_logreg(s, task.y_train, 5, l2=frogs.HEAD_L2, init=clean) for s in sets]
    t_single = time.perf_counter() - t
    t = time.perf_counter()
    many = gc.fit_logreg_many(sets, task.y_train, 5, l2=frogs.HEAD_L2, init=clean)
    t_many = time.perf_counter() - t

    def objective(m: gc.Linear, x: torch.Tensor) -> float:
        return float(F.cross_entropy(x @ m.W.T + m.b, task.y_train) + 0.5 * frogs.HEAD_L2 * (m.W ** 2).sum())

    diff = max(objective(a, s) - objective(b, s) for a, b, s in zip(many, single, sets))
    flips = sum(int((a.logits(ftest).argmax(1) != b.logits(ftest).argmax(1)).sum()) for a, b in zip(many, single))
    print(f"L-BFGS one by one {t_single:6.2f} s")
    print(f"batched Newton    {t_many:6.2f} s   objective - L-BFGS's: at most {diff:+.1e}; "
          f"{flips} of {len(setups) * len(ftest)} test predictions differ")
    print(f"speedup: {t_single / t_many:.1f}x")


if __name__ == "__main__":
    main()
