"""Models used in the course: the reference MLP, a small CNN and ResNet18 (CIFAR variant).

All models take images (N, C, H, W) in [0, 1] and return logits (N, num_classes). Each exposes
``features(x)``, the penultimate activations, which the defenses of Lab 4 inspect.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import check_choice, check_int

MODEL_NAMES = ("mlp", "cnn", "resnet18")


class MLP(nn.Module):
    """The course reference model: flatten -> 256 -> 128 -> classes with ReLU (784-256-128-10)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        dims = [in_shape[0] * in_shape[1] * in_shape[2], *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (16, 32 channels, ReLU, 2x2 max-pool) and a 128-unit dense layer.

    Small on purpose: one epoch of 60k Fashion-MNIST images takes seconds on a 2-core CPU."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        c, h, w = in_shape
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * (h // 4) * (w // 4), 128)
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # max-pool then ReLU equals ReLU then max-pool (both monotone) and touches 4x fewer values
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet18, CIFAR variant (He et al. 2016): 3x3 stem without max-pool, 4 stages of 2 blocks."""

    def __init__(self, in_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                 width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int = 10) -> nn.Module:
    """Build a fresh model by name: ``"mlp"``, ``"cnn"`` or ``"resnet18"``."""
    check_choice("name", name, MODEL_NAMES)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W); got {in_shape}")
    check_int("num_classes", num_classes, low=2)
    if name == "mlp":
        return MLP(in_shape, num_classes)
    if name == "cnn":
        if in_shape[1] < 4 or in_shape[2] < 4:
            raise ValueError(f"in_shape {in_shape} is too small for the CNN (needs H, W >= 4)")
        return SmallCNN(in_shape, num_classes)
    return ResNet18(in_shape, num_classes)
