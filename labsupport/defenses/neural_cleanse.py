"""Neural Cleanse (Wang et al. 2019), with every class optimised in one batch.

For each label k, find the smallest mask m and pattern p such that ``(1 - m) * x + m * p`` is
classified as k for clean x. A backdoored label needs a much smaller mask (the trigger) than the
others; the MAD anomaly index of the masks' L1 norms finds it. Mitigation: fine-tune on clean
data in which some images carry the reversed trigger with their *true* label (unlearning).

The reference schedule (Adam lr 0.1, betas (0.5, 0.9); mask and pattern through tanh; L1 cost
starting at 1e-3, x2 after ``patience`` steps at >= 99 % attack success, /2^1.5 after ``patience``
below; stop after ``early_stop`` steps without a better mask) runs for all labels at once: the
masks form one (K, 1, H, W) tensor, each step stacks the K masked copies of one clean batch into
a single forward pass, and each label keeps its own cost, counters and best mask. Labels that
stopped drop out of the batch. The forward and backward passes run under bfloat16 autocast where
the hardware has it (:func:`labsupport.training.autocast`; ``LABSUPPORT_PRECISION=float32`` turns
it off): 2.4x faster on the course CPU, mask norms and flags within float32's run-to-run spread.
``batched=False`` runs the same code one label at a time (what the toolkits do), for the benchmark.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._validate import check_float, check_images, check_int
from ..training import TrainConfig, autocast, fit
from .common import check_data, model_device

MAD_CONSTANT = 1.4826  # makes the MAD a consistent estimator of a normal's standard deviation


def _check_norms(norms) -> torch.Tensor:
    norms = torch.as_tensor(norms, dtype=torch.float64)
    if norms.ndim != 1:
        raise ValueError(f"norms must be a 1-D tensor, one mask norm per label; got shape {tuple(norms.shape)}")
    if norms.numel() < 3:
        raise ValueError(f"the anomaly index needs at least 3 labels, got {norms.numel()}")
    if not torch.isfinite(norms).all():
        raise ValueError(f"norms must be finite mask norms, got {norms.tolist()}")
    if (norms < 0).any():
        raise ValueError(f"norms must be mask L1 norms (>= 0), got {norms.tolist()}")
    return norms


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """|norm - median| / (1.4826 * MAD) for each label."""
    norms = _check_norms(norms)
    med = norms.median()
    mad = MAD_CONSTANT * (norms - med).abs().median()
    return (norms - med).abs() / mad.clamp_min(1e-12)


def flag_labels(norms: torch.Tensor, threshold: float = 2.0) -> list[int]:
    """Labels with a below-median mask norm and an anomaly index above ``threshold``."""
    norms = _check_norms(norms)
    check_float("threshold", threshold, low=0.0, low_open=True)
    idx = anomaly_index(norms)
    return [int(k) for k in torch.nonzero((norms < norms.median()) & (idx > threshold)).flatten()]


def flag_bound(norms: torch.Tensor, label: int, threshold: float = 2.0) -> float:
    """The largest mask norm ``label`` could have and still be flagged, the other labels' norms as
    they are: ``median - threshold * 1.4826 * MAD``, both taken with ``label``'s norm below all the
    others. Exact: for any norm of ``label`` under the bound the median and the MAD are these, so
    its index exceeds ``threshold``; at or above it, it does not. A bound <= 0 says that no trigger
    for that label, however small, can be flagged - the clean labels' norms spread too widely."""
    norms = _check_norms(norms)
    check_int("label", label, low=0, high=norms.numel() - 1)
    check_float("threshold", threshold, low=1.0)   # below 1/1.4826 the label's own deviation moves the MAD
    low = norms.clone()
    low[label] = -1.0   # below every other norm: where the label sits whenever it could be flagged
    med = low.median()
    return float(med - threshold * MAD_CONSTANT * (low - med).abs().median())


