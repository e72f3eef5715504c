"""A federated-learning simulation with poisoned clients (Lab 4, robust aggregation).

Each round the server sends the global model (a flat parameter vector) to every client; each
client runs a few SGD steps on its own non-identically distributed data and returns its update
(local model minus global model); the server combines the updates with an aggregation rule from
:mod:`.aggregation` and steps the global model. Malicious clients send crafted updates instead:

* ``sign_flip``: the negated honest update, scaled (``-scale * g``; with ``f`` of ``n`` clients
  malicious, ``scale > (n - f) / f`` turns the mean backwards);
* ``gaussian``: pure noise ``N(0, sigma^2)`` per coordinate;
* ``backdoor``: train on trigger-stamped data relabelled to the target, then boost the update by
  ``n_clients / n_malicious`` so the mean is *replaced* by the attacker's model (Bagdasaryan et
  al. 2020, "How to backdoor federated learning");
* ``alie``: "A little is enough" (Baruch et al. 2019): ``mu - z * sigma`` per coordinate over the
  honest updates, with ``z`` small enough that the malicious rows look like ordinary clients;
* ``min_max``: the honest mean moved against its own direction as far as the honest spread
  allows (Shejwalkar & Houmansadr 2021);
* ``fang``: the full-knowledge directed-deviation attack of Fang et al. 2020, adapted to the rule
  it faces: against median/trimmed mean every coordinate is pushed just past the honest extreme
  opposite to the honest direction; against Krum the malicious clients all send ``-lambda * s``
  with the largest ``lambda`` that Krum still selects.

All clients train as **one batched computation**: their parameters are stacked on a leading client
axis and one batched matrix product per layer (:func:`mlp_grads`) runs every client's step at once,
so a round of 30 clients is a handful of ``bmm`` calls, not 30 Python training loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from .._validate import check_choice, check_class, check_float, check_images, check_int, check_labels, check_rate
from ..experiments import TableView
from ..models import MLP
from . import aggregation

ATTACKS = ("none", "sign_flip", "gaussian", "backdoor", "alie", "min_max", "fang")
LATE_ROUNDS = 5   # FedResult.late_asr: the backdoor's rate over the last rounds, not the final one alone


@dataclass(frozen=True)
class FedConfig:
    """Settings of one federated run.

    Attributes:
        n_clients: clients taking part in every round (20-50 in the lab).
        malicious: fraction of them controlled by the attacker (``round(malicious * n_clients)``).
        rounds: communication rounds.
        local_steps, batch_size, lr: each client's local SGD per round.
        alpha: Dirichlet concentration of the label split (small = more non-identical clients).
        per_client: training images per client.
        scale: sign-flip multiplier; sigma: Gaussian attack's noise level.
        poison_frac: share of a backdoor client's batch that carries the trigger.
        trim: trimmed mean's ``beta``; krum_m: Multi-Krum's ``m`` (1 = Krum).
        eval_size: test images scored after every round (the final score uses the whole test set).
        seed: seeds the split, the initial model, the batches and the attacks.
    """

    n_clients: int = 20
    malicious: float = 0.2
    rounds: int = 15
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.3
    alpha: float = 1.0
    per_client: int = 600
    scale: float = 10.0
    sigma: float = 1.0
    poison_frac: float = 0.5
    trim: float = 0.2
    krum_m: int = 1
    eval_size: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n_clients", self.n_clients, low=3, high=10_000)
        check_rate("malicious", self.malicious)
        if self.n_malicious >= self.n_clients:
            raise ValueError(f"malicious={self.malicious} gives {self.n_malicious} malicious clients out of "
                             f"n_clients={self.n_clients}; at least one client must be honest")
        check_int("rounds", self.rounds, low=1)
        check_int("local_steps", self.local_steps, low=1)
        check_int("batch_size", self.batch_size, low=1)
        check_float("lr", self.lr, low=0.0, low_open=True)
        check_float("alpha", self.alpha, low=0.0, low_open=True)
        check_int("per_client", self.per_client, low=1)
        check_float("scale", self.scale, low=0.0)
        check_float("sigma", self.sigma, low=0.0)
        check_rate("poison_frac", self.poison_frac)
        aggregation.check_beta("trim", self.trim)
        check_int("krum_m", self.krum_m, low=1, high=self.n_clients)
        check_int("eval_size", self.eval_size, low=1)
        check_int("seed", self.seed, low=0)

    @property
    def n_malicious(self) -> int:
        return round(self.malicious * self.n_clients)


@dataclass
class FedResult:
    """History and outcome of one run: accuracy (and ASR for the backdoor) after every round on
    ``eval_size`` test images, final values on the whole test set, and the final global model.
    ``diverged`` is the round whose aggregate was not finite (the model is destroyed from there:
    its NaN logits predict class 0 for every input), or ``None``."""

    rule: str
    attack: str
    accuracy: list[float] = field(default_factory=list)
    asr: list[float] = field(default_factory=list)
    final_accuracy: float = float("nan")
    final_asr: float = float("nan")
    diverged: int | None = None
    model: nn.Module | None = None

    def late_asr(self, rounds: int = LATE_ROUNDS) -> float:
        """Mean per-round ASR over the last ``rounds`` rounds. Under a rule that lets the backdoor
        through, its ASR swings from round to round (the honest clients' updates wear it down, the
        attackers plant it again), so the final round alone is a draw: 30-100 % over seeds."""
        rounds = check_int("rounds", rounds, low=1, high=len(self.asr))
        return float(np.mean(self.asr[-rounds:]))


# ---------------------------------------------------------------------------------------------
# Data split
# ---------------------------------------------------------------------------------------------

def dirichlet_split(y: torch.Tensor, n_clients: int, alpha: float, per_client: int,
                    seed: int = 0) -> torch.Tensor:
    """Give each client ``per_client`` training rows whose class mix is drawn from
    ``Dirichlet(alpha)`` (Hsu et al. 2019's non-identical split; small ``alpha`` = each client
    sees few classes). Rows are dealt without replacement while a class lasts.

    Returns:
        (n_clients, per_client) row indices into ``y``.
    """
    y = check_labels("y", y)
    n_clients = check_int("n_clients", n_clients, low=1)
    alpha = check_float("alpha", alpha, low=0.0, low_open=True)
    per_client = check_int("per_client", per_client, low=1)
    rng = np.random.default_rng(seed)
    y_np = y.numpy()
    classes = np.unique(y_np)
    pools = [rng.permutation(np.flatnonzero(y_np == c)) for c in classes]
    props = rng.dirichlet(np.full(len(classes), alpha), size=n_clients)
    taken = np.zeros(len(classes), dtype=np.int64)
    out = np.empty((n_clients, per_client), dtype=np.int64)
    for k in range(n_clients):
        counts = rng.multinomial(per_client, props[k])
        rows = []
        for c, cnt in enumerate(counts):
            pos = (taken[c] + np.arange(cnt)) % len(pools[c])  # wraps only when a class runs out
            rows.append(pools[c][pos])
            taken[c] += cnt
        out[k] = rng.permutation(np.concatenate(rows))
    return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------
# Flat parameter vectors
# ---------------------------------------------------------------------------------------------

def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.named_parameters()}


def flatten_params(model: nn.Module) -> torch.Tensor:
    """The model's parameters as one flat vector (d,)."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _unflatten(theta: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """(..., d) -> {name: (..., *shape)} views."""
    out, i = {}, 0
    lead = theta.shape[:-1]
    for name, shape in shapes.items():
        n = math.prod(shape)
        out[name] = theta[..., i:i + n].reshape(*lead, *shape)
        i += n
    return out


