"""Robust aggregation rules for federated learning: the server combines the clients' updates
(one row per client) into one update. Poisoned clients send crafted rows; these rules bound
their influence.

* :func:`mean` - FedAvg's plain average (one malicious client can move it anywhere);
* :func:`coordinate_median` - per coordinate, the median over clients (Yin et al. 2018);
* :func:`trimmed_mean` - per coordinate, drop the ``beta`` fraction largest and smallest values,
  average the rest (Yin et al. 2018);
* :func:`krum` - the update closest to its ``n - f - 2`` nearest neighbours (Blanchard et al.
  2017); with ``m > 1``, Multi-Krum averages the ``m`` best-scoring updates.

Each takes ``updates`` as a float tensor (n_clients, d) and returns a (d,) tensor; they agree with
Flower's ``aggregate_*`` functions for equal client weights.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validate import check_float, check_int


def _check_updates(updates: torch.Tensor) -> torch.Tensor:
    if not isinstance(updates, torch.Tensor):
        raise TypeError(f"updates must be a torch.Tensor of shape (n_clients, d), got {type(updates).__name__}")
    if updates.ndim != 2 or not updates.is_floating_point():
        raise ValueError(f"updates must be a 2-D float tensor (n_clients, d); got shape {tuple(updates.shape)}, "
                         f"dtype {updates.dtype}")
    if updates.numel() == 0:
        raise ValueError(f"updates is empty (shape {tuple(updates.shape)}); "
                         "need at least one client and one coordinate")
    if not bool(torch.isfinite(updates.abs().amax())):  # amax propagates NaN; 4x cheaper than isfinite().all()
        raise ValueError("updates contains NaN or infinite values")
    return updates


def check_beta(name: str, beta: float) -> float:
    """A trimmed-mean fraction in [0, 0.5) (0.5 would trim every client)."""
    beta = check_float(name, beta, low=0.0, high=0.5)
    if beta >= 0.5:
        raise ValueError(f"{name}={beta} is out of range; allowed: [0, 0.5) (0.5 would trim every client)")
    return beta


def check_krum_f(n: int, f: int) -> int:
    """Krum's ``f`` for ``n`` clients: each score sums ``n - f - 2 >= 1`` distances."""
    f = check_int("f", f, low=0)
    if n - f - 2 < 1:
        raise ValueError(f"f={f} is too large for n={n} clients; Krum needs n > f + 2 (here f <= {max(n - 3, 0)}), "
                         "and its guarantee n > 2f + 2")
    return f


def _sorted_over_clients(updates: torch.Tensor) -> torch.Tensor:
    """Each column of ``updates`` sorted over the clients. On the CPU numpy's sort along the short
    axis is 5x faster than torch's (16 vs 80 ms for 20 clients x 235k coordinates)."""
    if updates.device.type == "cpu":
        return torch.from_numpy(np.sort(updates.detach().numpy(), axis=0))
    return updates.sort(0).values


def mean(updates: torch.Tensor) -> torch.Tensor:
    """The plain average (FedAvg with equal weights)."""
    return _check_updates(updates).mean(0)


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for an even number of clients the mean of the two middle values
    (as ``numpy.median`` and Flower)."""
    s = _sorted_over_clients(_check_updates(updates))
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def trimmed_mean(updates: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Coordinate-wise trimmed mean: drop ``floor(beta * n)`` largest and as many smallest values
    per coordinate, average the rest. ``beta`` in [0, 0.5)."""
    _check_updates(updates)
    beta = check_beta("beta", beta)
    k = int(beta * len(updates))
    s = _sorted_over_clients(updates)
    return s[k:len(s) - k].mean(0)


def krum_scores(updates: torch.Tensor, f: int) -> torch.Tensor:
    """Krum's score of each client: the sum of squared distances to its ``n - f - 2`` nearest
    other clients (lower = more central)."""
    _check_updates(updates)
    n = len(updates)
    f = check_krum_f(n, f)
    u = updates.double()
    sq = u.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * (u @ u.t())).clamp_min_(0)  # |a-b|^2 via one Gram matrix
    d2.fill_diagonal_(float("inf"))
    return d2.topk(n - f - 2, dim=1, largest=False).values.sum(1)


def krum(updates: torch.Tensor, f: int, m: int = 1) -> torch.Tensor:
    """Krum (``m = 1``) or Multi-Krum: the average of the ``m`` updates with the lowest
    :func:`krum_scores`, for up to ``f`` malicious clients. ``m`` in [1, n - f]."""
    scores = krum_scores(updates, f)
    m = check_int("m", m, low=1, high=len(updates) - f)
    best = torch.argsort(scores, stable=True)[:m]
    return updates[best].mean(0)


RULES = {"mean": mean, "median": coordinate_median, "trimmed_mean": trimmed_mean, "krum": krum}
