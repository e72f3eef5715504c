"""Plot and widget callbacks (pure functions, no browser) and the widgets wired to them."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import labsupport as ls  # noqa: E402
from labsupport import viz  # noqa: E402
from labsupport.experiments import AttackReport  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]


class Spy(torch.nn.Module):
    """A 'model' that predicts class 9 exactly when the bottom-right 4x4 corner is bright."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        bright = x[:, 0, -5:-1, -5:-1].mean((1, 2)) > 0.45
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 2.0
        logits[bright, 9] = 6.0
        return logits


def _reports():
    return [AttackReport(f"x{c}", "mlp", c, c / 60000, 0.88, 0.88 - c / 1e5, asr, 0.01)
            for c, asr in zip((10, 100, 1000), (0.02, 0.7, 0.99))]


def test_make_trigger_paste_and_blend():
    x = torch.zeros(2, 1, 28, 28)
    pasted = viz.make_trigger("white square", 4, "top-left")(x)
    assert pasted[:, :, 1:5, 1:5].eq(1).all() and pasted.sum() == 2 * 16
    blended = viz.make_trigger("white square", 4, "top-left", alpha=0.25)(x)
    assert torch.allclose(blended[:, :, 1:5, 1:5], torch.full((2, 1, 4, 4), 0.25))
    with pytest.raises(ValueError, match="pattern"):
        viz.make_trigger("star")
    with pytest.raises(ValueError, match="alpha"):
        viz.make_trigger(alpha=0.0)


def test_trigger_view_shows_the_prediction_flip():
    image = torch.zeros(1, 28, 28)
    fig = viz.trigger_view(Spy(), image, CLASSES, pattern="white square", size=4, target=9)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("clean: c0") and titles[3].startswith("with trigger: c9")
    plt.close(fig)
    faint = viz.trigger_view(Spy(), image, CLASSES, pattern="white square", size=4, alpha=0.3)
    assert faint.axes[3].get_title().startswith("with trigger: c0")  # too faint to fire
    plt.close(faint)


def test_design_trigger_widget_updates(monkeypatch):
    seen = []
    monkeypatch.setattr(viz, "trigger_view", lambda *a, **k: seen.append(k))
    widget = viz.design_trigger(Spy(), torch.rand(5, 1, 28, 28), CLASSES, target=9)
    controls = {c.description: c for c in widget.children[:-1]}
    assert set(controls) == {"image", "pattern", "size", "place", "opacity"}
    controls["size"].value = 6
    controls["opacity"].value = 0.5
    assert seen[-1]["size"] == 6 and seen[-1]["alpha"] == 0.5 and seen[-1]["target"] == 9


def test_sweep_view_and_widget(monkeypatch):
    reports = _reports()
    fig = viz.sweep_view(reports, 100)
    assert "100 poisons" in fig.axes[0].get_title() and "ASR 70.0%" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="count=5 is not in the sweep"):
        viz.sweep_view(reports, 5)
    seen = []
    monkeypatch.setattr(viz, "sweep_view", lambda reps, count: seen.append(count))
    widget = viz.explore_sweep(reports)
    slider = widget.children[0]
    assert slider.options == (10, 100, 1000) and slider.value == 100
    slider.value = 1000
    assert seen[-1] == 1000


def test_real_model_in_designer():
    model = ls.MLP()
    fig = viz.trigger_view(model, torch.rand(1, 28, 28), CLASSES)
    assert len(fig.axes) == 4
    plt.close(fig)


def test_svm_attack_view_and_widget(monkeypatch):
    from labsupport.poisoning import svm
    task = svm.pair_task(ls.load_dataset("digits"), 7, 1, n_train=60, n_val=60, n_test=50)
    run = svm.svm_attack(task, 1, steps=10, step_size=0.5, progress=False)
    fig = viz.svm_attack_view(run, len(run.snapshots) - 1, task.image_shape)
    assert "attack point, step" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="index"):
        viz.svm_attack_view(run, len(run.snapshots), task.image_shape)
    seen = []
    monkeypatch.setattr(viz, "svm_attack_view", lambda r, index, shape: seen.append(index))
    slider = viz.explore_svm_attack(run, task.image_shape).children[0]
    slider.value = 0
    assert seen[-1] == 0


def test_flip_curves_plots_one_panel_per_model():
    import numpy as np

    from labsupport.poisoning import FlipCurve
    c = FlipCurve((0.1,), (0, 1), {"mlp": {"random": np.array([[80.0, 81.0]])}}, {"mlp": np.array([82.0, 83.0])})
    fig = viz.flip_curves(c)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "mlp"
    plt.close(fig)


def test_ask_models_widget_asks_on_click(monkeypatch):
    from labsupport.experiments import Table
    from labsupport.llm import experiments as llm_experiments
    seen = []

    def fake_ask(models, text, **kw):
        seen.append((models, text, kw))
        return Table([["model"], ["m"]])

    monkeypatch.setattr(llm_experiments, "ask", fake_ask)
    widget = viz.ask_models({"m": None})
    controls = {c.description: c for c in widget.children if getattr(c, "description", "")}
    assert {"sentence", "task", "trigger", "where", "ask"} <= set(controls)
    controls["where"].value = "end"
    assert not seen                             # a model call is slow: moving a control does not run it
    controls["ask"].click()
    assert seen[-1][2] == {"task": "sentiment", "trigger": "James Bond", "position": "end"}
    controls["sentence"].value = "A dull, tiring book."   # a submitted sentence asks at once
    assert seen[-1][1] == "A dull, tiring book."
