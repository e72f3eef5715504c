"""The course's aggregation rules as Flower (``flwr``) strategies, for a class whose federation
outgrows one machine.

In the lab the clients are rows of one tensor; in a real deployment each client is a process or a
device and a Flower server runs the rule. Flower ships the same four rules (``FedAvg``,
``FedMedian``, ``FedTrimmedAvg``, ``Krum``); :func:`strategy` builds the one matching a rule of
:mod:`.aggregation`, and :func:`aggregate_with` feeds it our (n_clients, d) rows through its real
``aggregate_fit`` entry point, so a test can check that both give the same answer.

Flower aggregates *models* where the lab aggregates *updates* (model minus global): all four
rules commute with adding the same vector to every row, so the results agree.

Needs the optional ``flwr`` package: ``pip install -e '.[lab4]'``.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validate import check_choice, check_int
from . import aggregation


def _flwr():
    try:
        import flwr  # noqa: F401
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("Flower is not installed; run: pip install -e '.[lab4]' "
                          "(or: pip install 'flwr>=1.8')") from exc
    return flwr


def strategy(rule: str, *, n_malicious: int = 0, trim: float = 0.2, krum_m: int = 1):
    """The Flower strategy for ``rule`` (``"mean"``, ``"median"``, ``"trimmed_mean"``, ``"krum"``
    or ``"multi_krum"``), configured like :func:`.federated.aggregate`."""
    _flwr()
    from flwr.server.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

    rule = check_choice("rule", rule, ("mean", "median", "trimmed_mean", "krum", "multi_krum"))
    quiet = {"fit_metrics_aggregation_fn": _no_metrics}  # the lab's clients report no metrics
    if rule == "mean":
        return FedAvg(**quiet)
    if rule == "median":
        return FedMedian(**quiet)
    if rule == "trimmed_mean":
        return FedTrimmedAvg(beta=aggregation.check_beta("trim", trim), **quiet)
    n_malicious = check_int("n_malicious", n_malicious, low=0)
    # Flower: num_clients_to_keep = 0 is Krum, > 0 is Multi-Krum averaging that many
    keep = 0 if rule == "krum" and krum_m == 1 else check_int("krum_m", krum_m, low=1)
    return Krum(num_malicious_clients=n_malicious, num_clients_to_keep=keep, **quiet)


def _no_metrics(_: list) -> dict:
    return {}


def aggregate_with(strat, rows: torch.Tensor, num_examples: list[int] | None = None) -> torch.Tensor:
    """Run Flower strategy ``strat`` on the (n_clients, d) ``rows`` exactly as a Flower server
    would on the clients' ``FitRes`` messages; returns the aggregate as a (d,) tensor."""
    _flwr()
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    if not isinstance(rows, torch.Tensor) or rows.ndim != 2:
        raise ValueError("rows must be a 2-D tensor (n_clients, d)")
    counts = num_examples or [1] * len(rows)
    if len(counts) != len(rows):
        raise ValueError(f"num_examples has {len(counts)} entries for {len(rows)} clients")
    results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([r.double().numpy()]), int(c), {}))
               for r, c in zip(rows, counts)]
    params, _ = strat.aggregate_fit(1, results, [])
    (out,) = parameters_to_ndarrays(params)
    return torch.from_numpy(np.asarray(out)).to(rows.dtype)
