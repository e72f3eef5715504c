"""Robust aggregation rules: definitions, robustness to crafted rows, numpy cross-checks, and
clear errors for impossible settings."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labsupport.defenses import aggregation as agg


def _honest(n=10, d=6, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.1 + 1.0


def test_rules_match_numpy_definitions():
    u = _honest(9, 5)
    a = u.numpy()
    assert np.allclose(agg.mean(u).numpy(), a.mean(0))
    assert np.allclose(agg.coordinate_median(u).numpy(), np.median(a, 0))
    assert np.allclose(agg.coordinate_median(u[:8]).numpy(), np.median(a[:8], 0))  # even n
    s = np.sort(a, 0)
    assert np.allclose(agg.trimmed_mean(u, 0.2).numpy(), s[1:-1].mean(0))  # floor(0.2 * 9) = 1


def test_krum_matches_brute_force():
    u = _honest(8, 4, seed=3)
    f = 2
    scores = []
    for i in range(8):
        d = sorted(float(((u[i] - u[j]) ** 2).sum()) for j in range(8) if j != i)
        scores.append(sum(d[:8 - f - 2]))
    assert torch.allclose(agg.krum_scores(u, f), torch.tensor(scores, dtype=torch.float64))
    assert torch.equal(agg.krum(u, f), u[int(np.argmin(scores))])
    best3 = np.argsort(scores, kind="stable")[:3]
    assert torch.allclose(agg.krum(u, f, m=3), u[best3].mean(0))


def test_robust_rules_resist_sign_flipped_clients():
    """20% of clients send -10x the honest direction: the mean flips sign, the robust rules stay
    near the honest average."""
    honest = _honest(16, 20)
    attack = -10 * honest[:4].mean(0, keepdim=True).repeat(4, 1)
    u = torch.cat([honest, attack])
    truth = honest.mean(0)
    assert (agg.mean(u) * truth).sum() < 0
    for rule in (agg.coordinate_median, lambda x: agg.trimmed_mean(x, 0.2), lambda x: agg.krum(x, 4, m=10)):
        assert torch.allclose(rule(u), truth, atol=0.15)
    chosen = agg.krum(u, 4)  # plain Krum returns one client's update: an honest one
    assert any(torch.equal(chosen, row) for row in honest)
    assert int(agg.krum_scores(u, 4).argmax()) >= 16  # the attackers score worst


@settings(max_examples=30, deadline=None)
@given(st.floats(allow_nan=True).filter(lambda b: not 0 <= b < 0.5))
def test_trimmed_fraction_out_of_range(beta):
    with pytest.raises(ValueError, match="beta"):
        agg.trimmed_mean(_honest(), beta)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.integers(0, 12))
def test_krum_f_too_large(n, f):
    u = _honest(n)
    if n - f - 2 < 1:
        with pytest.raises(ValueError, match=f"f={f} is too large for n={n}"):
            agg.krum(u, f)
    else:
        assert agg.krum(u, f).shape == (u.shape[1],)


def test_bad_updates():
    with pytest.raises(ValueError, match="2-D float"):
        agg.mean(torch.ones(3))
    with pytest.raises(ValueError, match="empty"):
        agg.mean(torch.ones(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        agg.coordinate_median(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="m=9"):
        agg.krum(_honest(10), 2, m=9)
