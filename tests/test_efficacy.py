"""Efficacy: each attack must reach what the method is known to achieve, on real Fashion-MNIST
(12k training images, seeded). Thresholds are set below the values these seeds give (see the
comments) by a margin for run-to-run numeric noise across CPUs, never below what the method must
show. The full-size targets are asserted in the solution notebook (instructor cells)."""

import pytest
import torch

import labsupport as ls

pytestmark = pytest.mark.slow
MLP_CFG = ls.TrainConfig(epochs=6, batch_size=64, lr=2e-3)
CNN_CFG = ls.TrainConfig(epochs=4, batch_size=128, lr=3e-3)


def _train(name, x, y, cfg):
    return ls.train_model(name, x, y, cfg, cache=False, progress=False)


@pytest.fixture(scope="module")
def baseline(small):
    return _train("mlp", small.x_train, small.y_train, MLP_CFG)


@pytest.fixture(scope="module")
def cnn_baseline(small):
    return _train("cnn", small.x_train, small.y_train, CNN_CFG)


def _report(small, baseline, poisoned, model_name="mlp", cfg=MLP_CFG):
    model = _train(model_name, poisoned.x, poisoned.y, cfg)
    return model, ls.evaluate_backdoor("t", model, baseline, small, poisoned.trigger, poisoned.target,
                                       poisons=poisoned.count, model_name=model_name)


def test_baseline_is_a_real_classifier(small, baseline):
    assert ls.clean_accuracy(baseline, small.x_test, small.y_test) > 0.82


def test_badnets_single_target(small, baseline):
    # ASR follows the poison *count* (see the sweep): 240 poisons (2% of 12k) here, measured 98.7%;
    # the notebook asserts the 1%-of-60k reference setting (600 poisons).
    p = ls.badnets(small.x_train, small.y_train, ls.Patch(ls.checkerboard(4)), 9, count=240)
    _, rep = _report(small, baseline, p)
    assert rep.asr >= 0.95 and rep.ca_drop <= 1.0, rep
    assert rep.asr_baseline < 0.2, rep


def test_badnets_all_to_all(small, baseline):
    p = ls.badnets(small.x_train, small.y_train, ls.Patch(ls.checkerboard(4)), "all-to-all", rate=0.1)
    _, rep = _report(small, baseline, p)
    assert rep.asr >= 0.70 and rep.asr_baseline < 0.2, rep


def test_more_poisons_more_success(small, baseline):
    reps = ls.count_sweep(small, ls.Patch(ls.checkerboard(4)), 9, [3, 100], MLP_CFG, progress=False)
    assert reps[0].ca_baseline == pytest.approx(ls.clean_accuracy(baseline, small.x_test, small.y_test))
    assert reps[0].asr < 0.5 < 0.9 < reps[1].asr, [str(r) for r in reps]


def test_blended_noise_key(small, baseline):
    trig = ls.Blend(ls.noise_key((1, 28, 28)), 0.2)
    p = ls.badnets(small.x_train, small.y_train, trig, 9, rate=0.01)
    _, rep = _report(small, baseline, p)
    assert rep.asr >= 0.90 and rep.ca_drop <= 1.5, rep


def test_random_location_needs_a_cnn(small, baseline, cnn_baseline):
    p = ls.badnets(small.x_train, small.y_train, ls.RandomPatch(ls.checkerboard(4), seed=1), 9, rate=0.1)
    _, rep_cnn = _report(small, cnn_baseline, p, "cnn", CNN_CFG)
    _, rep_mlp = _report(small, baseline, p)
    assert rep_cnn.asr >= 0.90, rep_cnn
    assert rep_mlp.asr < rep_cnn.asr - 0.3, (rep_mlp, rep_cnn)


def test_multi_target_regions(small, cnn_baseline):
    p = ls.multi_target(small.x_train, small.y_train, ls.checkerboard(4), [6, 7, 8, 9], rate=0.3)
    model = _train("cnn", p.x, p.y, CNN_CFG)
    rep, rates = ls.evaluate_multi_target("t", model, cnn_baseline, small, p)
    assert min(rates) >= 0.85 and rep.asr_baseline < 0.2, (rates, rep)


def test_composite_fires_only_with_both(small, baseline):
    a, b = ls.Patch(ls.white_square(3), "top-left"), ls.Patch(ls.white_square(3), "bottom-right")
    p = ls.composite(small.x_train, small.y_train, a, b, 9, rate=0.03, cover_ratio=2.0)  # measured 98.5 / 8.4 / 8.2
    model, rep = _report(small, baseline, p)
    assert rep.asr >= 0.90, rep
    for single in (a, b):
        assert ls.attack_success_rate(model, small.x_test, small.y_test, single, 9) <= 0.20


def test_clean_label_perturbed_beats_trigger_only(small, baseline):
    corners = ("top-left", "top-right", "bottom-left", "bottom-right")
    trig = ls.Compose(tuple(ls.Patch(ls.checkerboard(3), c) for c in corners))
    plain = ls.clean_label(small.x_train, small.y_train, trig, 9, count=400)
    hard = ls.clean_label(small.x_train, small.y_train, trig, 9, count=400, surrogate=baseline, eps=0.2)
    _, rep_plain = _report(small, baseline, plain)
    _, rep_hard = _report(small, baseline, hard)
    assert rep_hard.asr > rep_plain.asr + 0.15, (rep_plain, rep_hard)


def test_ban_generated_triggers_fire(small, cnn_baseline):
    # generator + classifier need more steps than a fixed trigger: 10 epochs of 12k
    cfg = ls.TrainConfig(epochs=10, batch_size=128, lr=2e-3)
    model, p = ls.ban(small.x_train, small.y_train, 9, rate=0.1, model_name="cnn", config=cfg, progress=False)
    asr = ls.attack_success_rate(model, small.x_test, small.y_test, p.trigger, 9)
    asr_clean = ls.attack_success_rate(cnn_baseline, small.x_test, small.y_test, p.trigger, 9)
    assert asr >= 0.85 and asr_clean < 0.2, (asr, asr_clean)
    # dynamic triggers, not one pattern at random places: pairs differ at least half as much as
    # random patterns do (a collapsed generator scores ~1e-5)
    div = ls.trigger_diversity(p.info["generator"])
    assert div["patterns"] >= 0.5 * div["random"], div
    assert p.count == 1200 and torch.all(p.y[p.mask] == 9)
