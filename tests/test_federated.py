"""The federated simulation: batched local training equals per-client autograd, the non-IID
split, the attacks' defining properties, argument errors, and (slow) the lab's efficacy targets
on real Fashion-MNIST."""

import math

import pytest
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import labsupport as ls
from labsupport.defenses import aggregation as agg
from labsupport.defenses import federated as fd


def test_batched_mlp_grads_equal_autograd_per_client():
    torch.manual_seed(0)
    model = ls.MLP(in_shape=(1, 6, 6), num_classes=4, hidden=(7, 5))
    k, b = 3, 8
    theta = torch.randn(k, fd.flatten_params(model).numel()) * 0.3
    params = fd._unflatten(theta, fd._shapes(model))
    x, y = torch.rand(k, b, 1, 6, 6), torch.randint(4, (k, b))

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    want = vmap(grad(loss))(params, x, y)
    got = fd.mlp_grads(params, x, y)
    for name in want:
        assert torch.allclose(got[name], want[name], atol=1e-6), name


def test_flat_parameters_round_trip():
    model = ls.MLP()
    theta = torch.randn(fd.flatten_params(model).numel())
    fd.load_flat(model, theta)
    assert torch.equal(fd.flatten_params(model), theta)


def test_dirichlet_split_is_seeded_disjoint_and_non_identical():
    y = torch.arange(10).repeat(500)
    rows = fd.dirichlet_split(y, 20, 0.5, 100, seed=1)
    assert rows.shape == (20, 100)
    assert torch.equal(rows, fd.dirichlet_split(y, 20, 0.5, 100, seed=1))
    assert len(torch.unique(rows)) == rows.numel()  # 2000 of 5000 rows: no reuse needed
    mix = torch.stack([torch.bincount(y[r], minlength=10) for r in rows]).float() / 100
    assert float(mix.max(1).values.mean()) > 0.3  # a client is dominated by a few classes
    iid = torch.stack([torch.bincount(y[r], minlength=10) for r in fd.dirichlet_split(y, 20, 1000.0, 100)])
    assert float((iid.float() / 100).max(1).values.mean()) < 0.2


def test_alie_z_matches_baruch_formula():
    # n = 20, f = 4: s = floor(20/2 + 1) - 4 = 7, z = Phi^-1((20 - 7) / 20) = Phi^-1(0.65)
    assert fd.alie_z(20, 4) == pytest.approx(0.3853, abs=1e-3)
    honest = torch.randn(20, 50, generator=torch.Generator().manual_seed(0))
    mal = fd.alie(honest, 4)
    assert torch.allclose(mal[0], honest.mean(0) - fd.alie_z(20, 4) * honest.std(0))
    with pytest.raises(ValueError, match=r"n_malicious=21 is out of range; allowed: \[0, 20\]"):
        fd.alie_z(20, 21)
    with pytest.raises(ValueError, match="iters=0"):
        fd.min_max(honest, 4, iters=0)


def test_fang_krum_picks_the_largest_lambda_krum_still_selects():
    honest = torch.randn(20, 40, generator=torch.Generator().manual_seed(2)) + 0.2  # spread > mean, as real updates
    for m in (1, 16):
        mal = fd.fang_krum(honest, 4, 4, m)
        s = torch.sign(honest.mean(0))
        lam = float(-(mal[0] / s).mean())
        assert torch.allclose(mal, (-lam * s).expand(4, -1))

        def chosen(v, m=m):
            return int(torch.argsort(agg.krum_scores(torch.cat([v, honest[4:]]), 4), stable=True)[:m].min()) < 4

        assert chosen(mal)  # Krum picks a malicious update
        assert not chosen(mal * 2)  # twice the deviation is caught


def test_fang_trimmed_lands_beyond_the_honest_extremes_against_the_honest_direction():
    honest = torch.randn(20, 30, generator=torch.Generator().manual_seed(3))
    mal = fd.fang_trimmed(honest, 4, torch.Generator().manual_seed(0))
    up = honest.mean(0) > 0
    assert bool((mal[:, up] <= honest.min(0).values[up]).all())
    assert bool((mal[:, ~up] >= honest.max(0).values[~up]).all())


def test_min_max_stays_inside_the_honest_spread_and_reverses_the_mean():
    honest = torch.randn(20, 30, generator=torch.Generator().manual_seed(4)) * 0.2 + 0.1
    mal = fd.min_max(honest, 4)[0].double()
    h = honest.double()
    spread = torch.cdist(h, h).max()
    far = (h - mal).norm(dim=1).max()
    assert far <= spread * (1 + 1e-6)
    assert far >= spread * 0.999  # gamma is as large as allowed
    assert float(mal @ h.mean(0)) < 0  # it points against the honest direction