@dataclass
class ReversedTriggers:
    """What Neural Cleanse recovered for each label."""

    masks: torch.Tensor      # (K, 1, H, W) in [0, 1]
    patterns: torch.Tensor   # (K, C, H, W) in [0, 1]
    norms: torch.Tensor      # (K,) L1 norm of each best mask
    success: torch.Tensor    # (K,) attack success of the best mask on the clean batch
    steps: torch.Tensor      # (K,) steps each label ran
    seconds: float

    @property
    def anomaly(self) -> torch.Tensor:
        return anomaly_index(self.norms)

    def flagged(self, threshold: float = 2.0) -> list[int]:
        return flag_labels(self.norms, threshold)

    def flag_bound(self, label: int, threshold: float = 2.0) -> float:
        """:func:`flag_bound`: the largest norm of ``label``'s mask that would be flagged."""
        return flag_bound(self.norms, label, threshold)

    def apply(self, label: int, x: torch.Tensor) -> torch.Tensor:
        """Stamp the reversed trigger of ``label`` on images ``x``."""
        m, p = self.masks[label], self.patterns[label]
        return ((1 - m) * x + m * p).clamp(0, 1)


def reverse_engineer(model: nn.Module, clean: torch.Tensor, *, num_classes: int = 10, batched: bool = True,
                     batch_size: int = 128, batches_per_step: int = 2, max_steps: int = 300, lr: float = 0.1,
                     init_cost: float = 1e-3, patience: int = 5, early_stop: int = 25,
                     success_threshold: float = 0.99, seed: int = 0, progress: bool = True) -> ReversedTriggers:
    """Reverse-engineer a trigger for every label from ``clean`` images (the defender's own).

    One step = ``batches_per_step`` mini-batches of ``batch_size`` clean images; the attack
    success and the L1 term that drive the cost schedule are averaged over a step.
    """
    check_images("clean", clean)
    k = check_int("num_classes", num_classes, low=3)
    check_int("batch_size", batch_size, low=1)
    check_int("max_steps", max_steps, low=1)
    check_float("lr", lr, low=0.0, low_open=True)
    check_float("success_threshold", success_threshold, low=0.0, high=1.0, low_open=True)
    start = time.perf_counter()
    if not batched:
        parts = [_reverse(model, clean, [c], k, batch_size, batches_per_step, max_steps, lr, init_cost, patience,
                          early_stop, success_threshold, seed + c, False) for c in
                 tqdm(range(k), desc="Neural Cleanse (label by label)", disable=not progress, leave=False)]
        out = [torch.cat([p[i] for p in parts]) for i in range(5)]
    else:
        out = _reverse(model, clean, list(range(k)), k, batch_size, batches_per_step, max_steps, lr, init_cost,
                       patience, early_stop, success_threshold, seed, progress)
    return ReversedTriggers(*out, seconds=time.perf_counter() - start)


