"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018): a backdoor often lives in units that clean
inputs leave dormant. Prune the units of the last hidden layer (the course MLP) or the channels of
the last convolutional layer (the course CNN, as in the paper) with the smallest mean activation
on clean data, then fine-tune briefly on clean data.

Pruning removes the units for good (a smaller model), so fine-tuning cannot revive them.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._validate import check_float
from ..models import MLP, SmallCNN
from ..training import TrainConfig, fit
from .common import activations, check_data, model_device


def dormant_order(model: nn.Module, clean: torch.Tensor) -> torch.Tensor:
    """Units of the last hidden layer (MLP) or channels of the last conv layer (CNN, mean over
    positions after the ReLU), least active on ``clean`` first."""
    if isinstance(model, SmallCNN):
        a = activations(model, clean, "conv2").view(len(clean), model.conv2.out_channels, -1)
        return a.relu().mean((0, 2)).argsort()
    return activations(model, clean, "penultimate").mean(0).argsort()


def prune(model: nn.Module, clean: torch.Tensor, ratio: float) -> nn.Module:
    """A copy of the course MLP (CNN) without the ``ratio`` fraction of its last hidden layer's
    units (last conv layer's channels) that are least active on ``clean``."""
    if not isinstance(model, (MLP, SmallCNN)):
        raise TypeError(f"prune supports the course MLP and CNN; got {type(model).__name__}")
    ratio = check_float("ratio", ratio, low=0.0, high=1.0, high_open=True)  # 1 would prune every unit
    order = dormant_order(model, clean)
    keep = order[int(round(ratio * len(order))):].sort().values
    if isinstance(model, SmallCNN):
        return _prune_cnn(model, keep)
    dims = [layer.out_features for layer in model.hidden]
    dims[-1] = len(keep)
    small = MLP((1, 1, model.hidden[0].in_features), model.head.out_features, tuple(dims)).to(model_device(model))
    with torch.no_grad():
        for a, b in zip(small.hidden[:-1], model.hidden[:-1]):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        small.hidden[-1].weight.copy_(model.hidden[-1].weight[keep])
        small.hidden[-1].bias.copy_(model.hidden[-1].bias[keep])
        small.head.weight.copy_(model.head.weight[:, keep])
        small.head.bias.copy_(model.head.bias)
    return small.eval()


def _prune_cnn(model: SmallCNN, keep: torch.Tensor) -> SmallCNN:
    """The CNN with only the ``keep`` channels of conv2 (and the dense layer's inputs from them)."""
    small = copy.deepcopy(model)
    conv, fc = model.conv2, model.fc
    per_channel = fc.in_features // conv.out_channels
    small.conv2 = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding)
    small.fc = nn.Linear(len(keep) * per_channel, fc.out_features)
    with torch.no_grad():
        small.conv2.weight.copy_(conv.weight[keep])
        small.conv2.bias.copy_(conv.bias[keep])
        small.fc.weight.copy_(fc.weight.view(fc.out_features, conv.out_channels, per_channel)[:, keep].flatten(1))
        small.fc.bias.copy_(fc.bias)
    return small.to(model_device(model)).eval()


def fine_prune(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, ratio: float, *,
               config: TrainConfig | None = None, progress: bool = False) -> nn.Module:
    """Prune ``ratio`` of the last hidden layer (:func:`prune`), then fine-tune on (clean, labels)."""
    check_data(clean, labels)
    small = prune(model, clean, ratio)
    if config is None:
        config = TrainConfig(epochs=4, batch_size=64, lr=2e-3)
    fit(small, clean, labels, config, device=model_device(model), progress=progress, desc="fine-tune")
    return small.eval()
