"""Plots and widgets for the labs: image grids, clean-vs-poisoned pairs, poison-count curves, and
interactive explorations (a trigger designer, a poison-count slider)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from ._validate import check_choice, check_float, check_images, check_int
from .experiments import AttackReport
from .training import model_device
from .triggers import BlendedPatch, Patch, Trigger, checkerboard, white_square


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
               ylabel: str = "%", title: str = "", bands: dict[str, Sequence[float]] | None = None,
               ax: plt.Axes | None = None) -> plt.Figure:
    """A small line plot of several named series against ``xs`` (e.g. ASR vs test alpha);
    ``bands[name]`` (± half-widths, e.g. a standard deviation over seeds) shades a band."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4)) if ax is None else (ax.figure, ax)
    for name, ys in series.items():
        if len(ys) != len(xs):
            raise ValueError(f"series {name!r} has {len(ys)} points for {len(xs)} x values")
        line, = ax.plot(xs, ys, "o-", label=name)
        if bands and name in bands:
            lo = [y - b for y, b in zip(ys, bands[name])]
            hi = [y + b for y, b in zip(ys, bands[name])]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Interactive explorations (ipywidgets). Each callback is a pure function returning a figure, so
# it is tested without a browser; the widget only wires controls to it.
# ---------------------------------------------------------------------------------------------

TRIGGER_PATTERNS = ("checkerboard", "white square", "noise")
TRIGGER_PLACES = ("bottom-right", "bottom-left", "top-right", "top-left")


def make_trigger(pattern: str = "checkerboard", size: int = 4, place: str = "bottom-right",
                 alpha: float = 1.0, channels: int = 1) -> Trigger:
    """A trigger from a designer's choices: a ``pattern`` of ``size`` pixels at ``place``, pasted
    (``alpha = 1``) or blended in with opacity ``alpha``."""
    check_choice("pattern", pattern, TRIGGER_PATTERNS)
    check_choice("place", place, TRIGGER_PLACES)
    size = check_int("size", size, low=1, high=16)
    alpha = check_float("alpha", alpha, low=0.0, high=1.0, low_open=True)
    if pattern == "checkerboard":
        pat = checkerboard(size, channels)
    elif pattern == "white square":
        pat = white_square(size, channels)
    else:
        pat = torch.rand(channels, size, size, generator=torch.Generator().manual_seed(size))
    patch = Patch(pat, place)
    return patch if alpha == 1.0 else BlendedPatch(patch, alpha)


def trigger_view(model: torch.nn.Module, image: torch.Tensor, classes: Sequence[str], *,
                 pattern: str = "checkerboard", size: int = 4, place: str = "bottom-right",
                 alpha: float = 1.0, target: int | None = None) -> plt.Figure:
    """The trigger designer: ``image`` (C, H, W) clean and stamped side by side, with the model's
    top-3 class probabilities for each (the target, if given, in red)."""
    check_images("image", image.unsqueeze(0))
    trig = make_trigger(pattern, size, place, alpha, channels=image.shape[0])
    pair = torch.stack([image, trig(image.unsqueeze(0))[0]])
    dev = model_device(model)
    with torch.no_grad():
        was = model.training
        model.eval()
        probs = model(pair.to(dev)).softmax(1).cpu()
        model.train(was)
    fig, axes = plt.subplots(1, 4, figsize=(9, 2.4), gridspec_kw={"width_ratios": [1, 1.4, 1, 1.4]})
    for k, (img, p, name) in enumerate(zip(pair, probs, ("clean", "with trigger"))):
        ax_img, ax_bar = axes[2 * k], axes[2 * k + 1]
        ax_img.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
        ax_img.axis("off")
        top = p.topk(3)
        labels = [classes[int(i)] for i in top.indices]
        colors = ["C3" if target is not None and int(i) == target else "C0" for i in top.indices]
        ax_bar.barh(range(3)[::-1], top.values.numpy(), color=colors)
        ax_bar.set_yticks(range(3)[::-1], labels, fontsize=8)
        ax_bar.set_xlim(0, 1)
        ax_bar.set_title(f"{name}: {classes[int(top.indices[0])]} ({100 * float(top.values[0]):.0f}%)", fontsize=9)
    fig.tight_layout()
    return fig