def _reverse(model, clean, labels, k, batch_size, batches_per_step, max_steps, lr, init_cost, patience,
             early_stop, threshold, seed, progress):
    dev = model_device(model)
    was = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    n_lab = len(labels)
    c, h, w = clean.shape[1:]
    mask_t = (torch.rand(n_lab, 1, h, w, generator=gen) * 2 - 1).mul_(0.5).to(dev).requires_grad_(True)
    pat_t = (torch.rand(n_lab, c, h, w, generator=gen) * 2 - 1).mul_(0.5).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([mask_t, pat_t], lr=lr, betas=(0.5, 0.9))
    targets = torch.tensor(labels, device=dev)
    cost = torch.full((n_lab,), init_cost, device=dev)
    up = torch.zeros(n_lab, dtype=torch.long, device=dev)
    down = torch.zeros_like(up)
    best_norm = torch.full((n_lab,), float("inf"), device=dev)
    best_mask = torch.zeros(n_lab, 1, h, w, device=dev)
    best_pat = torch.zeros(n_lab, c, h, w, device=dev)
    best_succ = torch.zeros(n_lab, device=dev)
    stale = torch.zeros_like(up)
    steps = torch.zeros_like(up)
    active = torch.ones(n_lab, dtype=torch.bool, device=dev)
    clean_dev = clean.to(dev)
    amp = autocast(dev)   # bfloat16 where native (2.4x faster); one context, entered once per batch
    bar = tqdm(range(max_steps), desc="Neural Cleanse (all labels at once)", disable=not progress, leave=False)
    try:
        for _ in bar:
            act = torch.nonzero(active).flatten()
            if len(act) == 0:
                break
            succ_sum = torch.zeros(len(act), device=dev)
            l1_sum = torch.zeros(len(act), device=dev)
            for _b in range(batches_per_step):
                idx = torch.randint(0, len(clean_dev), (batch_size,), generator=gen).to(dev)
                xb = clean_dev[idx]
                m = torch.tanh(mask_t[act]) / 2 + 0.5                      # (A, 1, H, W)
                p = torch.tanh(pat_t[act]) / 2 + 0.5                       # (A, C, H, W)
                xa = (1 - m.unsqueeze(1)) * xb.unsqueeze(0) + (m * p).unsqueeze(1)   # (A, B, C, H, W)
                with amp:
                    logits = model(xa.flatten(0, 1)).float().view(len(act), batch_size, -1)
                tgt = targets[act].unsqueeze(1).expand(-1, batch_size)
                ce = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), reduction="none").view(len(act), -1).mean(1)
                l1 = m.flatten(1).sum(1)
                opt.zero_grad(set_to_none=True)
                (ce + cost[act] * l1).sum().backward()
                opt.step()
                with torch.no_grad():
                    succ_sum += (logits.argmax(2) == tgt).float().mean(1)
                    l1_sum += l1.detach()
            with torch.no_grad():
                succ, l1 = succ_sum / batches_per_step, l1_sum / batches_per_step
                steps[act] += 1
                ok = succ >= threshold
                better = ok & (l1 < best_norm[act])
                improved = better & (l1 < 0.99 * best_norm[act])
                if better.any():
                    sel = act[better]
                    best_norm[sel] = l1[better]
                    best_succ[sel] = succ[better]
                    best_mask[sel] = torch.tanh(mask_t[sel]) / 2 + 0.5
                    best_pat[sel] = torch.tanh(pat_t[sel]) / 2 + 0.5
                stale[act] = torch.where(improved | torch.isinf(best_norm[act]), 0, stale[act] + 1)
                up[act] = torch.where(ok, up[act] + 1, 0)
                down[act] = torch.where(ok, 0, down[act] + 1)
                c_act = cost[act]
                c_act = torch.where(up[act] >= patience, c_act * 2, c_act)
                c_act = torch.where(down[act] >= patience, c_act / 2 ** 1.5, c_act)
                cost[act] = c_act
                up[act] = torch.where(up[act] >= patience, 0, up[act])
                down[act] = torch.where(down[act] >= patience, 0, down[act])
                active[act] = stale[act] < early_stop
                bar.set_postfix(active=int(active.sum()))
        with torch.no_grad():  # labels that never reached the threshold keep their last mask
            never = torch.isinf(best_norm)
            if never.any():
                best_mask[never] = torch.tanh(mask_t[never]) / 2 + 0.5
                best_pat[never] = torch.tanh(pat_t[never]) / 2 + 0.5
                best_norm[never] = best_mask[never].flatten(1).sum(1)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.train(was)
    return (best_mask.cpu(), best_pat.cpu(), best_norm.cpu(), best_succ.cpu(), steps.cpu())


def unlearn(model: nn.Module, clean: torch.Tensor, labels: torch.Tensor, triggers: ReversedTriggers,
            label: int | list[int], *, fraction: float = 0.2, config: TrainConfig | None = None,
            seed: int = 0, progress: bool = False) -> nn.Module:
    """Neural Cleanse's mitigation: a copy of ``model`` fine-tuned on the clean set in which a
    ``fraction`` of the images carry the reversed trigger of ``label`` and keep their true label."""
    check_data(clean, labels)
    fraction = check_float("fraction", fraction, low=0.0, high=1.0, low_open=True)
    flagged = [label] if isinstance(label, int) else list(label)
    if not flagged:
        raise ValueError("label is empty: nothing to unlearn (Neural Cleanse flagged no label)")
    gen = torch.Generator().manual_seed(seed)
    x = clean.clone()
    rows = torch.randperm(len(x), generator=gen)[: int(round(fraction * len(x)))]
    for i, chunk in enumerate(rows.chunk(len(flagged))):
        x[chunk] = triggers.apply(flagged[i], x[chunk])
    fixed = copy.deepcopy(model)
    fit(fixed, x, labels, config or TrainConfig(epochs=2, batch_size=64, lr=1e-3, seed=seed),
        device=model_device(model), progress=progress, desc="unlearn")
    return fixed.eval()
