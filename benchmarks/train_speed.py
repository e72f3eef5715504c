"""Training-loop benchmark: labsupport's in-memory loop vs the textbook DataLoader loop.

Both train the course reference configuration (MLP 784-256-128-10, Fashion-MNIST 60k images,
batch 64, AdamW lr 1e-3, 10 epochs) in the same process, one after the other. The textbook loop
(torchvision dataset + ToTensor + DataLoader(shuffle=True) + ``loss.item()`` per step) is run for
``--textbook-steps`` steps and extrapolated per step to the full 10 epochs (9,380 steps); the
output says so. The last line is ``speedup: N.Nx``.

    python benchmarks/train_speed.py [--textbook-steps 1500] [--device auto]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
from torch.nn import functional as F

import labsupport as ls
from labsupport.paths import data_root


def textbook_loop(steps: int, device: torch.device) -> tuple[float, int]:
    """The loop most tutorials teach; returns (seconds, steps run)."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    ls.load_dataset("fashion-mnist")  # make sure <root>/FashionMNIST/raw exists (offline)
    train = datasets.FashionMNIST(str(data_root()), train=True, download=False,
                                  transform=transforms.ToTensor())
    loader = DataLoader(train, batch_size=64, shuffle=True)
    torch.manual_seed(0)
    model = ls.MLP().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    done, running_loss = 0, 0.0
    start = time.perf_counter()
    while done < steps:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            done += 1
            if done >= steps:
                break
    return time.perf_counter() - start, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--textbook-steps", type=int, default=1500)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = ls.pick_device(args.device)
    if device.type == "cpu":
        ls.configure_threads()
    data = ls.load_dataset("fashion-mnist")
    cfg = ls.TrainConfig()  # the reference setting
    total_steps = cfg.epochs * math.ceil(len(data.y_train) / cfg.batch_size)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}")

    start = time.perf_counter()
    model = ls.train_model("mlp", data.x_train, data.y_train, cfg, device=device, cache=False, progress=False)
    ours = time.perf_counter() - start
    acc = ls.clean_accuracy(model, data.x_test, data.y_test)
    print(f"ours:     {ours:7.1f} s for {cfg.epochs} epochs ({total_steps} steps, "
          f"{1000 * ours / total_steps:.2f} ms/step), test accuracy {100 * acc:.2f}%")

    seconds, steps = textbook_loop(args.textbook_steps, device)
    per_step = seconds / steps
    projected = per_step * total_steps
    note = "measured" if steps >= total_steps else f"extrapolated from {steps} steps"
    print(f"textbook: {projected:7.1f} s for {cfg.epochs} epochs ({note}, {1000 * per_step:.2f} ms/step)")
    print(f"speedup: {projected / ours:.1f}x")


if __name__ == "__main__":
    main()
