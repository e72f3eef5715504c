"""Our aggregation rules agree with Flower's own (its aggregate_* functions and its strategies'
aggregate_fit), the cross-check the lab promises."""

import numpy as np
import pytest
import torch
from flwr.server.strategy import aggregate as flwr_agg

from labsupport.defenses import aggregation as agg
from labsupport.defenses import flower


def _rows(n=20, d=64, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _results(rows):
    return [([r.numpy()], 1) for r in rows]


@pytest.mark.parametrize("n", [19, 20])
def test_rules_match_flowers_aggregate_functions(n):
    u = _rows(n)
    res = _results(u)
    assert np.allclose(agg.mean(u).numpy(), flwr_agg.aggregate(res)[0])
    assert np.allclose(agg.coordinate_median(u).numpy(), flwr_agg.aggregate_median(res)[0])
    assert np.allclose(agg.trimmed_mean(u, 0.2).numpy(), flwr_agg.aggregate_trimmed_avg(res, 0.2)[0])
    assert np.allclose(agg.krum(u, 4).numpy(), flwr_agg.aggregate_krum(res, 4, 0)[0])
    assert np.allclose(agg.krum(u, 4, 12).numpy(), flwr_agg.aggregate_krum(res, 4, 12)[0])


@pytest.mark.parametrize("rule,ours", [
    ("mean", lambda u: agg.mean(u)),
    ("median", lambda u: agg.coordinate_median(u)),
    ("trimmed_mean", lambda u: agg.trimmed_mean(u, 0.2)),
    ("krum", lambda u: agg.krum(u, 4)),
    ("multi_krum", lambda u: agg.krum(u, 4, 16)),
])
def test_flower_strategies_agree_on_models_and_on_updates(rule, ours):
    u = _rows(seed=1)
    strat = flower.strategy(rule, n_malicious=4, trim=0.2, krum_m=16 if rule == "multi_krum" else 1)
    assert torch.allclose(flower.aggregate_with(strat, u), ours(u))
    # Flower aggregates models (global + update): the same answer, shifted
    g = torch.randn(64, dtype=torch.float64)
    assert torch.allclose(flower.aggregate_with(strat, u + g), ours(u) + g)


def test_strategy_arguments_are_checked():
    with pytest.raises(ValueError, match="rule"):
        flower.strategy("bulyan")
    with pytest.raises(ValueError, match="trim"):
        flower.strategy("trimmed_mean", trim=0.5)
    with pytest.raises(ValueError, match="num_examples"):
        flower.aggregate_with(flower.strategy("mean"), _rows(4), [1, 2])
