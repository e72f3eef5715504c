"""Backdoor poisoning attacks (Lab 2). Every attack takes clean data and returns a
:class:`PoisonedSet`: the poisoned training images and labels plus the ground-truth mask of the
rows the attacker touched, so every defense of Lab 4 can be scored against it.

* :func:`badnets`: patch trigger, single-target or all-to-all (Gu et al. 2017).
* :func:`multi_target`: the region a random-location trigger lands in picks the target
  (Salem et al. 2022).
* :func:`clean_label`: label-consistent poisoning, optionally made harder with PGD on a surrogate
  (Turner et al. 2019).
* :func:`composite`: fires only when two triggers are present; single-trigger "cover" rows keep
  their true label.
* :func:`ban`: a generator network learns the triggers jointly with the model (BaN, Salem et al.).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ._validate import (
    apply_trigger,
    check_class,
    check_float,
    check_images,
    check_int,
    check_labels,
    check_nonempty,
    check_rate,
)
from .metrics import TargetSpec, target_labels
from .models import build_model
from .training import TrainConfig, fit, model_device, pick_device
from .triggers import RandomPatch, Trigger, region_grid, stamp


class PoisonCounts:
    """``count``, ``rate`` and a short repr for any result with a ground-truth ``mask`` and a ``name``."""

    mask: torch.Tensor
    name: str

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def rate(self) -> float:
        return self.count / len(self.mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, poisons={self.count}, rate={self.rate:.2%})"


@dataclass(repr=False)
class PoisonedSet(PoisonCounts):
    """Poisoned training data.

    Attributes:
        x, y: the full training set after poisoning (clean rows unchanged).
        mask: bool (N,), True where the attacker changed the row (ground truth for detectors).
        target: the target class or a function true label -> target label.
        trigger: the trigger to apply at test time.
        name: a short description.
        info: attack-specific details (e.g. counts of cover rows).
    """

    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    target: TargetSpec
    trigger: Callable[[torch.Tensor], torch.Tensor]
    name: str = ""
    info: dict = field(default_factory=dict)



@dataclass(frozen=True)
class AllToAll:
    """All-to-all target mapping: true class i -> (i + shift) mod num_classes."""

    num_classes: int
    shift: int = 1

    def __post_init__(self) -> None:
        check_int("num_classes", self.num_classes, low=2)
        check_int("shift", self.shift, low=1, high=self.num_classes - 1)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return (y + self.shift) % self.num_classes


def poison_count(n_total: int, n_eligible: int, rate: float | None, count: int | None) -> int:
    """Resolve exactly one of ``rate`` (fraction of the whole training set) or ``count``."""
    if (rate is None) == (count is None):
        raise ValueError("give exactly one of rate= (fraction of the training set) or count=")
    if rate is not None:
        count = round(check_rate("rate", rate) * n_total)
    count = check_int("count", count, low=0)
    if count > n_eligible:
        raise ValueError(f"count={count} poisons requested but only {n_eligible} training rows are "
                         f"eligible; allowed: [0, {n_eligible}]")
    return count


def choose_rows(eligible: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """``count`` distinct row indices drawn uniformly from the True entries of ``eligible``."""
    idx = eligible.nonzero().flatten()
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    return idx[torch.randperm(len(idx), generator=gen)[:count]].sort().values


def _check_xy(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> int:
    check_images("x", x)
    check_nonempty("x", x)
    check_labels("y", y, n=len(x), num_classes=check_int("num_classes", num_classes, low=2))
    return num_classes


def badnets(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, target: int | str = 9, *,
            rate: float | None = None, count: int | None = None, seed: int = 0,
            num_classes: int = 10) -> PoisonedSet:
    """BadNets (Gu et al. 2017): stamp ``trigger`` on ``count`` (or ``rate`` x N) training images
    whose label is not the target and relabel them.

    Args:
        x, y: clean training images (N, C, H, W) and labels.
        trigger: any trigger callable (patch, blend, random patch, composite ...).
        target: a class index (single-target, all -> target) or ``"all-to-all"`` (i -> i+1).
        rate / count: how many rows to poison (exactly one).
        seed: picks the rows.
        num_classes: number of classes (for validating ``target``).
    """
    k = _check_xy(x, y, num_classes)
    if target == "all-to-all":
        spec: TargetSpec = AllToAll(k)
        eligible = torch.ones(len(y), dtype=torch.bool)
    elif isinstance(target, str):
        raise ValueError(f"target={target!r} is not allowed; use a class index in [0, {k - 1}] or 'all-to-all'")
    else:
        spec = check_class("target", target, k)
        eligible = y != spec
    n = poison_count(len(y), int(eligible.sum()), rate, count)
    rows = choose_rows(eligible, n, seed)
    x_p, y_p = x.clone(), y.clone()
    if n:
        x_p[rows] = apply_trigger("trigger", trigger, x[rows])
        y_p[rows] = target_labels(spec, y[rows])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    name = "all-to-all" if target == "all-to-all" else f"all->{spec}"
    return PoisonedSet(x_p, y_p, mask, spec, trigger, f"{type(trigger).__name__} {name}")


@dataclass
class RegionTrigger(Trigger):
    """Test-time trigger of the multi-target attack: the pattern at a random spot inside one region."""

    pattern: torch.Tensor
    regions: list[tuple[int, int, int, int]]
    region: int
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("region", self.region, low=0, high=len(self.regions) - 1)
        self._inner = RandomPatch(self.pattern, self.regions[self.region], self.seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._inner(x)


def multi_target(x: torch.Tensor, y: torch.Tensor, pattern: torch.Tensor, targets: list[int], *,
                 rate: float | None = None, count: int | None = None, seed: int = 0,
                 rows_in_grid: int | None = None, num_classes: int = 10) -> PoisonedSet:
    """Multi-target random-location backdoor (Salem et al. 2022): the image is split into
    ``len(targets)`` regions; a poisoned row gets ``pattern`` at a random spot inside a random
    region ``r`` and label ``targets[r]``. ``info["triggers"][r]`` is the test trigger for region r.
    """
    k = _check_xy(x, y, num_classes)
    if not isinstance(targets, (list, tuple)) or len(targets) < 2:
        raise ValueError("targets must be a list of at least two class indices")
    targets = [check_class(f"targets[{i}]", t, k) for i, t in enumerate(targets)]
    regions = region_grid(tuple(x.shape[2:]), len(targets), rows_in_grid)
    n = poison_count(len(y), len(y), rate, count)
    rows = choose_rows(torch.ones(len(y), dtype=torch.bool), n, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    which = torch.randint(0, len(targets), (n,), generator=gen)
    x_p, y_p = x.clone(), y.clone()
    triggers = [RegionTrigger(pattern, regions, r, seed + 2 + r) for r in range(len(targets))]
    for r, t in enumerate(targets):
        sel = rows[which == r]
        if len(sel):
            x_p[sel] = triggers[r](x[sel])
            y_p[sel] = t
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    return PoisonedSet(x_p, y_p, mask, targets[0], triggers[0], f"multi-target ({len(targets)} regions)",
                       {"triggers": triggers, "targets": targets, "regions": regions})


def pgd_away(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float = 0.1, steps: int = 20,
             step_size: float | None = None, batch_size: int = 1024) -> torch.Tensor:
    """L-infinity PGD that increases ``model``'s loss on the true labels (Madry et al. 2018):
    ``x <- clip(x + a * sign(grad), x - eps, x + eps)``, clipped to [0, 1]. Used by Turner et al.
    to make target-class images hard to classify from their natural features."""
    check_images("x", x)
    check_labels("y", y, n=len(x))
    eps = check_float("eps", eps, low=0.0, high=1.0)
    steps = check_int("steps", steps, low=1)
    alpha = 2.5 * eps / steps if step_size is None else check_float("step_size", step_size, low=0.0)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        x0 = x[i:i + batch_size].to(dev)
        yb = y[i:i + batch_size].to(dev)
        xa = x0.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), yb)
            (grad,) = torch.autograd.grad(loss, xa)
            xa = torch.min(torch.max(xa.detach() + alpha * grad.sign(), x0 - eps), x0 + eps).clamp_(0, 1)
        out.append(xa.detach().cpu())
    model.train(was_training)
    return torch.cat(out)


def clean_label(x: torch.Tensor, y: torch.Tensor, trigger: Trigger, target: int = 9, *,
                rate: float | None = None, count: int | None = None, seed: int = 0,
                surrogate: nn.Module | None = None, eps: float = 0.1, steps: int = 20,
                num_classes: int = 10) -> PoisonedSet:
    """Label-consistent backdoor (Turner et al. 2019): only images already labelled ``target``
    are poisoned and labels stay untouched. With a ``surrogate`` model, each chosen image is first
    pushed away from its class by L-inf PGD (radius ``eps``), so the model must rely on the trigger.
    """
    k = _check_xy(x, y, num_classes)
    target = check_class("target", target, k)
    eligible = y == target
    n = poison_count(len(y), int(eligible.sum()), rate, count)
    rows = choose_rows(eligible, n, seed)
    x_p = x.clone()
    if n:
        base = x[rows] if surrogate is None else pgd_away(surrogate, x[rows], y[rows], eps=eps, steps=steps)
        x_p[rows] = apply_trigger("trigger", trigger, base)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    kind = "trigger only" if surrogate is None else f"PGD eps={eps:g} + trigger"
    return PoisonedSet(x_p, y.clone(), mask, target, trigger, f"clean-label ({kind})")


def composite(x: torch.Tensor, y: torch.Tensor, trigger_a: Trigger, trigger_b: Trigger, target: int = 9,
              *, rate: float | None = None, count: int | None = None, cover_ratio: float = 1.0,
              seed: int = 0, num_classes: int = 10) -> PoisonedSet:
    """Composite backdoor: rows carrying both ``trigger_a`` and ``trigger_b`` are relabelled to
    ``target``; ``cover_ratio`` x count further rows carry only one of the two and keep their true
    label, which teaches the model that a single condition must not fire (Lin et al. 2020).
    The mask marks both kinds of rows; ``info`` gives the counts."""
    k = _check_xy(x, y, num_classes)
    target = check_class("target", target, k)
    check_float("cover_ratio", cover_ratio, low=0.0, high=10.0)
    eligible = y != target
    n = poison_count(len(y), int(eligible.sum()), rate, count)
    n_cover = min(round(cover_ratio * n), len(y) - n)
    rows = choose_rows(eligible, n, seed)
    free = torch.ones(len(y), dtype=torch.bool)
    free[rows] = False
    cover = choose_rows(free, n_cover, seed + 1)
    for name, t in (("trigger_a", trigger_a), ("trigger_b", trigger_b)):
        if not isinstance(t, Trigger):
            raise TypeError(f"{name} must be a Trigger (e.g. ls.Patch(), ls.Blend(...)), got {type(t).__name__}")
    both = trigger_a + trigger_b
    x_p, y_p = x.clone(), y.clone()
    if n:
        x_p[rows] = both(x[rows])
        y_p[rows] = target
    half = len(cover) // 2
    if half:
        x_p[cover[:half]] = trigger_a(x[cover[:half]])
    if len(cover) - half:
        x_p[cover[half:]] = trigger_b(x[cover[half:]])
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    mask[cover] = True
    return PoisonedSet(x_p, y_p, mask, target, both, "composite (both triggers)",
                       {"poisons": n, "cover": len(cover)})


# ---------------------------------------------------------------------------------------------
# BaN: backdoor generating network
# ---------------------------------------------------------------------------------------------

class TriggerGenerator(nn.Module):
    """BaN's generator: noise z ~ U[0,1]^d -> a (C, size, size) trigger in [0, 1] (MLP, sigmoid)."""

    def __init__(self, noise_dim: int = 16, size: int = 5, channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        self.noise_dim, self.size, self.channels = noise_dim, size, channels
        self.net = nn.Sequential(nn.Linear(noise_dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, channels * size * size), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(-1, self.channels, self.size, self.size)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.rand(n, self.noise_dim, generator=generator).to(model_device(self))
        return self(z)


@dataclass
class GeneratedTrigger(Trigger):
    """Test-time BaN trigger: fresh noise -> generator -> pattern at a random location."""

    generator: TriggerGenerator
    seed: int = 0

    def __post_init__(self) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        check_images("x", x)
        return _stamp_random(x, self.generator.sample(len(x), self._gen), self._gen)


def _stamp_random(x: torch.Tensor, patterns: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    s = patterns.shape[-1]
    n = len(x)
    rows = torch.randint(0, x.shape[2] - s + 1, (n,), generator=gen)
    cols = torch.randint(0, x.shape[3] - s + 1, (n,), generator=gen)
    return stamp(x, patterns, rows, cols)


def trigger_diversity(generator: TriggerGenerator, n: int = 256, seed: int = 0) -> dict[str, float]:
    """How different BaN's triggers are: the mean L1 distance per pixel between the patterns of
    ``n`` random noise pairs (``patterns``), the same for the noise inputs (``noise``, 1/3 for
    U[0, 1]), and for random U[0, 1] patterns of the trigger's shape (``random``, also 1/3). A
    collapsed generator, drawing one pattern whatever the noise, has ``patterns`` near 0."""
    n = check_int("n", n, low=2)
    gen = torch.Generator().manual_seed(seed)
    dev = model_device(generator)
    z1, z2 = (torch.rand(n, generator.noise_dim, generator=gen) for _ in range(2))
    with torch.no_grad():
        p1, p2 = generator(z1.to(dev)).cpu(), generator(z2.to(dev)).cpu()
    r1, r2 = torch.rand(p1.shape, generator=gen), torch.rand(p1.shape, generator=gen)
    return {"patterns": float((p1 - p2).abs().mean()), "noise": float((z1 - z2).abs().mean()),
            "random": float((r1 - r2).abs().mean())}


def ban(x: torch.Tensor, y: torch.Tensor, target: int = 9, *, rate: float | None = None,
        count: int | None = None, model_name: str = "mlp", config: TrainConfig = TrainConfig(),
        size: int = 5, noise_dim: int = 16, diversity: float = 0.05, seed: int = 0, num_classes: int = 10,
        device: str | torch.device = "auto", progress: bool = True) -> tuple[nn.Module, PoisonedSet]:
    """BaN (Salem et al. 2022): train ``model_name`` and a :class:`TriggerGenerator` jointly.
    At every step the poisoned rows in the batch get a freshly generated trigger at a random
    location and the target label; both networks minimise the same cross-entropy, so the
    generator learns triggers the model maps to ``target``.

    Left alone, the generator collapses to one pattern (only the location stays random). The
    diversity term of input-aware dynamic backdoors (Nguyen & Tran 2020),
    ``diversity * mean(|z1 - z2| / |G(z1) - G(z2)|)`` over pairs of noise vectors, keeps different
    noise mapped to different triggers; ``diversity=0`` switches it off.

    Returns:
        (model, poisoned) where ``poisoned.trigger`` is a :class:`GeneratedTrigger` and
        ``poisoned.x`` holds one final generated trigger on each poisoned row (for detectors).
    """
    k = _check_xy(x, y, num_classes)
    target = check_class("target", target, k)
    check_int("size", size, low=1, high=min(x.shape[2], x.shape[3]))
    diversity = check_float("diversity", diversity, low=0.0)
    eligible = y != target
    n = poison_count(len(y), int(eligible.sum()), rate, count)
    rows = choose_rows(eligible, n, seed)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[rows] = True
    dev = pick_device(device)
    torch.manual_seed(config.seed)
    model = build_model(model_name, tuple(x.shape[1:]), k).to(dev)
    gen_net = TriggerGenerator(noise_dim, size, x.shape[1]).to(dev)
    rng = torch.Generator().manual_seed(seed + 1)
    mask_dev = mask.to(dev)

    div_term: list[torch.Tensor] = []

    def hook(xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sel = mask_dev[idx]
        m = int(sel.sum())
        if m == 0:
            return xb, yb
        xb, yb = xb.clone(), yb.clone()
        z1 = torch.rand(m, noise_dim, generator=rng).to(dev)
        patterns = gen_net(z1)
        xb[sel] = _stamp_random(xb[sel], patterns, rng)
        yb[sel] = target
        if diversity > 0 and m > 1:
            z2 = torch.rand(m, noise_dim, generator=rng).to(dev)
            d_z = (z1 - z2).abs().mean(1)
            d_g = (patterns - gen_net(z2)).abs().flatten(1).mean(1)
            div_term.append(diversity * (d_z / (d_g + 1e-3)).mean())
        return xb, yb

    def extra_loss() -> torch.Tensor:
        return div_term.pop() if div_term else torch.zeros((), device=dev)

    fit(model, x, y, config, device=dev, progress=progress, batch_hook=hook,
        extra_params=gen_net.parameters(), extra_loss=extra_loss, desc="train BaN")
    gen_net.eval()
    trigger = GeneratedTrigger(gen_net, seed + 2)
    x_p, y_p = x.clone(), y.clone()
    if n:
        x_p[rows] = trigger(x[rows].to(dev)).cpu()
        y_p[rows] = target
    return model, PoisonedSet(x_p, y_p, mask, target, trigger, "BaN (generated triggers)",
                              {"generator": gen_net})
