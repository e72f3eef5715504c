"""Plots for the labs: image grids, clean-vs-poisoned pairs and poison-count curves."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from ._validate import check_images, check_int
from .experiments import AttackReport


def show_images(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int = 8,
                scale: float = 1.4, suptitle: str | None = None) -> plt.Figure:
    """A grid of images (N, C, H, W) in [0, 1], grey for one channel."""
    check_images("images", images)
    check_int("ncols", ncols, low=1)
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    ncols = min(ncols, max(n, 1))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].detach().cpu().clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def compare_grid(clean: torch.Tensor, poisoned: torch.Tensor, labels: Sequence[str] | None = None,
                 *, n: int = 8, title: str | None = None) -> plt.Figure:
    """Two rows: clean images on top, their poisoned versions below."""
    check_images("clean", clean)
    check_images("poisoned", poisoned)
    if clean.shape != poisoned.shape:
        raise ValueError(f"clean {tuple(clean.shape)} and poisoned {tuple(poisoned.shape)} differ in shape")
    n = min(check_int("n", n, low=1), len(clean))
    titles = [f"clean {labels[i]}" if labels else "clean" for i in range(n)]
    titles += [f"-> {labels[n + i]}" if labels and len(labels) > n else "poisoned" for i in range(n)]
    return show_images(torch.cat([clean[:n], poisoned[:n]]), titles, ncols=n, suptitle=title)


def plot_sweep(reports: Sequence[AttackReport], *, title: str = "How many poisons are needed?",
               paper_asr: float | None = None) -> plt.Figure:
    """ASR and clean accuracy against the number of poisons (log x axis)."""
    if not reports:
        raise ValueError("reports is empty")
    counts = [r.poisons for r in reports]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(counts, [100 * r.asr for r in reports], "o-", label="ASR (poisoned model)")
    ax.plot(counts, [100 * r.asr_baseline for r in reports], "x--", color="grey", label="ASR (clean model)")
    ax.plot(counts, [100 * r.ca for r in reports], "s-", label="clean accuracy")
    ax.axhline(100 * reports[0].ca_baseline, color="C2", ls=":", label="clean accuracy, baseline")
    if paper_asr is not None:
        ax.axhline(100 * paper_asr, color="C3", ls="-.", lw=1, label="paper ASR")
    ax.set_xscale("log")
    ax.set_xlabel(f"poisoned training images (of {round(counts[0] / reports[0].rate) if reports[0].rate else '?'})")
    ax.set_ylabel("%")
    ax.set_ylim(0, 102)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curve(xs: Sequence[float], series: dict[str, Sequence[float]], *, xlabel: str,
               ylabel: str = "%", title: str = "") -> plt.Figure:
    """A small line plot of several named series against ``xs`` (e.g. ASR vs test alpha)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} points for {len(xs)} x values")
        ax.plot(xs, ys, "o-", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
