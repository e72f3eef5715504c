"""Neural Cleanse: all labels in one batched optimisation vs label by label (what the toolkits do).

Both run labsupport.defenses.neural_cleanse with the same schedule (Adam lr 0.1, betas (0.5, 0.9),
cost 1e-3 x2 / /2^1.5 after 5 steps, early stop after 25 steps without a better mask) on the same
BadNets model (course reference setting: Fashion-MNIST, course MLP, 4x4 patch -> 9, 1 % poison,
5 epochs) and 2,000 clean test images, in the arithmetic the lab uses (bfloat16 autocast where
native; ``LABSUPPORT_PRECISION=float32`` for float32), each after a short warm-up run. The last
line is ``speedup: N.Nx``.

    python benchmarks/neural_cleanse_speed.py [--device auto]
"""

from __future__ import annotations

import argparse
import platform

import torch

import labsupport as ls
from labsupport.defenses import neural_cleanse as nc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = ls.pick_device(args.device)
    ls.configure_threads()
    data = ls.load_dataset("fashion-mnist")
    poisoned = ls.badnets(data.x_train, data.y_train, ls.Patch(), 9, rate=0.01, seed=0)
    model = ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=5, batch_size=128, lr=2e-3),
                           device=dev, progress=False)
    clean = data.x_test[:2000]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, device {dev.type}, "
          f"torch {torch.__version__}, bfloat16 autocast: {ls.training.bfloat16(dev)}")
    for batched in (False, True):  # warm-up: the first bfloat16 steps of a process build oneDNN's kernels
        nc.reverse_engineer(model, clean, batched=batched, max_steps=5, progress=False)
    runs = {}
    for batched in (False, True):
        rev = nc.reverse_engineer(model, clean, batched=batched, progress=False)
        name = "batched" if batched else "label by label"
        runs[name] = rev
        low = int(rev.norms.argmin())
        print(f"{name:15s} {rev.seconds:6.1f} s, {int(rev.steps.sum())} label-steps, smallest norm: label "
              f"{low} (index {float(rev.anomaly[low]):.2f}; flagged below norm {rev.flag_bound(low):.1f}, its norm "
              f"{float(rev.norms[low]):.1f}), flagged {rev.flagged()}")
    print(f"speedup: {runs['label by label'].seconds / runs['batched'].seconds:.1f}x")


if __name__ == "__main__":
    main()
