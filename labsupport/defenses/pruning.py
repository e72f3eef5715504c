"""Fine-pruning (Liu, Dolan-Gavitt & Garg 2018): a backdoor often lives in units that clean
inputs leave dormant. Prune the units of the last hidden layer (the course MLP) or the channels of
the last convolutional layer (the course CNN, as in the paper) with the smallest mean activation
on clean data, then fine-tune on clean data.

Pruning removes the units for good (a smaller model), so fine-tuning cannot revive them. The
fine-tuning is most of the defense on the course MLP: 4 epochs leave ASR at 29-71 % (ratio
0.9-0.8, 2,000 clean images), 20 epochs on 5,000 images bring it to 8-19 % at ratio 0.95 with
2-2.6 points of clean accuracy (five training seeds; BENCHMARKS.md, ninth session).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .._validate import check_float, check_images, check_labels
from ..metrics import attack_success_rate, clean_accuracy
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
    small = MLP(model.in_shape, model.head.out_features, tuple(dims)).to(model_device(model))
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


#: the fine-tuning after pruning: 20 epochs at the course learning rate (4 epochs leave the backdoor)
FINE_TUNE = TrainConfig(epochs=20, batch_size=64, lr=2e-3)


def fine_prune(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, ratio: float, *,
               config: TrainConfig | None = None, progress: bool = False) -> nn.Module:
    """Prune ``ratio`` of the last hidden layer (:func:`prune`), then fine-tune on (clean, labels)
    with ``config`` (default :data:`FINE_TUNE`)."""
    check_data(clean, labels)
    small = prune(model, clean, ratio)
    config = FINE_TUNE if config is None else config
    fit(small, clean, labels, config, device=model_device(model), progress=progress, desc="fine-tune")
    return small.eval()


@dataclass
class PruningCurve:
    """CA and ASR (in %) after fine-pruning at each ratio; ``before`` = (CA, ASR) of the model."""

    ratios: list[float]
    ca: list[float]
    asr: list[float]
    before: tuple[float, float]

    def meets(self, max_asr: float = 20.0, max_ca_drop: float = 3.0) -> list[float]:
        """The ratios whose ASR is at most ``max_asr`` with a CA drop of at most ``max_ca_drop`` points."""
        return [r for r, c, a in zip(self.ratios, self.ca, self.asr)
                if a <= max_asr and self.before[0] - c <= max_ca_drop]

    def __repr__(self) -> str:
        pts = ", ".join(f"{r:g}: CA {c:.1f} / ASR {a:.1f}" for r, c, a in zip(self.ratios, self.ca, self.asr))
        return f"PruningCurve(before CA {self.before[0]:.1f} / ASR {self.before[1]:.1f}; {pts})"


def plot_curves(curves: dict[str, PruningCurve], *, title: str = "fine-pruning"):
    """Two panels, ASR and clean accuracy against the pruning ratio, one line per named curve (all
    measured at the same ratios); the clean accuracy before pruning in the second panel's title,
    where every curve shares it. Returns the figure."""
    import matplotlib.pyplot as plt

    from ..viz import plot_curve

    if not isinstance(curves, dict) or not curves or not all(isinstance(c, PruningCurve) for c in curves.values()):
        raise TypeError("curves must be a non-empty dict of name -> PruningCurve (pruning_curve(...))")
    ratios = next(iter(curves.values())).ratios
    if any(c.ratios != ratios for c in curves.values()):
        raise ValueError(f"every curve must use the same ratios; got {[c.ratios for c in curves.values()]}")
    before = {round(c.before[0], 1) for c in curves.values()}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    plot_curve(ratios, {k: c.asr for k, c in curves.items()}, xlabel="fraction of units pruned", ylabel="ASR (%)",
               title=title, ax=axes[0])
    plot_curve(ratios, {k: c.ca for k, c in curves.items()}, xlabel="fraction of units pruned", ylabel="CA (%)",
               title=f"clean accuracy (before: {before.pop():.1f}%)" if len(before) == 1 else "clean accuracy",
               ax=axes[1])
    return fig


def pruning_curve(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, ratios: Sequence[float],
                  x_eval: torch.Tensor, y_eval: torch.Tensor, trigger: Callable[[torch.Tensor], torch.Tensor],
                  target: int, *, config: TrainConfig | None = None, progress: bool = True) -> PruningCurve:
    """:func:`fine_prune` at each ratio (ratio 0: fine-tuning alone), CA and ASR on (x_eval, y_eval)."""
    check_images("x_eval", x_eval)
    check_labels("y_eval", y_eval, n=len(x_eval))
    if len(ratios) == 0:
        raise ValueError("ratios is empty; give at least one pruning ratio in [0, 1)")
    ca, asr = [], []
    for r in tqdm(ratios, desc="fine-pruning", disable=not progress, leave=False):
        fixed = fine_prune(model, clean, labels, r, config=config)
        ca.append(100 * clean_accuracy(fixed, x_eval, y_eval))
        asr.append(100 * attack_success_rate(fixed, x_eval, y_eval, trigger, target))
    before = (100 * clean_accuracy(model, x_eval, y_eval),
              100 * attack_success_rate(model, x_eval, y_eval, trigger, target))
    return PruningCurve(list(ratios), ca, asr, before)
