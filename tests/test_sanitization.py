"""Sphere/slab sanitization and the certified bound (Steinhardt et al. 2017): the best response
is the true maximiser, the bound is never below what its own attack achieves, the oracle bound
is small on digits 1 vs 7 while the data-dependent defense lets every poison through, and bad
arguments are refused."""

import numpy as np
import pytest

import labsupport as ls
from labsupport.defenses import sanitization as sz

RHO = 3.0  # norm bound of (w, b); the clean SVM reaches 0 test errors on digits 1 vs 7


@pytest.fixture(scope="module")
def digits17():
    return sz.binary_pair(ls.load_dataset("digits"), 1, 7)


def _toy(seed=0, n=80, d=5):
    rng = np.random.default_rng(seed)
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return rng.normal(size=(n, d)) * 0.5 + y[:, None] * 0.8, y


def test_filter_thresholds_are_per_class_quantiles():
    x, y = _toy()
    f = sz.SphereSlab.fit(x, y, 0.8)
    d, s = f.scores(x, y)
    for c in (1, -1):  # each filter keeps 80% of each class; a row must pass both
        assert (d[y == c] <= f.radius[c]).mean() == pytest.approx(0.8, abs=0.03)
        assert (s[y == c] <= f.slab[c]).mean() == pytest.approx(0.8, abs=0.03)
    assert f.keep(x, y).mean() < 0.8
    sphere = f.keep(x, y, slab=False)   # the sphere alone
    assert np.array_equal(sphere, d <= np.where(y > 0, f.radius[1], f.radius[-1]) * (1 + 1e-9) + 1e-9)
    assert sphere.mean() == pytest.approx(0.8, abs=0.03) and not (f.keep(x, y) & ~sphere).any()
    assert sz.SphereSlab.fit(x, y, 1.0).keep(x, y).all()


def test_best_response_maximises_the_hinge_loss_over_the_feasible_set():
    x, y = _toy(1)
    f = sz.SphereSlab.fit(x, y, 0.9)
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=5), 0.3
    px, py, loss = f.best_response(w, b)
    assert f.keep(px[None], np.array([py])).all()
    assert loss == pytest.approx(max(0.0, 1 - py * (px @ w + b)))
    # random feasible points of either label never beat it
    for c in (1, -1):
        u = rng.normal(size=(20000, 5))
        u *= (rng.random((20000, 1)) ** (1 / 5)) * f.radius[c] / np.linalg.norm(u, axis=1, keepdims=True)
        pts = f.centroids[c] + u
        lab = np.full(len(pts), float(c))
        ok = f.keep(pts, lab)
        assert ok.sum() > 1000
        assert sz.hinge(w, b, pts[ok], lab[ok]).max() <= loss + 1e-9


def test_box_best_response_is_the_worst_corner():
    box = sz.Box(np.zeros(3), np.array([1.0, 1.0, 0.0]))
    x, c, loss = box.best_response(np.array([1.0, -2.0, 5.0]), 0.0)
    # label +1: 1 - w.x is largest at x = (0, 1, 0): 3; label -1: 1 + w.x at (1, 0, 0): 2
    assert c == 1 and np.array_equal(x, [0.0, 1.0, 0.0]) and loss == pytest.approx(3.0)


def test_certificate_bounds_its_own_attack_and_is_small_with_the_oracle_defense(digits17):
    x, y, xt, yt = digits17
    f = sz.SphereSlab.fit(x, y, 0.95)
    keep = f.keep(x, y)
    curve = sz.certified_curve(x[keep], y[keep], xt, yt, f, [0.0, 0.1, 0.3], rho=RHO, iterations=1000)
    for bound, achieved in zip(curve.bound, curve.attack_train_loss):
        assert bound >= achieved - 1e-9
    assert np.all(np.diff(curve.bound) >= -1e-9)  # more poison, higher bound
    assert curve.bound[-1] <= 0.1  # paper: MNIST-1-7 oracle bound < 0.1 hinge at eps = 0.3


def test_data_dependent_filter_lets_concentrated_poisons_through(digits17):
    x, y, xt, yt = digits17
    f = sz.SphereSlab.fit(x, y, 0.95)
    keep = f.keep(x, y)
    oracle = sz.certified_curve(x[keep], y[keep], xt, yt, f, [0.3], rho=RHO, iterations=300)
    dd = sz.data_dependent_curve(x, y, xt, yt, [0.05, 0.3], quantile=0.95, rho=RHO, iterations=300)
    assert dd.poisons_kept == [1.0, 1.0]  # none of the stacked poisons is removed
    px, py = sz.concentrated_attack(x, y, 0.3, rho=RHO)
    assert not f.keep(px, py).any()  # ... that the oracle filter removes every one of
    assert dd.bound[-1] > 5 * oracle.bound[-1]


def test_bad_arguments_are_refused(digits17):
    x, y, *_ = digits17
    f = sz.SphereSlab.fit(x, y)
    for eps in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="eps"):
            sz.certify(x, y, f, eps, rho=1.0)
    with pytest.raises(ValueError, match="rho"):
        sz.certify(x, y, f, 0.1, rho=0.0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sz.SphereSlab.fit(bad, y)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        sz.SphereSlab.fit(x, (y > 0).astype(float))
    with pytest.raises(ValueError, match="quantile"):
        sz.SphereSlab.fit(x, y, 1.5)
    with pytest.raises(ValueError, match="iterations=0 is out of range"):
        sz.train_svm(x, y, 1.0, iterations=0)
    with pytest.raises(ValueError, match="negative=12 is not a class of digits"):
        sz.binary_pair(ls.load_dataset("digits"), 1, 12)