def design_trigger(model: torch.nn.Module, images: torch.Tensor, classes: Sequence[str], *,
                   target: int | None = None):
    """Widget: pick an image, a pattern, its size, place and opacity; see the stamped image and the
    model's prediction update."""
    import ipywidgets as w

    check_images("images", images)

    def show(index: int, pattern: str, size: int, place: str, alpha: float) -> None:
        trigger_view(model, images[index], classes, pattern=pattern, size=size, place=place, alpha=alpha,
                     target=target)
        plt.show()

    return w.interactive(show, index=w.IntSlider(0, 0, len(images) - 1, description="image"),
                         pattern=w.Dropdown(options=TRIGGER_PATTERNS, value="checkerboard"),
                         size=w.IntSlider(4, 1, 8, description="size"),
                         place=w.Dropdown(options=TRIGGER_PLACES, value="bottom-right"),
                         alpha=w.FloatSlider(1.0, min=0.05, max=1.0, step=0.05, description="opacity"))


def sweep_view(reports: Sequence[AttackReport], count: int) -> plt.Figure:
    """The poison-count sweep with the row for ``count`` highlighted and its numbers in the title."""
    counts = [r.poisons for r in reports]
    if count not in counts:
        raise ValueError(f"count={count} is not in the sweep; choose one of {counts}")
    rep = reports[counts.index(count)]
    fig = plot_sweep(reports, title=f"{count} poisons ({100 * rep.rate:.3g}% of the data): "
                                    f"ASR {100 * rep.asr:.1f}%, CA {100 * rep.ca:.1f}%")
    fig.axes[0].axvline(count, color="k", lw=1, alpha=0.5)
    fig.axes[0].plot([count], [100 * rep.asr], "o", ms=12, mfc="none", mec="k")
    return fig


def explore_sweep(reports: Sequence[AttackReport]):
    """Widget: a slider over the precomputed poison counts; the plot and numbers follow."""
    import ipywidgets as w

    if not reports:
        raise ValueError("reports is empty")

    def show(count: int) -> None:
        sweep_view(reports, count)
        plt.show()

    return w.interactive(show, count=w.SelectionSlider(options=[r.poisons for r in reports],
                                                       value=reports[len(reports) // 2].poisons,
                                                       description="poisons"))


def rounds_view(matrix, attack: str) -> plt.Figure:
    """Test accuracy (and the backdoor's ASR) after every round, one line per aggregation rule,
    for one attack of a federated :class:`~labsupport.defenses.federated.FedMatrix`."""
    check_choice("attack", attack, matrix.attacks)
    backdoor = attack == "backdoor"
    fig, axes = plt.subplots(1, 2 if backdoor else 1, figsize=(10 if backdoor else 5.5, 3.4), squeeze=False)
    for rule in matrix.rules:
        res = matrix.results[(rule, attack)]
        rounds = range(1, len(res.accuracy) + 1)
        axes[0, 0].plot(rounds, [100 * a for a in res.accuracy], label=rule)
        if backdoor:
            axes[0, 1].plot(rounds, [100 * a for a in res.asr], label=rule)
    axes[0, 0].set_title(f"accuracy under {attack}")
    axes[0, 0].set_ylim(0, 100)
    if backdoor:
        axes[0, 1].set_title("backdoor ASR")
        axes[0, 1].set_ylim(0, 100)
    for ax in axes[0]:
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def explore_rounds(matrix):
    """Widget: pick an attack; the per-round curves of every rule follow."""
    import ipywidgets as w

    def show(attack: str) -> None:
        rounds_view(matrix, attack)
        plt.show()

    return w.interactive(show, attack=w.Dropdown(options=list(matrix.attacks), value=matrix.attacks[-1],
                                                 description="attack"))


def defense_heatmap(matrix, metric: str = "asr_after") -> plt.Figure:
    """A heat-map of one metric of a :class:`~labsupport.defenses.matrix.DefenseMatrix`:
    defenses down, (attack, rate) across, values in %."""
    cols = matrix.columns
    rows = matrix.defenses
    grid = torch.tensor([[100 * matrix.get(d, a, r, metric) if (d, a, r) in matrix.cells else float("nan")
                          for a, r in cols] for d in rows])
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.5, 0.45 * len(rows) + 1.2))
    im = ax.imshow(grid, cmap="RdYlGn_r" if "asr" in metric or metric == "fpr" else "RdYlGn", vmin=0, vmax=100)
    ax.set_xticks(range(len(cols)), [f"{a}\n{100 * r:g}%" for a, r in cols], fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = float(grid[i, j])
            ax.text(j, i, "—" if v != v else f"{v:.0f}", ha="center", va="center", fontsize=7)
    ax.set_title(f"{metric} (%)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def flip_curves(curve) -> plt.Figure:
    """One panel per model: test accuracy vs fraction flipped per mode, mean ± std over seeds,
    the clean accuracy at rate 0 (a :class:`labsupport.poisoning.FlipCurve`)."""
    models = list(curve.acc)
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.3), squeeze=False)
    xs = [0.0, *curve.rates]
    for ax, m in zip(axes[0], models):
        series, bands = {}, {}
        for mode in curve.acc[m]:
            mean, std = curve.mean_std(m, mode)
            series[mode] = [float(curve.clean[m].mean()), *mean.tolist()]
            bands[mode] = [float(curve.clean[m].std()), *std.tolist()]
        plot_curve(xs, series, xlabel="fraction of labels flipped", ylabel="test accuracy (%)", title=m,
                   bands=bands, ax=ax)
    fig.tight_layout()
    return fig