def load_flat(model: nn.Module, theta: torch.Tensor) -> nn.Module:
    """Copy a flat parameter vector into ``model`` (returns it)."""
    with torch.no_grad():
        for p, v in zip(model.parameters(), _unflatten(theta, _shapes(model)).values()):
            p.copy_(v)
    return model


# ---------------------------------------------------------------------------------------------
# Local training (all clients at once)
# ---------------------------------------------------------------------------------------------

Poison = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def mlp_grads(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of every client's mean cross-entropy for a batch of course MLPs, by hand.

    ``params`` maps the :class:`~labsupport.models.MLP` parameter names to (K, *shape) tensors,
    ``x`` is (K, B, C, H, W) and ``y`` (K, B). The same result as
    ``torch.func.vmap(torch.func.grad(loss))`` (the tests check it) at about half the cost on a
    CPU: one batched matrix product (``bmm``) per layer, no autograd graph.
    """
    n_layers = sum(1 for name in params if name.endswith(".weight"))
    names = [f"hidden.{i}" for i in range(n_layers - 1)] + ["head"]
    ws = [params[f"{n}.weight"] for n in names]
    acts = [x.flatten(2)]
    for i in range(n_layers - 1):
        acts.append(torch.baddbmm(params[f"{names[i]}.bias"][:, None], acts[-1], ws[i].transpose(1, 2)).relu_())
    delta = torch.baddbmm(params["head.bias"][:, None], acts[-1], ws[-1].transpose(1, 2)).softmax(2)
    delta.scatter_add_(2, y[..., None], torch.full_like(delta[..., :1], -1.0))  # softmax - onehot
    delta /= x.shape[1]
    out = {}
    for i in range(n_layers - 1, -1, -1):
        out[f"{names[i]}.weight"] = torch.bmm(delta.transpose(1, 2), acts[i])
        out[f"{names[i]}.bias"] = delta.sum(1)
        if i:
            delta = torch.bmm(delta, ws[i]).mul_(acts[i] > 0)
    return out


def local_updates(model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  rows: torch.Tensor, cfg: FedConfig, gen: torch.Generator,
                  poison: Poison | None = None) -> torch.Tensor:
    """Every client's update after ``cfg.local_steps`` SGD steps from the global ``theta``.

    Args:
        model: the course MLP (its architecture; its own weights are not used).
        theta: global parameters (d,).
        x, y: the training set; rows: (K, per_client) indices of each client's rows.
        poison: optional ``(xb, yb) -> (xb, yb)`` applied to the (K, B, ...) batches (backdoor).

    Returns:
        (K, d) updates, local minus global.
    """
    k = len(rows)
    local = theta.expand(k, -1).clone()
    params = _unflatten(local, _shapes(model))  # views into ``local``
    clients = torch.arange(k)[:, None]
    for _ in range(cfg.local_steps):
        pick = rows[clients, torch.randint(rows.shape[1], (k, cfg.batch_size), generator=gen)]
        xb, yb = x[pick], y[pick]
        if poison is not None:
            xb, yb = poison(xb, yb)
        for name, g in mlp_grads(params, xb, yb).items():
            params[name].sub_(g, alpha=cfg.lr)
    return local - theta


# ---------------------------------------------------------------------------------------------
# Attacks on updates
# ---------------------------------------------------------------------------------------------

def alie_z(n_clients: int, n_malicious: int) -> float:
    """Baruch et al. 2019's ``z_max``: with ``s = floor(n/2 + 1) - f`` honest clients needed for a
    majority, the largest ``z`` for which ``s`` honest updates lie further from the mean than
    ``mu - z sigma``: ``z = Phi^{-1}((n - s) / n)``."""
    n_clients = check_int("n_clients", n_clients, low=2)
    check_int("n_malicious", n_malicious, low=0, high=n_clients)
    s = math.floor(n_clients / 2 + 1) - n_malicious
    p = (n_clients - s) / n_clients
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(min(max(p, 1e-6), 1 - 1e-6))))


def alie(honest: torch.Tensor, n_malicious: int, z: float | None = None) -> torch.Tensor:
    """"A little is enough": every malicious client sends ``mu - z * sigma`` (coordinate-wise mean
    and standard deviation of the honest updates), ``z`` from :func:`alie_z` by default."""
    z = alie_z(len(honest), n_malicious) if z is None else check_float("z", z)
    row = honest.mean(0) - z * honest.std(0)
    return row.expand(n_malicious, -1).clone()


def min_max(honest: torch.Tensor, n_malicious: int, iters: int = 30) -> torch.Tensor:
    """Min-Max (Shejwalkar & Houmansadr 2021), a directed deviation tuned to the honest spread:
    every malicious client sends ``mu - gamma * mu / |mu|`` (against the honest direction) with
    the largest ``gamma`` whose farthest honest update is no farther than the two farthest
    honest updates are from each other, so distance-based rules cannot single it out
    (bisection on ``gamma``)."""
    check_int("n_malicious", n_malicious, low=0, high=len(honest))
    check_int("iters", iters, low=1)
    h = honest.double()
    mu = h.mean(0)
    sd = mu / mu.norm().clamp_min(1e-12)
    sq = h.pow(2).sum(1)
    spread = float((sq[:, None] + sq[None, :] - 2 * h @ h.t()).clamp_min(0).max())
    # |mu - g sd - h_i|^2 = |mu - h_i|^2 - 2 g sd.(mu - h_i) + g^2 |sd|^2, for every honest i
    a, b, c = (mu - h).pow(2).sum(1), (mu - h) @ sd, float(sd.pow(2).sum())
    lo, hi = 0.0, 1.0
    while float((a - 2 * hi * b + hi * hi * c).max()) <= spread and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((a - 2 * mid * b + mid * mid * c).max()) <= spread else (lo, mid)
    return (mu - lo * sd).to(honest.dtype).expand(n_malicious, -1).clone()


def fang_trimmed(honest: torch.Tensor, n_malicious: int, gen: torch.Generator, b: float = 2.0) -> torch.Tensor:
    """Fang et al. 2020's full-knowledge attack on trimmed mean and median: where the honest mean
    moves a coordinate up, send values just below the honest minimum (in ``[w_min / b, w_min]``
    or ``[b w_min, w_min]``), and the mirror image where it moves down."""
    s = torch.sign(honest.mean(0))
    lo, hi = honest.min(0).values, honest.max(0).values
    down_lo = torch.where(lo > 0, lo / b, lo * b)
    up_hi = torch.where(hi > 0, hi * b, hi / b)
    u = torch.rand(n_malicious, honest.shape[1], generator=gen, dtype=honest.dtype)
    down = down_lo + u * (lo - down_lo)
    up = hi + u * (up_hi - hi)
    return torch.where(s > 0, down, up)


def fang_krum(honest: torch.Tensor, n_malicious: int, f: int, m: int = 1, tol: float = 1e-6) -> torch.Tensor:
    """Fang et al. 2020's attack on Krum: all malicious clients send ``-lambda * s`` (``s`` the
    sign of the honest mean), with ``lambda`` halved from a large start until Krum (or
    Multi-Krum) picks a malicious update.

    ``honest`` holds every client's honest update, malicious clients first. The search needs
    the Krum scores for many ``lambda``; the distance from ``-lambda s`` to an honest update
    ``g`` is ``lambda^2 d + 2 lambda s.g + |g|^2``, so each try costs O(n^2), not a new
    (n, d) distance matrix.
    """
    s = torch.sign(honest.mean(0)).double()
    benign = honest[n_malicious:].double()
    n_b, n = len(benign), len(honest)
    keep = n - aggregation.check_krum_f(n, f) - 2
    d_bb = torch.cdist(benign, benign).pow(2)
    d_bb.fill_diagonal_(float("inf"))
    sg, g2, dim = benign @ s, benign.pow(2).sum(1), float(s.abs().sum())
    lam = float(honest.abs().max()) * 2
    while lam > tol:
        d_mb = lam ** 2 * dim + 2 * lam * sg + g2  # (n_b,) distance of the malicious point
        mal_row = torch.cat([torch.zeros(n_malicious - 1, dtype=d_mb.dtype), d_mb])
        mal_score = mal_row.topk(keep, largest=False).values.sum()
        ben_rows = torch.cat([d_mb[:, None].expand(n_b, n_malicious), d_bb], 1)
        ben_scores = ben_rows.topk(keep, dim=1, largest=False).values.sum(1)
        # Krum breaks ties towards the lower index; the malicious rows come first
        if int((ben_scores < mal_score).sum()) < m:
            break
        lam /= 2
    return (-lam * s).to(honest.dtype).expand(n_malicious, -1).clone()


# ---------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------

RULE_NAMES = ("mean", "median", "trimmed_mean", "krum", "multi_krum")


def aggregate(updates: torch.Tensor, rule: str, cfg: FedConfig) -> torch.Tensor:
    """Combine (K, d) updates with ``rule`` (one of :data:`RULE_NAMES`), Krum's ``f`` set to the
    number of malicious clients."""
    rule = check_choice("rule", rule, RULE_NAMES)
    if rule == "mean":
        return aggregation.mean(updates)
    if rule == "median":
        return aggregation.coordinate_median(updates)
    if rule == "trimmed_mean":
        return aggregation.trimmed_mean(updates, cfg.trim)
    f = cfg.n_malicious
    m = cfg.krum_m if rule == "krum" else len(updates) - f
    return aggregation.krum(updates, f, m)


def _backdoor_poison(trigger: Callable, target: int, n_mal: int, frac: float) -> Poison:
    def poison(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = round(frac * xb.shape[1])
        if q and n_mal:
            xb, yb = xb.clone(), yb.clone()
            part = xb[:n_mal, :q]
            xb[:n_mal, :q] = trigger(part.flatten(0, 1)).reshape(part.shape)
            yb[:n_mal, :q] = target
        return xb, yb
    return poison


def _malicious(attack: str, honest: torch.Tensor, rule: str, cfg: FedConfig, gen: torch.Generator) -> torch.Tensor:
    m = cfg.n_malicious
    if attack == "sign_flip":
        return -cfg.scale * honest[:m]
    if attack == "gaussian":
        return cfg.sigma * torch.randn(m, honest.shape[1], generator=gen)
    if attack == "backdoor":  # model replacement: boost so the mean lands on the attacker's model
        return honest[:m] * (cfg.n_clients / m)
    if attack == "alie":
        return alie(honest, m)
    if attack == "min_max":
        return min_max(honest, m)
    if rule in ("krum", "multi_krum"):  # fang
        return fang_krum(honest, m, m, cfg.krum_m if rule == "krum" else cfg.n_clients - m)
    return fang_trimmed(honest, m, gen)


@torch.no_grad()
def _scores(model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
            x_trig: torch.Tensor | None, target: int) -> tuple[float, float]:
    params = _unflatten(theta, _shapes(model))
    acc = float((functional_call(model, params, (x,)).argmax(1) == y).float().mean())
    asr = float("nan")
    if x_trig is not None:
        asr = float((functional_call(model, params, (x_trig,)).argmax(1) == target).float().mean())
    return acc, asr


def simulate(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
             rule: str = "mean", attack: str = "none", config: FedConfig | None = None,
             trigger: Callable[[torch.Tensor], torch.Tensor] | None = None, target: int = 9,
             init: nn.Module | None = None, progress: bool = False) -> FedResult:
    """Run federated training of the course MLP with ``attack`` against ``rule``.

    Args:
        x, y: training images (N, C, H, W) in [0, 1] and labels, split among the clients.
        x_test, y_test: test set (accuracy; ASR on the rows whose label is not ``target``).
        rule: aggregation rule, one of :data:`RULE_NAMES`.
        attack: one of :data:`ATTACKS`.
        trigger, target: the backdoor's trigger (ASR is measured for every run, so the no-attack
            run gives the baseline rate) and its target class.
        init: the global model to start from (e.g. the result of clean rounds before the
            attackers join); a fresh seeded MLP when ``None``.

    Returns:
        :class:`FedResult` with the per-round history and the final global model.
    """
    cfg = config or FedConfig()
    x = check_images("x", x)
    y = check_labels("y", y, n=len(x))
    x_test = check_images("x_test", x_test)
    y_test = check_labels("y_test", y_test, n=len(x_test))
    rule = check_choice("rule", rule, RULE_NAMES)
    attack = check_choice("attack", attack, ATTACKS)
    num_classes = int(max(int(y.max()), int(y_test.max()))) + 1
    target = check_class("target", target, num_classes)
    if rule in ("krum", "multi_krum"):
        aggregation.check_krum_f(cfg.n_clients, cfg.n_malicious)
    if attack != "none" and cfg.n_malicious == 0:
        raise ValueError(f"attack={attack!r} needs malicious clients; malicious={cfg.malicious} gives none "
                         f"of n_clients={cfg.n_clients}")

    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():  # a seeded initial model without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model = MLP(in_shape=tuple(x.shape[1:]), num_classes=num_classes)
    if init is not None:
        if not isinstance(init, MLP) or _shapes(init) != _shapes(model):
            raise TypeError(f"init must be a course MLP with parameter shapes {dict(_shapes(model))}")
        model.load_state_dict(init.state_dict())
    theta = flatten_params(model)
    rows = dirichlet_split(y, cfg.n_clients, cfg.alpha, cfg.per_client, seed=cfg.seed)
    ev = torch.randperm(len(x_test), generator=gen)[:cfg.eval_size]
    keep = y_test != target
    x_trig_all = trigger(x_test[keep]) if trigger is not None else None
    x_trig_ev = trigger(x_test[ev][y_test[ev] != target]) if trigger is not None else None
    poison = None
    if attack == "backdoor":
        if trigger is None:
            raise ValueError("attack='backdoor' needs a trigger (e.g. ls.Patch())")
        poison = _backdoor_poison(trigger, target, cfg.n_malicious, cfg.poison_frac)

    result = FedResult(rule, attack)
    for _ in tqdm(range(cfg.rounds), desc=f"{rule} vs {attack}", disable=not progress, leave=False):
        if result.diverged is None:
            updates = local_updates(model, theta, x, y, rows, cfg, gen, poison)
            if attack != "none":
                updates[:cfg.n_malicious] = _malicious(attack, updates, rule, cfg, gen)
            finite = bool(torch.isfinite(updates.abs().amax()))  # amax propagates NaN; cheaper than isfinite().all()
            if finite:
                theta = theta + aggregate(updates, rule, cfg)
            if not finite or not bool(torch.isfinite(theta).all()):
                result.diverged = len(result.accuracy) + 1  # the weights blew up: keep NaN from here
                theta = torch.full_like(theta, float("nan"))
        acc, asr = _scores(model, theta, x_test[ev], y_test[ev], x_trig_ev, target)
        result.accuracy.append(acc)
        result.asr.append(asr)
    result.final_accuracy, result.final_asr = _scores(model, theta, x_test, y_test, x_trig_all, target)
    result.model = load_flat(model, theta)
    return result


# ---------------------------------------------------------------------------------------------
# Every rule against every attack
# ---------------------------------------------------------------------------------------------

@dataclass(repr=False)
class FedMatrix(TableView):
    """Results of :func:`run_matrix`: ``results[(rule, attack)]`` and the warm-up accuracy."""

    rules: tuple[str, ...]
    attacks: tuple[str, ...]
    results: dict[tuple[str, str], FedResult]
    warmup_accuracy: float

    def accuracy(self, rule: str, attack: str) -> float:
        return self.results[(rule, attack)].final_accuracy

    def drop(self, rule: str, attack: str) -> float:
        """Accuracy lost to ``attack`` under ``rule``, in points (vs the same rule, no attack)."""
        return 100 * (self.accuracy(rule, "none") - self.accuracy(rule, attack))

    def rows(self) -> list[list[str]]:
        head = ["rule"] + [f"acc {a}" for a in self.attacks]
        late = min([LATE_ROUNDS, *(len(res.asr) for res in self.results.values())])
        head += [f"ASR backdoor: final / last {late} rounds (none)"] if "backdoor" in self.attacks else []
        out = [head]
        for r in self.rules:
            row = [r] + [f"{100 * self.accuracy(r, a):.1f}" for a in self.attacks]
            if "backdoor" in self.attacks:
                base = f" ({100 * self.results[(r, 'none')].final_asr:.1f})" if "none" in self.attacks else ""
                res = self.results[(r, "backdoor")]
                row.append(f"{100 * res.final_asr:.1f} / {100 * res.late_asr(late):.1f}{base}")
            out.append(row)
        return out


def run_matrix(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
               rules: tuple[str, ...] = ("mean", "median", "trimmed_mean", "krum"),
               attacks: tuple[str, ...] = ("none", "sign_flip", "gaussian", "backdoor", "fang"),
               config: FedConfig | None = None, warmup: FedConfig | None = None,
               trigger: Callable[[torch.Tensor], torch.Tensor] | None = None, target: int = 9,
               progress: bool = True) -> FedMatrix:
    """Every rule against every attack, all from one shared warm start.

    The federation first trains with FedAvg and no attacker for ``warmup`` (the model the
    attackers find when they join, as in Bagdasaryan et al.'s setting); each (rule, attack) pair
    then runs ``config.rounds`` rounds from it with the same client data and seeds.
    """
    for r in rules:
        check_choice("rules", r, RULE_NAMES)
    for a in attacks:
        check_choice("attacks", a, ATTACKS)
    cfg = config or FedConfig()
    init, warm_acc = None, float("nan")
    if warmup is not None:
        warm = simulate(x, y, x_test, y_test, config=warmup, target=target, progress=progress)
        init, warm_acc = warm.model, warm.final_accuracy
    results = {}
    pairs = [(r, a) for r in rules for a in attacks]
    for r, a in tqdm(pairs, desc="rules x attacks", disable=not progress):
        results[(r, a)] = simulate(x, y, x_test, y_test, rule=r, attack=a, config=cfg, trigger=trigger,
                                   target=target, init=init)
    return FedMatrix(tuple(rules), tuple(attacks), results, warm_acc)


def lab_configs(profile: str, seed: int = 0) -> tuple[FedConfig, FedConfig]:
    """The lab's ``(warmup, attack phase)`` settings for a profile: ``full`` (and ``gpu``: the
    simulation is CPU-sized) runs 10 clean FedAvg rounds of 10 local steps, then 15 attacked
    rounds of 5; ``quick`` 3 + 4 rounds on fewer images per client."""
    check_choice("profile", profile, ("full", "quick", "gpu"))
    if profile == "quick":
        return (FedConfig(rounds=3, local_steps=10, per_client=300, eval_size=1000, seed=seed),
                FedConfig(rounds=4, per_client=300, eval_size=1000, seed=seed + 1))
    return FedConfig(rounds=10, local_steps=10, seed=seed), FedConfig(seed=seed + 1)
