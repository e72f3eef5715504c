"""Models used in the course: the reference MLP, a small CNN and ResNet18 (CIFAR variant).

All models take images (N, C, H, W) in [0, 1] and return logits (N, num_classes). Each exposes
``features(x)``, the penultimate activations, which the defenses of Lab 4 inspect.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import check_choice, check_int

MODEL_NAMES = ("logreg", "mlp", "cnn", "resnet18")


class LogReg(nn.Module):
    """Multinomial logistic regression: flatten -> one linear layer (Lab 1's convex model)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.head = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class MLP(nn.Module):
    """The course reference model: flatten -> 256 -> 128 -> classes with ReLU (784-256-128-10)."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10,
                 hidden: tuple[int, ...] = (256, 128)) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
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

    @torch.no_grad()
    def manual_step(self, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Forward + backward of the mean cross-entropy by hand; sets every ``.grad``, returns the loss.

        The same gradients as autograd (``tests/test_training.py`` checks it), without the graph:
        on a 2-core CPU the reference run's steps are small enough that autograd's bookkeeping
        costs about as much as the matrix products. Gradient of softmax cross-entropy w.r.t. the
        logits: ``softmax(z) - q`` with ``q = (1 - s) * onehot(y) + s / K``, divided by the batch size.
        """
        acts = [x.flatten(1)]
        for layer in self.hidden:
            acts.append(torch.addmm(layer.bias, acts[-1], layer.weight.t()).relu_())
        logp = torch.addmm(self.head.bias, acts[-1], self.head.weight.t()).log_softmax(1)
        n, k = logp.shape
        rows = torch.arange(n, device=x.device)
        loss = -logp[rows, y].mean()
        if label_smoothing:
            loss = (1 - label_smoothing) * loss - label_smoothing * logp.mean()
        grad = logp.exp_()
        if label_smoothing:
            grad.sub_(label_smoothing / k)
        grad[rows, y] -= 1 - label_smoothing
        grad.div_(n)
        layers = [*self.hidden, self.head]
        for i in range(len(layers) - 1, -1, -1):
            layers[i].weight.grad = grad.t().mm(acts[i])
            layers[i].bias.grad = grad.sum(0)
            if i:
                grad = grad.mm(layers[i].weight).mul_(acts[i] > 0)
        return loss


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks (16, 32 channels, ReLU, 2x2 max-pool) and a 128-unit dense layer.

    Small on purpose: one epoch of 60k Fashion-MNIST images takes seconds on a 2-core CPU."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
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
        self.in_shape = tuple(in_shape)
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
    """Build a fresh model by name: ``"logreg"``, ``"mlp"``, ``"cnn"`` or ``"resnet18"``."""
    check_choice("name", name, MODEL_NAMES)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (C, H, W); got {in_shape}")
    check_int("num_classes", num_classes, low=2)
    if name == "logreg":
        return LogReg(in_shape, num_classes)
    if name == "mlp":
        return MLP(in_shape, num_classes)
    if name == "cnn":
        if in_shape[1] < 4 or in_shape[2] < 4:
            raise ValueError(f"in_shape {in_shape} is too small for the CNN (needs H, W >= 4)")
        return SmallCNN(in_shape, num_classes)
    return ResNet18(in_shape, num_classes)