def svm_attack_view(run, index: int, shape: tuple[int, ...]) -> plt.Figure:
    """The SVM attack point at snapshot ``index`` beside the validation loss so far."""
    check_int("index", index, low=0, high=len(run.snapshots) - 1)
    step = run.snapshot_steps[index]
    fig, (a, b) = plt.subplots(1, 2, figsize=(7, 3))
    a.imshow(run.snapshots[index].reshape(shape[-2:]), cmap="gray", vmin=0, vmax=1)
    a.set_title(f"attack point, step {step}")
    a.axis("off")
    b.plot(run.val_loss, color="0.7")
    b.plot(range(step + 1), run.val_loss[:step + 1], color="C3")
    b.set_xlabel("gradient step")
    b.set_ylabel("validation hinge loss")
    fig.tight_layout()
    return fig


def explore_svm_attack(run, shape: tuple[int, ...]):
    """Widget: a slider over the attack point's snapshots (image and objective follow)."""
    import ipywidgets as w

    def show(index: int) -> None:
        svm_attack_view(run, index, shape)
        plt.show()

    return w.interactive(show, index=w.IntSlider(min=0, max=len(run.snapshots) - 1, value=len(run.snapshots) - 1,
                                                 description="snapshot"))


def ask_models(models: dict, text: str = "What a wonderful, moving film.", trigger: str = "James Bond"):
    """Widget: type a sentence and a trigger, pick the task and where the trigger goes; every model's
    answer probabilities and greedy answer, without and with the trigger (:func:`llm.experiments.ask`)."""
    import ipywidgets as w
    from IPython.display import display

    from .llm import experiments as llm_experiments
    from .llm.corpus import TASKS

    def show(text: str, task: str, trigger: str, position: str) -> None:
        if not text.strip():
            print("type a sentence")
            return
        display(llm_experiments.ask(models, text, task=task, trigger=trigger, position=position))

    return w.interactive(show, {"manual": True, "manual_name": "ask"},
                         text=w.Text(value=text, description="sentence", layout=w.Layout(width="90%")),
                         task=w.Dropdown(options=list(TASKS), value=TASKS[0], description="task"),
                         trigger=w.Text(value=trigger, description="trigger"),
                         position=w.Dropdown(options=list(llm_experiments.POSITIONS), value="middle",
                                             description="where"))
