"""STRIP (Gao et al. 2019): superimpose an input on N clean images and look at the entropy of the
model's predictions. A clean input's blends are classified all over the place (high entropy); an
input carrying a strong trigger keeps its target class whatever it is blended with (low entropy).
The threshold is the FRR quantile of a normal distribution fitted to clean inputs' entropies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import norm
from torch import nn

from .._validate import check_images, check_int
from .common import Detection, check_open_fraction, model_device


@torch.no_grad()
def strip_entropy(model: nn.Module, x: torch.Tensor, pool: torch.Tensor, *, n: int = 100, seed: int = 0,
                  batch_size: int = 64) -> torch.Tensor:
    """For each input, the mean (over ``n`` random images of ``pool``) Shannon entropy, in bits, of
    the model's softmax on the superimposed image ``clip(x + pool_j, 0, 1)`` (the paper's code
    adds the two images with weight 1 each)."""
    check_images("x", x)
    check_images("pool", pool)
    n = check_int("n", n, low=1)
    if x.shape[1:] != pool.shape[1:]:
        raise ValueError(f"x images {tuple(x.shape[1:])} and pool images {tuple(pool.shape[1:])} differ in shape")
    dev = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    out = []
    pool_dev = pool.to(dev)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        picks = torch.randint(0, len(pool), (len(xb), n), generator=gen).to(dev)
        blends = (xb.unsqueeze(1) + pool_dev[picks]).clamp_(0, 1).flatten(0, 1)
        logp = model(blends).log_softmax(1)
        ent = -(logp.exp() * logp).sum(1) / torch.log(torch.tensor(2.0))
        out.append(ent.view(len(xb), n).mean(1).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Strip:
    """A fitted STRIP detector: flags inputs whose entropy is below ``threshold``."""

    model: nn.Module
    pool: torch.Tensor
    n: int
    frr: float
    mean: float
    std: float
    threshold: float
    seed: int = 0

    @classmethod
    def fit(cls, model: nn.Module, clean: torch.Tensor, *, n: int = 100, frr: float = 0.01,
            pool: torch.Tensor | None = None, seed: int = 0) -> Strip:
        """Fit the threshold on ``clean`` inputs (held-out, trusted): entropies ~ Normal(mean, std),
        threshold = its ``frr`` quantile. ``pool`` (default: ``clean``) supplies the overlays."""
        frr = check_open_fraction("frr", frr)
        n = check_int("n", n, low=1)
        pool = clean if pool is None else pool
        ent = strip_entropy(model, clean, pool, n=n, seed=seed).double()
        mean, std = float(ent.mean()), float(ent.std())
        return cls(model, pool, n, frr, mean, std, float(norm.ppf(frr, loc=mean, scale=max(std, 1e-12))), seed)

    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        return strip_entropy(self.model, x, self.pool, n=self.n, seed=self.seed + 1)

    def detect(self, x: torch.Tensor) -> Detection:
        """Flag the inputs of ``x`` whose entropy falls below the threshold (scores = -entropy)."""
        ent = self.entropy(x)
        return Detection(f"STRIP (N={self.n}, FRR {100 * self.frr:g}%)", -ent, ent < self.threshold,
                         {"entropy": ent, "threshold": self.threshold})

    def rates(self, clean: torch.Tensor, triggered: torch.Tensor) -> dict[str, float]:
        """Measured false-rejection rate on ``clean`` and false-acceptance rate (triggered inputs
        let through) on ``triggered`` inputs."""
        return {"frr": float(self.detect(clean).flags.float().mean()),
                "far": float((~self.detect(triggered).flags).float().mean())}
