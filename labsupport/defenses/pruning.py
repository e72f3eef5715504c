"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018): a backdoor often lives in units that clean
inputs leave dormant. Prune the units of the last hidden layer with the smallest mean activation
on clean data, then fine-tune briefly on clean data.

Pruning removes the units for good (a smaller model), so fine-tuning cannot revive them.
"""

from __future__ import annotations

import torch
from torch import nn

from .._validate import check_float
from ..models import MLP
from ..training import TrainConfig, fit
from .common import activations, check_data, model_device


def dormant_order(model: nn.Module, clean: torch.Tensor) -> torch.Tensor:
    """Units of the last hidden layer, least active on ``clean`` first."""
    return activations(model, clean, "penultimate").mean(0).argsort()


def prune(model: nn.Module, clean: torch.Tensor, ratio: float) -> nn.Module:
    """A copy of the course MLP without the ``ratio`` fraction of its last hidden layer's units
    that are least active on ``clean``."""
    if not isinstance(model, MLP):
        raise TypeError(f"prune supports the course MLP (a last hidden layer of units); got {type(model).__name__}")
    ratio = check_float("ratio", ratio, low=0.0, high=1.0, high_open=True)  # 1 would prune every unit
    order = dormant_order(model, clean)
    keep = order[int(round(ratio * len(order))):].sort().values
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


def fine_prune(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, ratio: float, *,
               config: TrainConfig | None = None, progress: bool = False) -> nn.Module:
    """Prune ``ratio`` of the last hidden layer (:func:`prune`), then fine-tune on (clean, labels)."""
    check_data(clean, labels)
    small = prune(model, clean, ratio)
    if config is None:
        config = TrainConfig(epochs=4, batch_size=64, lr=2e-3)
    fit(small, clean, labels, config, device=model_device(model), progress=progress, desc="fine-tune")
    return small.eval()