def test_config_rejects_impossible_settings():
    with pytest.raises(ValueError, match="at least one client must be honest"):
        fd.FedConfig(n_clients=10, malicious=1.0)
    with pytest.raises(ValueError, match="trim"):
        fd.FedConfig(trim=0.5)
    with pytest.raises(ValueError, match="n_clients"):
        fd.FedConfig(n_clients=2)
    with pytest.raises(ValueError, match="malicious"):
        fd.FedConfig(malicious=1.5)


def test_simulate_rejects_bad_arguments():
    x, y = torch.rand(50, 1, 8, 8), torch.arange(50) % 10
    with pytest.raises(ValueError, match="f=2 is too large for n=4"):
        fd.simulate(x, y, x, y, rule="krum", config=fd.FedConfig(n_clients=4, malicious=0.5))
    with pytest.raises(ValueError, match="attack"):
        fd.simulate(x, y, x, y, attack="nope")
    with pytest.raises(ValueError, match="needs a trigger"):
        fd.simulate(x, y, x, y, attack="backdoor", config=fd.FedConfig(n_clients=5, rounds=1, per_client=5))
    with pytest.raises(ValueError, match="x"):
        fd.simulate(x * 3, y, x, y)


def test_a_diverging_mean_is_reported_not_crashed():
    x, y = torch.rand(200, 1, 8, 8), torch.arange(200) % 10
    cfg = fd.FedConfig(n_clients=5, malicious=0.4, rounds=6, per_client=40, scale=1e30)
    res = fd.simulate(x, y, x, y, rule="mean", attack="sign_flip", config=cfg)
    assert res.diverged is not None and len(res.accuracy) == 6
    assert math.isclose(res.final_accuracy, float((y == 0).float().mean()))  # NaN logits -> class 0


@pytest.mark.slow
def test_robust_rules_against_attacks_on_fashion_mnist(fmnist):
    """The lab's targets at its settings (seeded): sign-flip collapses the mean but moves median
    and Krum by <= 3 points; Fang's adaptive attack takes >= 10 points from Krum; the boosted
    backdoor gets through the mean and not the median.

    Under the mean the backdoor's ASR swings from round to round, so the final round alone is a
    draw: over attack seeds 1-6 (Intel AVX-512 CPU) it was 30-100 %, and this seed's 35 % there
    against > 80 % on an AMD one. What holds on every seed is the rate over the last five rounds,
    71-87 %, with a peak of 98-100 %; under the median it averaged 3-4 % over the rounds."""
    m = fd.run_matrix(fmnist.x_train, fmnist.y_train, fmnist.x_test, fmnist.y_test,
                      rules=("mean", "median", "krum"), attacks=("none", "sign_flip", "backdoor", "fang"),
                      config=fd.FedConfig(seed=1), warmup=fd.FedConfig(rounds=10, local_steps=10, seed=0),
                      trigger=ls.Patch(), progress=False)
    assert m.accuracy("mean", "sign_flip") < 0.2
    assert m.drop("median", "sign_flip") <= 3
    assert m.drop("krum", "sign_flip") <= 3
    assert m.drop("krum", "fang") >= 10
    through, held = m.results[("mean", "backdoor")], m.results[("median", "backdoor")]
    assert through.late_asr() >= 0.5 and max(through.asr) >= 0.9, through.asr   # it fires on most triggered inputs
    assert max(held.asr) < 0.1 and held.final_asr < 0.1, held.asr                 # in no round


def test_late_asr_is_the_mean_of_the_last_rounds():
    r = fd.FedResult("mean", "backdoor", asr=[0.1, 0.9, 0.2, 1.0])
    assert r.late_asr(2) == pytest.approx(0.6) and r.late_asr(4) == pytest.approx(0.55)
    with pytest.raises(ValueError, match="rounds=5 is out of range"):
        r.late_asr(5)


def test_the_matrix_table_shows_the_final_and_the_late_backdoor_rate():
    res = {("mean", "none"): fd.FedResult("mean", "none", accuracy=[0.7] * 3, asr=[0.03] * 3,
                                          final_accuracy=0.7, final_asr=0.03),
           ("mean", "backdoor"): fd.FedResult("mean", "backdoor", accuracy=[0.6] * 3, asr=[0.9, 0.2, 0.4],
                                              final_accuracy=0.6, final_asr=0.35)}
    rows = fd.FedMatrix(("mean",), ("none", "backdoor"), res, 0.7).rows()
    assert rows[0][-1] == "ASR backdoor: final / last 3 rounds (none)"   # quick runs have fewer than 5
    assert rows[1][-1] == "35.0 / 50.0 (3.0)"
