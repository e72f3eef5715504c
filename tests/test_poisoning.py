"""Lab 1 attacks: unit tests (gradients against finite differences), bad input, seeded efficacy."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labsupport as ls
from labsupport import checks
from labsupport.poisoning import feature_collision as FC
from labsupport.poisoning import gradient_canceling as GC
from labsupport.poisoning import regression as R
from labsupport.poisoning import svm as S
from labsupport.poisoning.label_flip import flip_labels

# --- label flipping ----------------------------------------------------------------------------

def test_flip_modes_change_exactly_the_requested_rows():
    y = torch.arange(1000) % 10
    for mode, kw in (("random", {}), ("targeted", {"source": 0, "target": 6})):
        out = flip_labels(y, 0.05, mode=mode, **kw)
        assert out.count == 50 and int((out.y != y).sum()) == 50 and torch.equal(out.mask, out.y != y)
    t = flip_labels(y, 0.05, mode="targeted", source=0, target=6)
    assert (y[t.mask] == 0).all() and (t.y[t.mask] == 6).all()
    probs = torch.softmax(torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)), 1)
    b = flip_labels(y, 0.1, mode="boundary", probs=probs)
    c = flip_labels(y, 0.1, mode="confident", probs=probs)
    p_true = probs[torch.arange(1000), y]
    assert p_true[c.mask].min() >= p_true[b.mask].max() - 1e-6 or p_true[c.mask].mean() > p_true[b.mask].mean()


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 1.5}, "rate"), ({"rate": float("nan")}, "rate"), ({"rate": 0.1, "mode": "worst"}, "mode"),
    ({"rate": 0.2, "mode": "targeted", "source": 0, "target": 6}, "only 100 rows"),
    ({"rate": 0.1, "mode": "targeted", "source": 0, "target": 10}, "target"),
    ({"rate": 0.1, "mode": "boundary"}, "probs"),
])
def test_flip_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flip_labels(torch.arange(1000) % 10, **kwargs)


def test_random_flip_exercise_accepts_the_reference():
    checks.check_random_flip(lambda y, rate, c, seed: flip_labels(y, rate, num_classes=c, seed=seed).y)
    with pytest.raises(checks.ExerciseError):
        checks.check_random_flip(lambda y, rate, c, seed: y.clone())


@pytest.mark.slow
def test_flip_curve_table_lists_each_mode_and_rate_mean_over_seeds():
    from labsupport.poisoning.label_flip import FlipCurve
    curve = FlipCurve((0.03, 0.1), (0, 1),
                      acc={"mlp": {"random": np.array([[80.0, 82.0], [70.0, 72.0]]),
                                   "targeted": np.array([[60.0, 61.0], [50.0, 50.0]])},
                           "cnn": {"random": np.array([[90.0, 90.0], [85.0, 86.0]]),
                                   "targeted": np.array([[70.0, 70.0], [65.0, 65.0]])}},
                      clean={"mlp": np.array([85.0, 87.0]), "cnn": np.array([91.0, 91.0])})
    head, _, mlp, cnn = curve.table(paper={"mlp": "98 -> 97"}).split("\n")
    assert head.split("  ")[:2] == ["model", "clean"] and "targeted 10 %" in head and head.endswith("paper")
    assert mlp.split() == ["mlp", "86.0", "81.0", "71.0", "60.5", "50.0", "98", "->", "97"]
    assert cnn.split() == ["cnn", "91.0", "90.0", "85.5", "70.0", "65.0"]
    assert "paper" not in curve.table().split("\n")[0]


def test_chosen_flips_hurt_more_than_random_ones():
    data = ls.load_dataset("fashion-mnist").subset(5000, 2000, seed=0)
    curve = ls.poisoning.flip_curve(data, models=("mlp",), modes=("random", "confident"), rates=(0.03, 0.1),
                                    seeds=(0,), progress=False)
    assert curve.drop("mlp", "random", 0.03) < 1.5          # random flips barely hurt the MLP (Lu et al.: 0.05)
    assert curve.drop("mlp", "confident", 0.1) > curve.drop("mlp", "random", 0.1) + 2.0


# --- SVM -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_pair():
    return S.pair_task(ls.load_dataset("digits"), 7, 1, n_train=100, n_val=130, n_test=None)


def test_svm_gradient_matches_finite_differences(digits_pair):
    t = digits_pair
    start = S.svm_attack(t, 1, steps=0, progress=False)
    u, label = start.points[0], start.labels[0]
    x, y = np.vstack([t.x_train, u]), np.append(t.y_train, label)
    svm = S.fit_svm(x, y)
    g = S.attack_gradient(svm, x, y, len(y) - 1, t.x_val, t.y_val)
    assert np.linalg.norm(g) > 0
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = rng.normal(size=u.size)
        d /= np.linalg.norm(d)
        h = 1e-4
        fd = (S.validation_loss_at(t, u + h * d, label) - S.validation_loss_at(t, u - h * d, label)) / (2 * h)
        assert fd == pytest.approx(g @ d, rel=0.1, abs=2e-4)


def test_svm_gradient_needs_a_linear_svm(digits_pair):
    from sklearn.svm import SVC
    t = digits_pair
    rbf = SVC(kernel="rbf").fit(t.x_train, t.y_train)
    with pytest.raises(ValueError, match="linear"):
        S.attack_gradient(rbf, t.x_train, t.y_train, 0, t.x_val, t.y_val)


def test_pair_task_bad_input():
    data = ls.load_dataset("digits")
    with pytest.raises(ValueError, match="b=10"):
        S.pair_task(data, 7, 10)
    with pytest.raises(ValueError, match="different"):
        S.pair_task(data, 7, 7)
    with pytest.raises(ValueError, match="n_train \\+ n_val"):
        S.pair_task(data, 7, 1, n_train=100, n_val=500)


def test_svm_bad_input_names_the_argument():
    task = S.pair_task(ls.load_dataset("digits"), 7, 1, n_train=40, n_val=40)
    svm = S.fit_svm(task.x_train, task.y_train)
    nan = task.x_train.copy()
    nan[0, 0] = np.nan
    zero_one = (task.y_train > 0).astype(int)
    for call, match in [(lambda: S.fit_svm(nan, task.y_train), "x contains NaN"),
                        (lambda: S.fit_svm(task.x_train, zero_one), "y must hold the labels -1 and \\+1"),
                        (lambda: S.fit_svm(task.x_train, task.y_train, C=0), "C=0.0"),
                        (lambda: S.attack_gradient(svm, task.x_train, task.y_train, 40, task.x_val, task.y_val),
                         r"c=40 is out of range; allowed: \[0, 39\]"),
                        (lambda: S.attack_gradient(svm, task.x_train, task.y_train, 0, task.x_val, task.y_val[:-1]),
                         "y_val must have shape"),
                        (lambda: S.hinge_loss(svm, task.x_val, 2 * task.y_val), "y must hold the labels -1"),
                        (lambda: S.error_rate(svm, task.x_val, (task.y_val > 0).astype(int)), "y must hold the labels"),
                        (lambda: S.error_rate(svm, nan, task.y_train), "x contains NaN")]:
        with pytest.raises(ValueError, match=match):
            call()


@pytest.mark.slow
def test_one_svm_attack_point_triples_the_error():
    t = S.pair_task(ls.load_dataset("fashion-mnist"), 1, 6)     # Trouser vs Shirt
    run = S.svm_attack(t, 1, steps=100, step_size=0.5, seed=0, progress=False)
    assert run.errors[1] >= 3 * run.errors[0] and run.errors[1] >= 0.10
    assert run.val_loss[-1] > run.val_loss[0]
    _, err = S.contamination_curve(t, (0.0, 0.04, 0.08), steps=60, step_size=0.5, progress=False)
    assert err[0, 0] < err[1, 0] < err[2, 0]


# --- regression ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def randhie():
    return R.regression_task(ls.load_randhie(), 300, 250, 500, seed=0)


@pytest.mark.parametrize("kind", ["ridge", "lasso"])
def test_regression_gradient_matches_finite_differences(randhie, kind):
    t = randhie
    a = R.optp(t, 0.1, iterations=0)
    x, y = a.poisoned.x, a.poisoned.y
    poison = np.flatnonzero(a.poisoned.mask)[:2]
    model = R.fit_linear(x, y, kind)
    gx, gy = R.poison_gradient(model, x, y, poison, t.x_val, t.y_val)
    h = 1e-6
    for j in range(3):
        xp, xm = x.copy(), x.copy()
        xp[poison[0], j] += h
        xm[poison[0], j] -= h
        plus, minus = (R.fit_linear(xs, y, kind).mse(t.x_val, t.y_val) for xs in (xp, xm))
        fd = (plus - minus) / (2 * h)
        assert fd == pytest.approx(gx[0, j], rel=1e-3, abs=1e-7)
    yp, ym = y.copy(), y.copy()
    yp[poison[1]] += h
    ym[poison[1]] -= h
    fd = (R.fit_linear(x, yp, kind).mse(t.x_val, t.y_val) - R.fit_linear(x, ym, kind).mse(t.x_val, t.y_val)) / (2 * h)
    assert fd == pytest.approx(gy[1], rel=1e-3, abs=1e-7)


def test_ridge_matches_scikit_learn(randhie):
    from sklearn.linear_model import Ridge
    m = R.fit_linear(randhie.x_train, randhie.y_train, "ridge", 0.1)
    sk = Ridge(alpha=0.1 * len(randhie.y_train)).fit(randhie.x_train, randhie.y_train)
    assert np.allclose(m.w, sk.coef_, atol=1e-10) and m.b == pytest.approx(sk.intercept_)


def test_optp_statp_and_trim_on_randhie(randhie):
    t = randhie
    clean = R.fit_linear(t.x_train, t.y_train).mse(t.x_test, t.y_test)
    opt = R.optp(t, 0.2, iterations=50)
    stat = R.statp(t, 0.2)
    m_opt, m_stat = opt.model.mse(t.x_test, t.y_test), stat.model.mse(t.x_test, t.y_test)
    assert m_opt >= 5 * clean                          # the target: OptP ≥ 5× clean at 20 %
    assert clean < m_stat < m_opt
    assert opt.poisoned.count == 75 and opt.poisoned.x.min() >= 0 and opt.poisoned.x.max() <= 1
    robust = R.robust_mse(opt.poisoned.x, opt.poisoned.y, t.x_test, t.y_test, len(t.y_train))
    assert robust["TRIM"] <= 1.5 * clean
    assert max(robust["Huber"], robust["RANSAC"]) > 1.5 * clean


def test_attack_curves_are_each_attacks_mse_over_the_clean_one(randhie):
    t = randhie
    curves = R.attack_curves({"RAND HIE": t}, (0.08, 0.2), kinds=("ridge",), iterations=5, seed=1)
    clean = R.fit_linear(t.x_train, t.y_train).mse(t.x_test, t.y_test)
    want = {("RAND HIE", "ridge", "OptP"): [R.optp(t, r, iterations=5, seed=1).model.mse(t.x_test, t.y_test) / clean
                                           for r in (0.08, 0.2)],
            ("RAND HIE", "ridge", "StatP"): [R.statp(t, r, seed=1).model.mse(t.x_test, t.y_test) / clean
                                            for r in (0.08, 0.2)]}
    assert curves.ratio.keys() == want.keys() and curves.rates == (0.08, 0.2)
    for key, r in want.items():
        np.testing.assert_allclose(curves.ratio[key], r, rtol=1e-12)
    assert min(min(r) for r in curves.ratio.values()) > 1   # both attacks hurt at both rates
    axes = curves.plot()
    assert [line.get_label() for line in axes[0].get_lines()] == ["OptP ridge", "StatP ridge"]
    with pytest.raises(ValueError, match=r"axes has 2 panels; give one per task \(1: \['RAND HIE'\]\)"):
        curves.plot(axes=[axes[0], axes[0]])
    _, ax = plt.subplots()
    assert curves.plot(axes=ax) == [ax] and len(ax.get_lines()) == 2   # one task: a single Axes will do
    plt.close("all")
    for kwargs, err, match in [(dict(tasks={}), TypeError, "tasks must be a non-empty dict"),
                               (dict(tasks=[t]), TypeError, "tasks must be"),
                               (dict(rates=(0.2, 1.0)), ValueError, r"rates\[i\]=1.0"),
                               (dict(rates=()), ValueError, "rates must not be empty"),
                               (dict(kinds="ridge"), TypeError, "not one string"),
                               (dict(kinds=("ols",)), ValueError, r"kinds\[i\]"),
                               (dict(attacks=("OptP", "BestP")), ValueError, r"attacks\[i\]")]:
        args = {"tasks": {"t": t}, "rates": (0.1,), **kwargs}
        with pytest.raises(err, match=match):
            R.attack_curves(args.pop("tasks"), args.pop("rates"), **args)


def test_trim_starts_from_all_points_not_the_first_n(randhie):
    t = randhie
    opt = R.optp(t, 0.2, iterations=20)
    x, y = opt.poisoned.x[::-1].copy(), opt.poisoned.y[::-1].copy()   # poisons first
    _, keep = R.trim(x, y, len(t.y_train))
    assert keep[:75].mean() < 0.5                     # most poisons dropped although they come first


def test_trim_restarts_find_the_clean_fit_on_diabetes():
    # Seeded: OptP's poisons on diabetes agree with each other well enough that TRIM started from
    # all rows keeps every one of them and ends worse than no defense; small random starts find a
    # subset with a lower trimmed loss, the clean one (diabetes seeds 0, 1, 3, 4; not seed 2, where
    # the poisoned subset has the lower trimmed loss — BENCHMARKS.md).
    t = R.regression_task(ls.load_diabetes(), 200, 100, 142, seed=0)
    clean = R.fit_linear(t.x_train, t.y_train).mse(t.x_test, t.y_test)
    opt = R.optp(t, 0.2, iterations=50)
    x, y, mask, n = opt.poisoned.x, opt.poisoned.y, opt.poisoned.mask, len(t.y_train)
    one, keep_one = R.trim(x, y, n, restarts=0)
    many, keep_many = R.trim(x, y, n)
    assert keep_one[mask].all() and one.mse(t.x_test, t.y_test) > 1.5 * clean
    assert not keep_many[mask].any() and many.mse(t.x_test, t.y_test) <= 1.05 * clean
    assert R.trimmed_loss(many, x, y, n) < R.trimmed_loss(one, x, y, n)
    robust = R.robust_mse(x, y, t.x_test, t.y_test, n)
    assert robust["TRIM"] <= 1.5 * clean < min(robust["Huber"], robust["TRIM, one start"])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_bad=st.integers(0, 30), restarts=st.integers(1, 8))
def test_trim_restarts_never_end_at_a_higher_trimmed_loss(seed, n_bad, restarts):
    rng = np.random.default_rng(seed)
    x = rng.random((60 + n_bad, 4))
    y = np.clip(x @ rng.random(4) / 4 + 0.05 * rng.standard_normal(len(x)), 0, 1)
    y[60:] = 1 - y[60:]                               # the last n_bad rows: inverse-flipped responses
    one, keep_one = R.trim(x, y, 60, restarts=0)
    many, keep_many = R.trim(x, y, 60, restarts=restarts, seed=seed)
    assert keep_one.sum() == keep_many.sum() == 60
    assert R.trimmed_loss(many, x, y, 60) <= R.trimmed_loss(one, x, y, 60) + 1e-12


@pytest.mark.parametrize("call, match", [
    (lambda t: R.optp(t, 1.0), "rate"),
    (lambda t: R.optp(t, -0.1), "rate"),
    (lambda t: R.optp(t, 0.1, kind="ols"), "kind"),
    (lambda t: R.trim(t.x_train, t.y_train[:-1], 200), "y must have shape"),
    (lambda t: R.trim(np.where(t.x_train > 0.5, np.nan, t.x_train), t.y_train, 200), "NaN"),
    (lambda t: R.trim(t.x_train, t.y_train, 5000), "n=5000"),
    (lambda t: R.trim(t.x_train, t.y_train, 200, restarts=-1), "restarts"),
    (lambda t: R.trim(t.x_train, t.y_train, 200, max_iter=0), "max_iter"),
    (lambda t: R.fit_linear(t.x_train, t.y_train[:, None]), r"y must have shape \(300,\)"),
    (lambda t: R.fit_linear(np.where(t.x_train > 0.5, np.nan, t.x_train), t.y_train), "x contains NaN"),
    (lambda t: R.fit_linear(t.x_train, t.y_train).mse(np.where(t.x_test > 0.5, np.nan, t.x_test), t.y_test),
     "x contains NaN"),  # would print an MSE of nan
    (lambda t: R.fit_linear(t.x_train, t.y_train).predict(t.x_train[:, :3]), "x has 3 features but the model"),
    (lambda t: R.fit_linear(t.x_train, t.y_train).mse(t.x_test, t.y_test[:5]), "y must have shape"),
    (lambda t: R.trimmed_loss(R.fit_linear(t.x_train, t.y_train), t.x_train, t.y_train, 0), r"n=0 .* \[1, 300\]"),
])
def test_regression_bad_input(randhie, call, match):
    with pytest.raises(ValueError, match=match):
        call(randhie)


def test_statp_exercise_accepts_the_reference():
    def statp_sample(x, predict, p, rng):
        cov = np.cov(x, rowvar=False) + 0.01 * np.eye(x.shape[1])
        xp = np.clip(np.round(rng.multivariate_normal(x.mean(0), cov, size=p)), 0, 1)
        return xp, np.clip(np.round(1 - predict(xp)), 0, 1)
    checks.check_statp(statp_sample)
    with pytest.raises(checks.ExerciseError, match="corners"):
        checks.check_statp(lambda x, predict, p, rng: (rng.random((p, x.shape[1])), np.zeros(p)))
    for wrong in (None, "x", (np.zeros((4000, 4)),)):
        with pytest.raises(checks.ExerciseError, match="should return a pair"):
            checks.check_statp(lambda x, predict, p, rng, wrong=wrong: wrong)


def test_randhie_is_scaled_to_the_unit_box():
    d = ls.load_randhie()
    assert d.x.shape == (20190, 9) and d.x.min() == 0 and d.x.max() == 1 and d.y.min() == 0 and d.y.max() == 1


# --- gradient canceling ------------------------------------------------------------------------------

def test_lambert_constant_and_closed_form_gradient():
    assert GC.poison_capacity(2) == pytest.approx(GC.LAMBERT_W_1_OVER_E, abs=1e-12)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(20, 6, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen)
    W = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(x @ W.T + b, y, reduction="sum").backward()
    gW, gb = GC.loss_sum_grad(GC.Linear(W.detach(), b.detach()), x, y)
    assert torch.allclose(gW, W.grad) and torch.allclose(gb, b.grad)


def test_canceled_target_is_what_the_victim_learns():
    """At ε above the reachability threshold, retraining on clean + poisons lands near the target."""
    data = ls.load_dataset("digits")
    x, y = data.x_train.flatten(1).double(), data.y_train
    target = GC.gradpc_target(x, y, radius=0.1, warmup=5)
    tau = GC.reachability_threshold(target, x, y)
    assert tau < 1.0
    poisoned = GC.gradient_canceling(x, y, target, 1.0, steps=400, lr=0.05)
    assert poisoned.info["objective"][-1] < 0.05 * poisoned.info["objective"][0]
    learned = GC.fit_logreg(poisoned.x, poisoned.y, 10)
    xt, yt = data.x_test.flatten(1).double(), data.y_test
    clean = GC.fit_logreg(x, y, 10)
    goal = target.accuracy(xt, yt)
    assert abs(learned.accuracy(xt, yt) - goal) < abs(clean.accuracy(xt, yt) - goal)


def test_the_pixel_box_is_what_holds_gradient_canceling_back_at_small_eps():
    """At ε = 0.03 poisons confined to valid pixels barely move the victim; the same attack without
    the box (the paper's reference code) does several times the damage with pixels far outside
    [0, 1] (measured on this split: 2.2 vs 6.4 points; label flipping 1.4)."""
    data = ls.load_dataset("fashion-mnist").subset(2000, 2000, seed=0)
    x, y = data.x_train.flatten(1).double(), data.y_train
    res = GC.canceling_experiment(x, y, data.x_test.flatten(1).double(), data.y_test, epsilons=(0.03,),
                                  radius=0.1, unboxed=True, progress=False)
    drops = res.drops()
    assert drops["gradient canceling, no pixel box"][0] >= drops["gradient canceling"][0] + 2.5, drops
    assert drops["gradient canceling, no pixel box"][0] >= drops["label flipping"][0] + 4, drops
    target = GC.gradpc_target(x, y, radius=0.1)
    boxed = GC.gradient_canceling(x, y, target, 0.03, steps=50)
    free = GC.gradient_canceling(x, y, target, 0.03, steps=50, box=None)
    assert 0 <= boxed.x[boxed.mask].min() and boxed.x[boxed.mask].max() <= 1
    assert free.x[free.mask].min() < -1 and free.x[free.mask].max() > 2 and "no pixel box" in free.name


def test_bias_threshold_bounds_any_poisons_and_the_refit_removes_it():
    """Each poison moves an entry of the summed bias gradient down by at most 1 (softmax - one-hot),
    so k poisons leave at least sum_j max(g_j, 0) - k of the positive part, whatever their features;
    re-fitting the bias keeps the weights and zeroes the clean bias gradient."""
    data = ls.load_dataset("digits")
    x, y = data.x_train.flatten(1).double(), data.y_train
    target = GC.gradpc_target(x, y, radius=0.3, warmup=5)
    _, gb = GC.loss_sum_grad(target, x, y)
    assert GC.bias_threshold(target, x, y) == pytest.approx(float(gb.clamp(min=0).sum()) / len(y))
    need = float(gb.clamp(min=0).sum())
    assert need > 20
    gen = torch.Generator().manual_seed(0)
    k = int(need // 2)
    for scale in (1.0, 100.0, 1e4):   # saturated softmax at large scales: the most a poison can do
        xp = (torch.rand(k, x.shape[1], generator=gen, dtype=torch.float64) * 2 - 1) * scale
        _, gp = GC.loss_sum_grad(target, xp, torch.randint(0, 10, (k,), generator=gen))
        assert float((gb + gp).clamp(min=0).sum()) >= need - k - 1e-9
    # inside the pixel box every pixel is capped at 1 like the bias's input: the same count per row
    n, k = len(y), 40
    G = torch.cat([GC.loss_sum_grad(target, x, y)[0] + (n + k) * GC.L2 * target.W, gb[:, None]], 1)
    need_box = float(G.clamp(min=0).amax(1).sum())
    assert GC.box_threshold(target, x, y, k / n) == pytest.approx(need_box / n)
    assert need_box >= need
    for _ in range(3):
        xp = torch.rand(k, x.shape[1], generator=gen, dtype=torch.float64) ** 4   # pixels in [0, 1]
        gpW, gpb = GC.loss_sum_grad(target, xp, torch.randint(0, 10, (k,), generator=gen))
        left = torch.cat([G[:, :-1] + gpW, G[:, -1:] + gpb[:, None]], 1).clamp(min=0).amax(1).sum()
        assert float(left) >= need_box - k - 1e-9
    refit = GC.refit_bias_of(target, x, y)
    assert torch.equal(refit.W, target.W)
    assert float(GC.loss_sum_grad(refit, x, y)[1].abs().max()) < 1e-3 * len(y) ** 0.5
    assert GC.bias_threshold(refit, x, y) < 1e-3 < GC.bias_threshold(target, x, y)


def test_gradient_canceling_reaches_the_bias_refitted_target_at_small_eps():
    """GradPC's own target needs more poisons for its bias than eps = 0.03 gives; with the bias
    re-fitted, the unboxed attack beats label flipping by >= 5 points there (issue 6). Measured on
    this split (float64): 8.6 points vs label flipping's 1.4 and GradPC's own target's 6.4; inside
    the box 4.25 vs 2.15."""
    data = ls.load_dataset("fashion-mnist").subset(2000, 2000, seed=0)
    x, y = data.x_train.flatten(1).double(), data.y_train
    res = GC.canceling_experiment(x, y, data.x_test.flatten(1).double(), data.y_test, epsilons=(0.03,),
                                  radius=0.1, unboxed=True, refit_bias=True, progress=False)
    drops, raw = res.drops(), res.raw.drops()
    assert res.bias < 1e-3 and res.raw.bias > 0.03, (res.bias, res.raw.bias)
    assert res.tau < res.raw.tau, (res.tau, res.raw.tau)
    assert res.box[0] > 0.03 and res.box[0] >= res.bias, res.box   # in the box, eps = 0.03 cannot reach it
    assert drops["gradient canceling, no pixel box"][0] >= drops["label flipping"][0] + 5, drops
    assert drops["gradient canceling, no pixel box"][0] >= raw["gradient canceling, no pixel box"][0] + 1, (drops, raw)
    assert drops["gradient canceling"][0] > raw["gradient canceling"][0] + 1, (drops, raw)
    assert res.raw.flipping == res.flipping and res.raw.clean == res.clean


def test_gradient_canceling_bad_input():
    x, y = torch.rand(10, 4, dtype=torch.float64), torch.arange(10) % 2
    t = GC.Linear(torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    for eps in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="epsilon"):
            GC.gradient_canceling(x, y, t, eps)
    for box in ((1.0, 0.0), (0.0, float("inf")), [0, 1], (0.0,)):
        with pytest.raises(ValueError, match="box"):
            GC.gradient_canceling(x, y, t, 0.1, box=box)
    nan = x.clone()
    nan[3, 1] = float("nan")
    for call, match in [(lambda: GC.fit_logreg(nan, y, 2), "x contains NaN"),
                        (lambda: GC.gradient_canceling(nan, y, t, 0.1), "x contains NaN"),
                        (lambda: GC.gradpc_target(x, y[:-1], 2), "y has 9 labels"),
                        (lambda: GC.refit_bias_of(t, nan, y), "x contains NaN"),
                        (lambda: GC.bias_threshold(t, x, y[:-1]), "y has 9 labels"),
                        (lambda: GC.box_threshold(t, x, y, 0.0), "epsilon"),
                        (lambda: GC.fit_logreg(x, y + 2, 2), r"y holds values outside \[0, 1\]"),
                        (lambda: GC.fit_logreg(x.reshape(10, 2, 2), y, 2), r"shape \(N, d\)"),
                        (lambda: GC.fit_logreg_many(nan[None], y, 2), "x contains NaN"),
                        (lambda: GC.canceling_experiment(nan, y, x, y, progress=False), "x_train contains NaN"),
                        (lambda: GC.canceling_experiment(x, y, x[:, :3], y, progress=False), "x_test has 3 features"),
                        (lambda: GC.canceling_experiment(x, y, x, y + 5, progress=False), "y_test holds values"),
                        (lambda: GC.canceling_experiment(x, y, x, y, epsilons=(0.1, 2.0), progress=False),
                         "epsilons"),
                        (lambda: GC.fit_logreg(x, y, 2, l2=float("nan")), "l2=nan"),
                        (lambda: GC.fit_logreg_many(x[None], y, 2, l2=-1.0), "l2=-1.0"),
                        (lambda: t.accuracy(x, y[:3]), "y has 3 labels but there are 10"),
                        (lambda: GC.poison_capacity(1), "num_classes=1"),
                        (lambda: GC.lambert_w(-1.0), "z=-1.0"),
                        ]:
        with pytest.raises(ValueError, match=match):
            call()


def test_canceling_result_tables_and_plot_show_its_numbers():
    raw = GC.CancelingResult(80.0, 70.0, 0.5, (0.03,), [75.0], [79.0], [72.0], bias=0.1, box=[0.2])
    res = GC.CancelingResult(80.0, 74.0, 0.25, (0.03, 0.1), [77.0, 76.0], [79.0, 78.0], [71.0, 70.0],
                             bias=0.0, box=[0.15, 0.1], raw=raw)
    head, rule, own, refit = res.targets_table().splitlines()
    assert head.split("  ")[0] == "target" and "GC drop at eps = 0.03" in head and set(rule) == {"-"}
    assert own.split() == ["GradPC", "as", "it", "is", "70.0", "%", "0.500", "0.100", "0.200", "5.0", "8.0"]
    assert refit.split() == ["GradPC,", "bias", "re-fitted", "74.0", "%", "0.250", "0.000", "0.150", "3.0", "9.0"]
    lines = res.drops_table(paper=["21.1", "57.0"]).splitlines()
    assert "label flipping drop" in lines[0] and "paper (MNIST LR, GC)" in lines[0]
    assert [line.split() for line in lines[2:]] == [["0.03", "3.0", "9.0", "1.0", "21.1"],
                                                    ["0.1", "4.0", "10.0", "2.0", "57.0"]]
    alone = GC.CancelingResult(80.0, 74.0, 0.25, (0.1,), [76.0], [78.0], box=[0.1])   # no raw, no unboxed
    assert alone.targets_table().splitlines()[-1].split() == ["GradPC", "74.0", "%", "0.250", "0.000", "0.100", "4.0"]
    assert alone.drops_table().splitlines()[-1].split() == ["0.1", "4.0", "2.0"]
    with pytest.raises(ValueError, match=r"paper must hold one figure per epsilon \(2\), got 3"):
        res.drops_table(paper=["1", "2", "3"])
    ax = res.plot()
    assert ax.get_xscale() == "log" and len(ax.get_lines()) == 3
    plt.close(ax.figure)


def _logreg_objective(m, x, y, l2):
    return float(torch.nn.functional.cross_entropy(x @ m.W.T + m.b, y) + 0.5 * l2 * (m.W ** 2).sum())


def test_fit_logreg_many_reaches_the_lbfgs_minimiser():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 200, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (200,), generator=gen)
    ys = torch.randint(0, 4, (6, 200), generator=gen)
    start = GC.fit_logreg(x[0], y, 4, l2=1e-3)
    for labels, init in ((y, None), (ys, start)):
        many = GC.fit_logreg_many(x, labels, 4, l2=1e-3, init=init, chunk=4)
        for i, m in enumerate(many):
            yi = labels if labels.ndim == 1 else labels[i]
            single = GC.fit_logreg(x[i], yi, 4, l2=1e-3)
            assert torch.allclose(m.W, single.W, atol=1e-4)
            assert torch.allclose(m.b - m.b.mean(), single.b - single.b.mean(), atol=1e-4)
            # never a worse optimum than L-BFGS's
            assert _logreg_objective(m, x[i], yi, 1e-3) <= _logreg_objective(single, x[i], yi, 1e-3) + 1e-12
    # too few Newton steps: the unfinished problems are handed to L-BFGS and still end at the minimiser
    short = GC.fit_logreg_many(x[:2], y, 4, l2=1e-3, max_iter=1)
    assert torch.allclose(short[0].W, GC.fit_logreg(x[0], y, 4, l2=1e-3).W, atol=1e-4)
    with pytest.raises(ValueError, match="sets, rows, features"):
        GC.fit_logreg_many(x[0], y, 4)
    with pytest.raises(ValueError, match="y must be"):
        GC.fit_logreg_many(x, y[:10], 4)
    with pytest.raises(ValueError, match="refresh"):
        GC.fit_logreg_many(x, y, 4, refresh=0)


# --- feature collision -----------------------------------------------------------------------------------

def test_prox_exercise_and_collision_moves_features():
    checks.check_prox_step(lambda x_hat, base, lr, beta: (x_hat + lr * beta * base) / (1 + lr * beta))
    with pytest.raises(checks.ExerciseError):
        checks.check_prox_step(lambda x_hat, base, lr, beta: x_hat)
    torch.manual_seed(0)
    net = ls.MLP((1, 28, 28), 10)
    gen = torch.Generator().manual_seed(1)
    targets, bases = torch.rand(4, 1, 28, 28, generator=gen), torch.rand(4, 1, 28, 28, generator=gen)
    # an untrained net has weak feature gradients: a small pixel weight lets the forward step show
    poisons = FC.craft_poisons(net, targets, bases, lr=0.1, beta0=1e-3, watermark=0.0)
    with torch.no_grad():
        before = (net.features(bases) - net.features(targets)).norm(dim=1)
        after = (net.features(poisons) - net.features(targets)).norm(dim=1)
    assert (after < 0.5 * before).all() and poisons.min() >= 0 and poisons.max() <= 1
    # a stronger pixel term keeps the poison nearer its base and its features further from the target's
    tight = FC.craft_poisons(net, targets, bases, lr=0.1, beta0=1e-1, watermark=0.0)
    with torch.no_grad():
        after_tight = (net.features(tight) - net.features(targets)).norm(dim=1)
    assert (after_tight > after).all()
    assert ((tight - bases).flatten(1).norm(dim=1) < (poisons - bases).flatten(1).norm(dim=1)).all()
    with pytest.raises(ValueError, match="beta0"):
        FC.craft_poisons(net, targets, bases, beta0=-1.0)
    # the adaptive step never accepts a worse point: more steps never raise any poison's objective
    def objective(x):
        with torch.no_grad():
            return (net.features(x) - net.features(targets)).pow(2).sum(1)
    short, longer = (FC.craft_poisons(net, targets, bases, steps=n, lr=10.0, beta0=0.0) for n in (5, 50))
    assert (objective(longer) <= objective(short) + 1e-6).all() and (objective(short) < objective(bases)).all()
    boxed = FC.craft_poisons(net, targets, bases, steps=50, lr=0.01, eps=0.05)
    assert (boxed - bases).abs().max() <= 0.05 + 1e-6
    with pytest.raises(ValueError, match="watermark"):
        FC.craft_poisons(net, targets, bases, watermark=1.0)


def _tiny_transfer_task() -> FC.TransferTask:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(160, 1, 28, 28, generator=gen) * 0.5
    y = torch.arange(160) % 4
    x[torch.arange(160), 0, (y * 7)[None].T.flatten() % 28] += 0.5   # a class-specific bright row
    return FC.TransferTask(ls.MLP((1, 28, 28), 10).eval(), x[:120], y[:120], x[120:], y[120:], ("a", "b", "c", "d"))


def test_budget_curve_rescores_the_first_poisons_of_each_setup():
    task = _tiny_transfer_task()
    setups = FC.make_setups(task, n=6, seed=0)
    result = FC.poison_frogs(task, setups, per_target=3, steps=30, lr=0.1, beta0=1e-3, progress=False)
    curve = FC.budget_curve(task, setups, result)
    assert list(curve) == [1, 2, 3] and curve[3] is result
    # the batched refit agrees with the same heads fitted one by one with L-BFGS
    clean = FC.fit_head(task)
    ftrain, ftest = FC.features(task.extractor, task.x_train), FC.features(task.extractor, task.x_test)
    for i, s in enumerate(setups):
        rows, pois = curve[2].base_rows[2 * i:2 * i + 2], curve[2].poisons[2 * i:2 * i + 2]
        assert torch.equal(pois, result.poisons[3 * i:3 * i + 2])
        f = ftrain.clone()
        f[rows] = FC.features(task.extractor, pois)
        head = GC.fit_logreg(f, task.y_train, 4, l2=FC.HEAD_L2, init=clean)
        assert curve[2].success[i] == (int(head.logits(ftest[s["target"]][None]).argmax()) == s["base_class"])
        assert abs(curve[2].accuracy[i] - head.accuracy(ftest, task.y_test)) <= 1 / len(task.y_test) + 1e-9
    with pytest.raises(ValueError, match="counts=4"):
        FC.budget_curve(task, setups, result, counts=(4,))
    with pytest.raises(ValueError, match="setups"):
        FC.budget_curve(task, setups[:5], result)
    with pytest.raises(TypeError, match="FrogsResult"):
        FC.budget_curve(task, setups, "result")


def test_from_scratch_victim_differs_from_the_clean_one_only_by_the_poisons():
    task = _tiny_transfer_task()
    setups = FC.make_setups(task, n=4, seed=0)
    result = FC.poison_frogs(task, setups, per_target=2, steps=20, lr=0.1, beta0=1e-3, progress=False)
    config = ls.TrainConfig(epochs=3, batch_size=32)
    scratch = FC.from_scratch(task, setups, result, config=config)
    assert scratch.success.shape == (4,) and scratch.accuracy.shape == (4,) and 0 <= scratch.baseline <= 1
    # poisons equal to their own bases: every victim is the clean model, so success = the baseline
    same = dataclasses.replace(result, poisons=task.x_train[result.base_rows])
    unpoisoned = FC.from_scratch(task, setups, same, config=config)
    clean = ls.predict(ls.train_model("mlp", task.x_train, task.y_train, config, num_classes=4, cache=False,
                                      progress=False), task.x_test)
    assert unpoisoned.success.tolist() == [int(clean[s["target"]]) == s["base_class"] for s in setups]
    assert unpoisoned.rate == unpoisoned.baseline and (unpoisoned.accuracy == unpoisoned.clean_accuracy).all()
    assert "clean victim already puts" in str(scratch)
    with pytest.raises(ValueError, match="setups"):
        FC.from_scratch(task, setups[:3], result, config=config)


def test_budget_summary_and_plot_show_success_and_collateral():
    two = FC.FrogsResult("2", np.array([1, 1, 0, 1]), np.array([0.801]), 0.805)   # 75 %, drop 0.4
    three = FC.FrogsResult("3", np.array([1, 1, 1, 1]), np.array([0.795]), 0.805)  # 100 %, drop 1.0
    lines = FC.budget_summary({2: two, 3: three}).splitlines()
    assert lines == ["2 poison(s)/target: success  75% ± 22, clean-accuracy drop 0.40 points  <- both targets",
                     "3 poison(s)/target: success 100% ± 0, clean-accuracy drop 1.00 points"]
    assert "<-" not in FC.budget_summary({2: two}, success=0.8)
    fig = FC.plot_budget({2: two, 3: three})
    ax, ax2 = fig.axes
    assert list(ax2.get_lines()[0].get_ydata()) == pytest.approx([0.4, 1.0])
    plt.close(fig)
    with pytest.raises(TypeError, match="budget must be budget_curve's"):
        FC.plot_budget({})


def test_poison_frogs_bad_setups_name_the_problem():
    task = _tiny_transfer_task()          # 30 training images per class, test rows 0-39
    t0 = int(task.y_test[0])
    other = (t0 + 1) % 4
    for setups, per_target, match in [
            ([], 1, "non-empty list"),
            ([{"target": 0}], 1, r"setups\[0\] must be a dict"),
            ([{"target": 40, "base_class": other}], 1, r"setups\[0\]\['target'\]=40.*\[0, 39\]"),
            ([{"target": 0, "base_class": 7}], 1, r"base_class'\]=7.*allowed: \[0, 1, 2, 3\]"),
            ([{"target": 0, "base_class": t0}], 1, "the target's own class"),
            ([{"target": 0, "base_class": other}], 31, "per_target=31 is more than the 30"),
            ([{"target": 0, "base_class": other}], 0, "per_target=0")]:
        with pytest.raises(ValueError, match=match):
            FC.poison_frogs(task, setups, per_target=per_target, steps=1, progress=False)


@pytest.mark.slow
def test_poison_frogs_on_the_saved_setups():
    task = FC.course_task(ls.load_dataset("fashion-mnist"))
    setups = FC.load_setups(task)
    assert len(setups) == 50
    result = FC.poison_frogs(task, setups, beta0=0.001, steps=3000, progress=False)
    paper = FC.poison_frogs(task, setups, progress=False)
    boxed = FC.poison_frogs(task, setups, eps=16 / 255, progress=False)
    # measured 78 % ± 6 with the course extractor (base seeds 0-2: 78-80 %) but 67 % with extractors
    # trained from seeds 1 and 2, so a differently rounded training run may land below the issue's
    # 70 %: the floor here is what every extractor gave. At 5 poisons per target the clean-accuracy
    # drop is 0.53-0.57 points, over the 0.5: held to "under one point" here.
    assert result.rate >= 0.6 and result.ca_drop < 1.0
    # fewer poisons per target: less success and less collateral damage. Measured on base seeds 0-2
    # (1 … 5 poisons): success 44-46 / 60-64 / 70 / 72-76 / 78-80 %, drop 0.30 / 0.39-0.40 / 0.46 /
    # 0.49-0.51 / 0.53-0.57 points. Both targets (>= 70 %, <= 0.5) hold at 3 per target on every
    # seed, at 4 on seed 0 - with no margin (BENCHMARKS.md).
    curve = FC.budget_curve(task, setups, result)
    rates, drops = [r.rate for r in curve.values()], [r.ca_drop for r in curve.values()]
    assert rates == sorted(rates) and drops == sorted(drops) and rates[0] < rates[-1] - 0.2, (rates, drops)
    assert any(r.rate >= 0.7 and r.ca_drop <= 0.5 for r in curve.values()), (rates, drops)
    assert np.median(result.collision) < 0.1
    # the paper's pixel weight keeps the poisons nearer their bases, collides less, flips fewer
    assert np.median(paper.linf) < np.median(result.linf) and np.median(paper.collision) > np.median(result.collision)
    assert boxed.rate < paper.rate < result.rate
    assert result.linf.shape == (250,) and (boxed.linf <= 16 / 255 + 1e-6).all()
    # the same poisons against a victim trained from scratch (measured: 4 % against a clean
    # model's 2 %, clean accuracy 91.4 %): the collision lives in features it never uses
    scratch = FC.from_scratch(task, setups, result)
    assert scratch.rate <= scratch.baseline + 0.1 and scratch.rate < result.rate - 0.5, scratch
    assert scratch.clean_accuracy > 0.85 and abs(scratch.ca_drop) < 1.0, scratch
