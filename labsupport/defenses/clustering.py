"""Activation clustering (Chen et al. 2018): poisons that carry a trigger reach their label by a
different route than the clean images of that class, so per class their activations form a
cluster of their own.

Per class: the activations at ``layer``, reduced to ``dims`` dimensions (FastICA or PCA), split by
2-means; a decision rule says whether one of the two clusters is poison:

* ``"size"`` - the smaller cluster, if it holds less than ``size_threshold`` of the class
  (BackdoorBench's default: 35 %);
* ``"silhouette"`` - the smaller cluster, if the split is clear (silhouette >= ``silhouette_threshold``);
* ``"separation"`` - the smaller cluster, if the two clusters lie far apart along the line
  through their centres (Fisher's ratio >= ``separation_threshold``, 12 by default: centres about
  5 pooled standard deviations apart). Unlike the size rule it also works when half of a class is
  poison, and unlike the silhouette it is not diluted by the other reduced dimensions. The
  threshold was chosen on BadNets and blended models (seeds 0-1) and kept for every other attack.

* ``"reclassify"`` - exclusionary reclassification (Chen et al.), with a classifier that cannot
  learn the trigger: each of the two clusters is taken out of the training set and its images are
  labelled by their nearest neighbours among the rest, in pixel space (PCA to 50 dimensions,
  10 neighbours). A legitimate cluster is still called its class there, or at least one other
  class (a sub-mode that resembles a neighbouring class). A cluster of relabelled images from
  across the dataset is neither: flagged when fewer than ``reclassify_own`` (10 %) of its images
  get their own label and no other label takes ``reclassify_top`` (30 %) or more. It judges both
  clusters, so it also works when half of a class is poison. Retraining the network instead (the
  paper's check) fails here, because the poisons k-means leaves in the other cluster teach the
  retrained network the trigger again; a 4x4 patch barely moves a pixel-space neighbour.

``start``: k-means from ten starts, keeping the split with the lowest inertia (``"inertia"``,
scikit-learn's rule) or the largest separation (``"separation"``). On Fashion-MNIST's BadNets 1 %
models, the lowest-inertia split of class 9 follows a natural mode in about one training seed in
five, while the largest-separation split isolates the poisons (BENCHMARKS.md).

``weighted=True`` multiplies each penultimate activation by its weight into the class's logit
(the unit's contribution to the class score), which concentrates the analysis on the units that
decide the class - the trigger's units among them.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from .._validate import check_choice, check_float, check_int, check_mask
from .common import Detection, activations, check_classes, check_data, one_thread

RULES = ("size", "silhouette", "separation", "reclassify")
REDUCTIONS = ("ica", "pca", "none")
STARTS = ("inertia", "separation")


def reduce(features: np.ndarray, method: str = "ica", dims: int = 10, seed: int = 0) -> np.ndarray:
    """Centre ``features`` and reduce them to ``dims`` columns with FastICA or PCA (``"none"``: centre only)."""
    check_choice("reduce", method, REDUCTIONS)
    centred = features - features.mean(0)
    live = centred.std(0) > 1e-6 * (centred.std(0).max() + 1e-30)
    centred = centred[:, live] if live.any() else centred  # dead units (always 0) make FastICA return NaN
    dims = min(check_int("dims", dims, low=1), *centred.shape)
    if method == "none":
        return centred
    if method == "pca":
        return PCA(dims, random_state=seed).fit_transform(centred)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="There are some small singular values")
        return FastICA(dims, random_state=seed, max_iter=1000, whiten="unit-variance",
                       algorithm="deflation", whiten_solver="eigh").fit_transform(centred)


def separation(z: np.ndarray, labels: np.ndarray, centres: np.ndarray) -> float:
    """How far apart two clusters lie along the line through their centres: Fisher's ratio
    (difference of the projected means)^2 / (sum of the projected variances). Splitting one
    Gaussian blob in two gives about 2.5-10 here; a cluster of triggered images gives more."""
    axis = centres[1] - centres[0]
    norm = np.linalg.norm(axis)
    if norm == 0 or labels.min() == labels.max():
        return 0.0
    s = z @ (axis / norm)
    a, b = s[labels == 0], s[labels == 1]
    return float((a.mean() - b.mean()) ** 2 / (a.var() + b.var() + 1e-12))


class PixelNeighbours:
    """Nearest-neighbour labels in pixel space (PCA to ``dims`` dimensions, fitted on up to 10,000
    rows) for :func:`activation_clustering`'s ``"reclassify"`` rule."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, dims: int = 50, k: int = 10, seed: int = 0):
        flat = x.reshape(len(x), -1).float().cpu().numpy()
        rng = np.random.default_rng(seed)
        fit = flat[rng.choice(len(flat), min(len(flat), 10_000), replace=False)]
        pca = PCA(min(dims, *fit.shape), random_state=seed).fit(fit)
        self.z = pca.transform(flat).astype(np.float32)
        self.y, self.k = y.cpu().numpy(), k
        self.classes = int(self.y.max()) + 1

    def labels(self, rows: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        """The majority label of each row's ``k`` nearest neighbours among the rows not in ``exclude``
        (scikit-learn's brute-force search, in memory-bounded chunks)."""
        keep = np.ones(len(self.y), dtype=bool)
        keep[exclude] = False
        if not len(rows) or not keep.any():
            return np.zeros(len(rows), dtype=np.int64)
        knn = KNeighborsClassifier(min(self.k, int(keep.sum())), algorithm="brute")
        return knn.fit(self.z[keep], self.y[keep]).predict(self.z[rows])

    def verdict(self, rows: np.ndarray, label: int) -> tuple[float, float]:
        """(share of ``rows`` labelled ``label``, largest share of any other label), ``rows`` left out."""
        pred = self.labels(rows, rows)
        counts = np.bincount(pred, minlength=self.classes)
        own = counts[label] / len(rows)
        counts[label] = 0
        return float(own), float(counts.max() / len(rows))


def _two_means(z: np.ndarray, start: str, seed: int) -> KMeans:
    if start == "inertia":
        return KMeans(2, n_init=10, random_state=seed).fit(z)
    runs = [KMeans(2, n_init=1, random_state=seed + r).fit(z) for r in range(10)]
    return max(runs, key=lambda km: separation(z, km.labels_, km.cluster_centers_))


def activation_clustering(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, layer: str = "penultimate",
                          weighted: bool = True, method: str = "ica", dims: int = 10, rule: str = "separation",
                          size_threshold: float = 0.35, silhouette_threshold: float = 0.15,
                          separation_threshold: float = 12.0, reclassify_own: float = 0.1,
                          reclassify_top: float = 0.3, start: str = "inertia", classes: list[int] | None = None,
                          seed: int = 0) -> Detection:
    """Activation clustering of the training set (x, y) through ``model``.

    Args:
        layer: where to read activations (see :func:`~labsupport.defenses.common.activations`):
            ``"penultimate"`` (default), ``"input"`` (clustering raw pixels), ``"logits"`` ...
        weighted: with ``layer="penultimate"``, multiply each unit by its weight into the class logit.
        method, dims: the reduction (``"ica"``, ``"pca"`` or ``"none"``) and its dimension.
        rule: ``"separation"`` (default), ``"size"``, ``"silhouette"`` or ``"reclassify"`` (module
            docstring; ``reclassify_own`` and ``reclassify_top`` are its two shares).
        start: ``"inertia"`` (default) or ``"separation"``: which of ten k-means starts is kept.
        classes: the labels to analyse (default: all).

    Returns:
        A :class:`Detection`; ``scores`` rank rows by how much nearer they lie to the suspicious
        cluster than to the other one (+2 where the class was judged poisoned), ``info["classes"]``
        holds per class the cluster sizes, silhouette, agreement and decision, and
        ``info["embedding"]`` the first two reduced dimensions and cluster labels per class
        (``info["method"]``: the reduction).
    """
    check_data(x, y)
    check_choice("rule", rule, RULES)
    check_choice("method", method, REDUCTIONS)
    size_threshold = check_float("size_threshold", size_threshold, low=0.0, high=0.5, low_open=True)
    check_float("silhouette_threshold", silhouette_threshold, low=-1.0, high=1.0)
    check_float("separation_threshold", separation_threshold, low=0.0)
    check_float("reclassify_own", reclassify_own, low=0.0, high=1.0, low_open=True)
    check_float("reclassify_top", reclassify_top, low=0.0, high=1.0, low_open=True)
    check_choice("start", start, STARTS)
    classes = check_classes(y, classes, min_rows=max(dims, 4))
    feats = activations(model, x, layer).numpy()
    if weighted and layer == "penultimate":
        head = model.head.weight.detach().float().cpu().numpy()
    scores = torch.full((len(y),), -1.0, dtype=torch.float64)
    flags = torch.zeros(len(y), dtype=torch.bool)
    per_class, embedding = {}, {}
    neighbours = PixelNeighbours(x, y, seed=seed) if rule == "reclassify" else None
    with one_thread():
        for c in classes:
            rows = torch.nonzero(y == c).flatten()
            f = feats[rows.numpy()]
            if weighted and layer == "penultimate":
                f = f * head[c]
            z = reduce(f, method, dims, seed)
            km = _two_means(z, start, seed)
            lab = km.labels_
            sizes = np.bincount(lab, minlength=2)
            sample = min(len(z), 2000)
            sil = float(silhouette_score(z, lab, sample_size=sample, random_state=seed)) if sizes.min() > 0 else 0.0
            share = sizes / sizes.sum()
            suspect = int(np.argmin(sizes))
            sep = separation(z, lab, km.cluster_centers_)
            reclassified = None
            if rule == "reclassify":   # both clusters judged; the suspect is a flagged one if any
                reclassified = [neighbours.verdict(rows.numpy()[lab == k], c) if sizes[k] else (1.0, 0.0)
                                for k in (0, 1)]
                bad = [own < reclassify_own and top < reclassify_top for own, top in reclassified]
                suspect = bad.index(True) if any(bad) else suspect
                poisoned = any(bad)
            else:
                poisoned = {"size": share[suspect] < size_threshold, "silhouette": sil >= silhouette_threshold,
                            "separation": sep >= separation_threshold}[rule]
            d = np.linalg.norm(z[:, None, :] - km.cluster_centers_[None], axis=2)
            rel = (d[:, 1 - suspect] - d[:, suspect]) / (d.sum(1) + 1e-12)
            scores[rows] = torch.from_numpy(rel.astype(np.float64)) + (2.0 if poisoned else 0.0)
            if poisoned:
                flagged = (lab == suspect) if rule != "reclassify" else np.isin(lab, [k for k in (0, 1) if bad[k]])
                flags[rows[torch.from_numpy(flagged)]] = True
            per_class[c] = {"sizes": sizes.tolist(), "silhouette": sil, "separation": sep,
                            "suspect": suspect, "poisoned": bool(poisoned)}
            if reclassified is not None:
                per_class[c]["reclassified"] = reclassified   # (own share, top other share) per cluster
            embedding[c] = (z[:, :2], lab == suspect)
    how = f"{layer}, weighted" if weighted and layer == "penultimate" else layer
    start_note = ", largest-separation start" if start != "inertia" else ""
    name = f"activation clustering ({how}, {method}, {rule}{start_note})"
    return Detection(name, scores, flags, {"classes": per_class, "embedding": embedding, "method": method})


def plot_embedding(detection: Detection, y: torch.Tensor, truth: torch.Tensor, label: int, *,
                   names: tuple[str, str] = ("clean", "poisons"), ax=None):
    """Scatter class ``label``'s rows on the first two reduced dimensions of an
    :func:`activation_clustering` run, coloured by the ground truth ``truth`` (a boolean mask over
    the rows of ``y``; ``names``: the legend of its False and True rows). Returns the axes."""
    import matplotlib.pyplot as plt

    embedding = detection.info.get("embedding") if isinstance(detection, Detection) else None
    if embedding is None:
        raise TypeError("detection must be the Detection that activation_clustering(...) returned")
    if label not in embedding:
        raise ValueError(f"label={label!r} was not analysed; choose one of {sorted(embedding)}")
    y, truth = torch.as_tensor(y).flatten(), check_mask("truth", truth)
    if len(y) != len(truth) or len(detection.flags) != len(y):
        raise ValueError(f"y ({len(y)} rows) and truth ({len(truth)} rows) must match the "
                         f"detection's {len(detection.flags)} rows")
    z, _ = embedding[label]
    poison = truth[y == label].numpy()
    if len(poison) != len(z):
        raise ValueError(f"y has {len(poison)} rows of label {label}, the detection analysed {len(z)}: "
                         "pass the labels it was run on")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter(z[~poison, 0], z[~poison, 1], s=2, alpha=0.4, label=names[0])
    ax.scatter(z[poison, 0], z[poison, 1], s=2, alpha=0.4, label=names[1])
    what = {"ica": "ICA components", "pca": "principal components"}.get(detection.info.get("method"), "dimensions")
    ax.set_title(f"class {label}, first two {what}")
    ax.legend(markerscale=5)
    return ax
