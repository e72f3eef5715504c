"""Lab 4 part 1 detectors: unit tests on synthetic data, bad input, and efficacy on the course
reference setting (Fashion-MNIST, course MLP, 4x4 checkerboard patch -> 9, 1 % poison)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import labsupport as ls
from labsupport.defenses import clustering, pruning, spectral, strip
from labsupport.defenses import neural_cleanse as nc
from labsupport.defenses import probe as probe_mod
from labsupport.defenses.common import Detection, activations, check_classes, standardize
from labsupport.defenses.probe import ActivationProbe


def test_anomaly_index_matches_hand_computation():
    norms = torch.tensor([10.0, 50.0, 52.0, 55.0, 60.0])
    mad = 1.4826 * 3.0                     # median 52; |x - 52| = 42, 2, 0, 3, 8 -> median 3
    assert nc.anomaly_index(norms)[0].item() == pytest.approx(42 / mad)
    assert nc.anomaly_index(norms)[2].item() == pytest.approx(0.0)
    assert nc.flag_labels(norms) == [0]                  # below the median, index 9.4
    assert nc.flag_labels(torch.tensor([50.0, 52.0, 55.0, 60.0, 200.0])) == []  # large norms never flag
    with pytest.raises(ValueError, match="at least 3"):
        nc.anomaly_index(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="norms must be finite"):
        nc.flag_labels(torch.tensor([10.0, float("nan"), 52.0, 55.0]))
    with pytest.raises(ValueError, match=r"mask L1 norms \(>= 0\)"):
        nc.anomaly_index(torch.tensor([-10.0, 50.0, 52.0]))
    with pytest.raises(ValueError, match="1-D tensor, one mask norm per label"):
        nc.anomaly_index(torch.ones(2, 5))
    with pytest.raises(ValueError, match="threshold=-1.0"):
        nc.flag_labels(norms, -1.0)


def test_flag_bound_is_where_flagging_starts():
    """Under the bound the label is flagged, at or over it not - whatever the other norms."""
    norms = torch.tensor([10.0, 50.0, 52.0, 55.0, 60.0])
    # label 0 below all others: median 52, deviations 2, 0, 3, 8 and its own -> MAD 3
    assert nc.flag_bound(norms, 0) == pytest.approx(52 - 2 * 1.4826 * 3)
    # the reference model's norms (BENCHMARKS.md): even a zero-norm trigger for label 9 scores 2.19
    ref = torch.tensor([60.8, 41.9, 52.8, 61.9, 91.5, 81.1, 35.4, 144.4, 36.6, 11.0], dtype=torch.float64)
    assert nc.flag_bound(ref, 9) == pytest.approx(52.8 - 2 * 1.4826 * 16.2, abs=1e-9)
    assert nc.flag_bound(ref, 9, threshold=2.5) < 0          # no trigger for 9 can pass index 2.5 here
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = torch.tensor(rng.lognormal(4, rng.uniform(0.1, 1.0), size=int(rng.integers(3, 12))))
        label, t = int(rng.integers(len(n))), float(rng.uniform(1.0, 4.0))
        bound = nc.flag_bound(n, label, t)
        for x in (bound - 1e-6, bound + 1e-6, bound / 2, bound + 5.0, 0.0):
            if x < 0:
                continue
            m = n.clone()
            m[label] = x
            assert (label in nc.flag_labels(m, t)) == (x < bound), (n, label, t, bound, x)
    with pytest.raises(ValueError, match="label=10 is out of range"):
        nc.flag_bound(ref, 10)
    with pytest.raises(ValueError, match="threshold=0.5 is out of range"):
        nc.flag_bound(ref, 9, threshold=0.5)
    with pytest.raises(ValueError, match=r"norms must be mask L1 norms \(>= 0\)"):
        nc.flag_bound(torch.tensor([-1.0, 2.0, 3.0]), 0)
    with pytest.raises(ValueError, match="norms must be finite"):
        nc.flag_bound(torch.tensor([1.0, float("inf"), 3.0]), 0)


def test_reclassification_verdict_on_synthetic_blobs():
    """Four classes, each a tight pixel blob; 30 images of classes 0-2 relabelled 3 form class 3's
    second cluster. Left out, the relabelled images are called 0, 1 and 2 by their neighbours (own
    share 0, no label over a third); half of class 3's genuine images, left out, are still called 3
    (left out whole, no genuine 3 would remain to be near; on real data such a bulk cluster's
    neighbours are mostly one other class, so the "no label over 30 %" half of the rule keeps it)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(4, 1, 8, 8, generator=g)
    x = (centres.repeat_interleave(100, 0) + 0.02 * torch.randn(400, 1, 8, 8, generator=g)).clamp(0, 1)
    y = torch.arange(4).repeat_interleave(100)
    moved = torch.cat([torch.arange(10), torch.arange(100, 110), torch.arange(200, 210)])
    y[moved] = 3
    nb = clustering.PixelNeighbours(x, y, dims=8, k=5)
    own, top = nb.verdict(moved.numpy(), 3)
    assert own == 0.0 and top == pytest.approx(1 / 3)
    genuine = torch.arange(300, 350).numpy()
    assert nb.verdict(genuine, 3)[0] == 1.0


def test_activation_clustering_rejects_bad_reclassification_settings():
    model = ls.build_model("mlp", (1, 28, 28))
    x, y = torch.rand(40, 1, 28, 28), torch.arange(10).repeat(4)
    with pytest.raises(ValueError, match="start='best'"):
        clustering.activation_clustering(model, x, y, start="best")
    with pytest.raises(ValueError, match="reclassify_own=0"):
        clustering.activation_clustering(model, x, y, rule="reclassify", reclassify_own=0)
    with pytest.raises(ValueError, match="reclassify_top=1.5"):
        clustering.activation_clustering(model, x, y, rule="reclassify", reclassify_top=1.5)


def test_plot_embedding_draws_the_analysed_class_by_ground_truth():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ls.seed_everything(0)
    model = ls.build_model("mlp", (1, 28, 28))
    x, y = torch.rand(200, 1, 28, 28), torch.arange(10).repeat(20)
    truth = torch.zeros(200, dtype=torch.bool)
    truth[torch.nonzero(y == 3).flatten()[:6]] = True
    det = clustering.activation_clustering(model, x, y, classes=[3])
    ax = clustering.plot_embedding(det, y, truth, 3, names=("clean", "bad"))
    z = det.info["embedding"][3][0]
    clean, bad = (c.get_offsets() for c in ax.collections)
    assert np.allclose(bad, z[:6]) and np.allclose(clean, z[6:])   # class 3's rows, in order
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["clean", "bad"]
    assert ax.get_title() == "class 3, first two ICA components"
    plt.close("all")
    with pytest.raises(ValueError, match="label=4 was not analysed; choose one of \\[3\\]"):
        clustering.plot_embedding(det, y, truth, 4)
    with pytest.raises(ValueError, match="truth \\(199 rows\\)"):
        clustering.plot_embedding(det, y, truth[:-1], 3)
    with pytest.raises(ValueError, match="y has 21 rows of label 3, the detection analysed 20"):
        clustering.plot_embedding(det, torch.where(torch.arange(200) == 4, 3, y), truth, 3)
    with pytest.raises(TypeError, match="activation_clustering"):
        clustering.plot_embedding(Detection("t", torch.zeros(200), torch.zeros(200)), y, truth, 3)


def test_detection_evaluate_counts():
    det = Detection("t", torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, True, False, False]))
    out = det.evaluate(torch.tensor([True, False, False, False]))
    assert out["precision"] == 0.5 and out["recall"] == 1.0
    assert out["fpr"] == pytest.approx(1 / 3) and out["auroc"] == 1.0
    with pytest.raises(ValueError, match="differ"):
        Detection("t", torch.zeros(3), torch.zeros(2, dtype=torch.bool))


def test_spectral_scores_centring_matters():
    rng = np.random.default_rng(0)
    clean = rng.normal(5.0, 1.0, size=(950, 20))
    poison = rng.normal(5.0, 1.0, size=(50, 20))
    poison[:, 0] += 6.0                                  # the poisons' shifted mean
    f = np.vstack([clean, poison])
    truth = torch.tensor([False] * 950 + [True] * 50)
    centred = ls.auroc(torch.from_numpy(spectral.spectral_scores(f)), truth)
    uncentred = ls.auroc(torch.from_numpy(spectral.spectral_scores(f, center=False)), truth)
    assert centred > 0.99 and uncentred < centred


@pytest.mark.parametrize("shape", [(300, 40), (30, 40)])
def test_top_directions_are_the_top_right_singular_vectors(shape):
    a = np.random.default_rng(0).standard_normal(shape) * np.linspace(3, 0.5, shape[1])
    vt = np.linalg.svd(a, full_matrices=False)[2]
    for k in (1, 5, 100):
        got = spectral.top_directions(a, k)
        assert got.shape == (min(k, *shape), shape[1])
        np.testing.assert_allclose(np.abs(np.sum(got * vt[:len(got)], axis=1)), 1.0, atol=1e-9)


def test_spectral_signatures_center_flag_reaches_the_score(small):
    # normalising used to centre as well, which made center=False a no-op
    model, x, y = ls.MLP(), small.x_test[:300], small.y_test[:300]
    kw = dict(eps=0.1, layer="hidden.0", classes=[int(y[0])])
    centred = spectral.spectral_signatures(model, x, y, center=True, **kw).scores
    uncentred = spectral.spectral_signatures(model, x, y, center=False, **kw).scores
    assert not torch.allclose(centred, uncentred)


def test_que_scores_find_a_shift_the_top_direction_misses():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(1000, 20)) + 3.0 * rng.normal(size=(1000, 1))  # a factor shared by every unit
    truth = np.zeros(1000, dtype=bool)
    truth[:60] = True
    f[truth, 5] += 6.0                                   # the poisons' shift, along one unit
    t = torch.from_numpy(truth)
    top = ls.auroc(torch.from_numpy(spectral.spectral_scores(standardize(f))), t)
    assert top < 0.6                                     # the top direction is the shared factor
    for alpha in (0.0, 4.0):                             # robust whitening removes it
        assert ls.auroc(torch.from_numpy(spectral.que_scores(f, dims=10, alpha=alpha)), t) > 0.99
    with pytest.raises(ValueError, match="alpha"):
        spectral.que_scores(f, alpha=-1.0)
    with pytest.raises(ValueError, match="dims"):
        spectral.que_scores(f, dims=0)


def test_reduce_ignores_dead_units():
    rng = np.random.default_rng(0)
    f = np.hstack([rng.normal(size=(300, 12)), np.zeros((300, 4))])   # ReLU units that never fire
    for method in ("ica", "pca"):
        z = clustering.reduce(f, method, dims=10)
        assert z.shape == (300, 10) and np.isfinite(z).all()


def test_separation_of_two_blobs_vs_one():
    rng = np.random.default_rng(0)
    one = rng.normal(size=(600, 10))
    two = np.vstack([rng.normal(size=(500, 10)), rng.normal(size=(100, 10)) + 8 * np.eye(10)[0]])
    from sklearn.cluster import KMeans
    sep = []
    for z in (one, two):
        km = KMeans(2, n_init=10, random_state=0).fit(z)
        sep.append(clustering.separation(z, km.labels_, km.cluster_centers_))
    assert sep[0] < 6 and sep[1] > 12, sep   # one Gaussian split in two: ~4


def test_strip_entropy_bounds_and_constant_model(small):
    model = ls.MLP()
    x = small.x_test[:20]
    ent = strip.strip_entropy(model, x, small.x_test[20:120], n=8)
    assert ent.shape == (20,) and bool((ent >= 0).all()) and bool((ent <= np.log2(10) + 1e-6).all())
    with torch.no_grad():                                 # a model that always says "9": zero entropy
        model.head.weight.zero_()
        model.head.bias.copy_(torch.arange(10.0) * 10)
    assert float(strip.strip_entropy(model, x, x, n=4).max()) < 1e-3


def test_prune_ratio_zero_is_the_same_function_and_shrinks(small):
    model = ls.MLP()
    same = pruning.prune(model, small.x_test[:200], 0.0)
    torch.testing.assert_close(same(small.x_test[:50]), model(small.x_test[:50]))
    half = pruning.prune(model, small.x_test[:200], 0.5)
    assert half.hidden[-1].out_features == 64 and half.head.in_features == 64
    with pytest.raises(TypeError, match="MLP and CNN"):
        pruning.prune(ls.ResNet18(), small.x_test[:10], 0.5)


def test_prune_cnn_removes_the_dormant_channels_of_the_last_conv_layer(small):
    torch.manual_seed(0)
    model, x = ls.SmallCNN().eval(), small.x_test[:64]
    same = pruning.prune(model, small.x_test[:200], 0.0)
    torch.testing.assert_close(same(x), model(x))
    half = pruning.prune(model, small.x_test[:200], 0.5)
    assert half.conv2.out_channels == 16 and half.fc.in_features == 16 * 49
    # pruning a channel = silencing it: the original with the dormant half's filters zeroed
    gone = pruning.dormant_order(model, small.x_test[:200])[:16]
    silenced = copy.deepcopy(model)
    with torch.no_grad():
        silenced.conv2.weight[gone] = 0
        silenced.conv2.bias[gone] = 0
    torch.testing.assert_close(half(x), silenced(x))


def test_activations_layers(small):
    model = ls.MLP()
    x = small.x_test[:5]
    assert activations(model, x, "hidden.0").shape == (5, 256)
    assert activations(model, x, "penultimate").shape == (5, 128)
    assert activations(model, x, "logits").shape == (5, 10)
    assert bool((activations(model, x, "hidden.0") >= 0).all())   # after the ReLU


def test_pruning_plot_curves_draws_asr_and_ca_per_defender():
    import matplotlib.pyplot as plt
    a = pruning.PruningCurve([0.0, 0.9], [85.0, 83.0], [40.0, 12.0], (86.0, 99.0))
    b = pruning.PruningCurve([0.0, 0.9], [84.0, 80.0], [60.0, 18.0], (86.0, 99.0))
    fig = pruning.plot_curves({"a": a, "b": b}, title="t")
    asr, ca = fig.axes[:2]
    assert [list(line.get_ydata()) for line in asr.get_lines()] == [[40.0, 12.0], [60.0, 18.0]]
    assert [list(line.get_ydata()) for line in ca.get_lines()] == [[85.0, 83.0], [84.0, 80.0]]
    assert asr.get_title() == "t" and ca.get_title() == "clean accuracy (before: 86.0%)"
    plt.close(fig)
    with pytest.raises(ValueError, match="same ratios"):
        pruning.plot_curves({"a": a, "c": pruning.PruningCurve([0.0], [85.0], [40.0], (86.0, 99.0))})
    with pytest.raises(TypeError, match="curves must be a non-empty dict"):
        pruning.plot_curves([a])


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: activations(m, x, "conv9"), "layer='conv9' is not a layer of MLP"),
    (lambda m, x, y: spectral.spectral_signatures(m, x, y, eps=0.0), "eps=0.0 is out of range"),
    (lambda m, x, y: spectral.spectral_signatures(m, x, y, eps=1.5), "eps=1.5 is out of range"),
    (lambda m, x, y: spectral.spectre(m, x, y, eps=-0.1), "eps=-0.1 is out of range"),
    (lambda m, x, y: spectral.spectre(m, x, y, eps=0.1, alpha=float("nan")), "alpha"),
    (lambda m, x, y: spectral.spectre(m, x, y, eps=()), "non-empty sequence"),
    (lambda m, x, y: spectral.spectre(m, x, y, eps=(0.5, 1.0)), "eps=1.0 is out of range"),
    (lambda m, x, y: strip.Strip.fit(m, x, frr=1.0), "frr=1.0 is out of range"),
    (lambda m, x, y: strip.Strip.fit(m, x, n=0), "n=0 is out of range"),
    (lambda m, x, y: strip.strip_entropy(m, x * 255, x, n=2), "0-255"),
    (lambda m, x, y: clustering.activation_clustering(m, x, y, classes=[3]), "classes \\[3\\] have fewer than"),
    (lambda m, x, y: clustering.activation_clustering(m, x, y, rule="biggest"), "rule='biggest' is not allowed"),
    (lambda m, x, y: pruning.prune(m, x, 1.0), "ratio=1.0"),
    (lambda m, x, y: pruning.pruning_curve(m, x, y, [], x, y, ls.Patch(), 0), "ratios is empty"),
    (lambda m, x, y: pruning.pruning_curve(m, x, y, [0.5], x, y[:3], ls.Patch(), 0), "y_eval has 3 labels"),
    (lambda m, x, y: pruning.pruning_curve(m, x, y, [1.5], x, y, ls.Patch(), 0), "ratio=1.5"),
    (lambda m, x, y: nc.unlearn(m, x, y, None, []), "nothing to unlearn"),
])
def test_bad_input_names_the_argument(call, match):
    x = torch.rand(30, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0] * 28 + [3] * 2)
    with pytest.raises((ValueError, TypeError), match=match):
        call(ls.MLP(), x, y)


@pytest.mark.parametrize("features, match", [
    (np.ones(5), r"non-empty 2-D array .* got shape \(5,\)"),
    (np.ones((0, 5)), r"got shape \(0, 5\)"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "1 NaN or infinite"),
    ("abc", "numeric"),
])
def test_spectral_scores_name_bad_features(features, match):
    for score in (spectral.spectral_scores, spectral.que_scores):
        with pytest.raises((ValueError, TypeError), match=f"features .*{match}" if match != "numeric" else match):
            score(features)
    with pytest.raises(ValueError, match=r"k=0 is out of range"):
        spectral.top_directions(np.ones((4, 3)), 0)


def test_check_classes_default_is_every_label():
    assert check_classes(torch.tensor([2, 2, 5, 5]), None, 2) == [2, 5]


def test_batched_and_label_by_label_neural_cleanse_agree_on_a_toy_backdoor(small):
    """A BadNets model (5 % poison): a white bottom-right square sends inputs to class 4."""
    trig = ls.Patch(ls.white_square(3))
    poisoned = ls.badnets(small.x_train, small.y_train, trig, 4, rate=0.05, seed=0)
    model = ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=3, batch_size=128, lr=2e-3),
                           progress=False)
    both = [nc.reverse_engineer(model, small.x_test[:500], batched=b, max_steps=120, progress=False)
            for b in (True, False)]
    for rev in both:
        assert int(rev.norms.argmin()) == 4
        assert float(rev.success[4]) >= 0.99
        assert rev.masks.shape == (10, 1, 28, 28) and float(rev.masks.min()) >= 0 and float(rev.masks.max()) <= 1


# ---------------------------------------------------------------------------------------------
# Efficacy on the course reference setting (measured values in BENCHMARKS.md)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(fmnist):
    cfg = ls.TrainConfig(epochs=5, batch_size=128, lr=2e-3)
    trig = ls.Patch()
    poisoned = ls.badnets(fmnist.x_train, fmnist.y_train, trig, 9, rate=0.01, seed=0)
    model = ls.train_model("mlp", poisoned.x, poisoned.y, cfg, progress=False)
    xd, yd = fmnist.x_test[:2000], fmnist.y_test[:2000]
    xe, ye = fmnist.x_test[2000:], fmnist.y_test[2000:]
    return model, poisoned, trig, xd, yd, xe, ye


@pytest.fixture(scope="module")
def reference_seeds(fmnist, reference):
    """The reference model and two more trained with other seeds: a detector's result on one
    trained model says little (see test_spectre_is_stable_where_spectral_signatures_are_not)."""
    model, poisoned, *_ = reference
    others = [ls.train_model("mlp", poisoned.x, poisoned.y, ls.TrainConfig(epochs=5, batch_size=128, lr=2e-3, seed=s),
                             progress=False) for s in (1, 2)]
    return [model, *others], poisoned


@pytest.mark.slow
def test_activation_clustering_finds_the_patch_poisons(reference_seeds):
    models, poisoned = reference_seeds
    rows = poisoned.y == 9
    found, seen = 0, []
    for model in models:
        det = clustering.activation_clustering(model, poisoned.x, poisoned.y)
        info = det.info["classes"][9]
        # the suspect cluster of class 9 is the poisons: its relative distance ranks them (the +2
        # for a flagged class shifts every row of the class alike)
        auc = ls.auroc(det.scores[rows], poisoned.mask[rows])
        suspect = det.scores[rows] - (2.0 if info["poisoned"] else 0.0) > 0
        truth = poisoned.mask[rows]
        precision = float((suspect & truth).sum() / max(int(suspect.sum()), 1))
        seen.append({"auroc": round(float(auc), 3), "cluster precision": round(precision, 2), **info})
        if auc >= 0.98 and precision >= 0.95:   # the cluster is poison
            found += 1
            if info["poisoned"]:
                out = det.evaluate(poisoned.mask)
                assert out["precision"] >= 0.9, out
    # on about one trained model in five, 2-means splits class 9 along a natural mode instead (cluster
    # precision 0.26-0.30, AUROC 0.80): training seeds 5-9 on this CPU, and training seed 1 on a
    # CPU without AVX-512 (BENCHMARKS.md, fourteenth session). Seeds 0-2 here: none.
    assert found >= 2, seen
    # what this default does not give reliably is the recall >= 0.8 at 1 %: k-means leaves
    # 2-24 % of the poisons in the clean cluster, and the separation rule's verdict on class 9
    # (Fisher's ratio 9.8-18.6 over five seeds, threshold 12) flags it in two of five (BENCHMARKS.md);
    # the reclassification verdict does (next test)
    model = models[0]
    # the toolkit default (logit layer, smaller cluster < 35 %) is near chance here
    logits = clustering.activation_clustering(model, poisoned.x, poisoned.y, layer="logits", rule="size",
                                              weighted=False).evaluate(poisoned.mask)
    assert logits["f1"] < 0.3, logits


@pytest.mark.slow
def test_activation_clustering_by_reclassification_meets_the_recall_target(reference_seeds):
    """Issue 8's recall >= 0.8 at 1 %: the unweighted penultimate layer, the largest-separation
    2-means split and the reclassification verdict. Measured on these three models: recall 0.90 /
    0.96 / 0.97 (bfloat16-capable CPU) and 0.99 / 0.97 / 0.78 (float32, AVX2 kernels), precision
    >= 0.99, only class 9 flagged. Over twenty training seeds recall is 0.75-0.995 (>= 0.8 on 19 of
    20); 2-means can leave up to a quarter of the poisons in the clean cluster, so recall >= 0.8 is
    asserted on two models of three. No clean class was flagged on any infected or clean model
    (BENCHMARKS.md, twenty-first session)."""
    models, poisoned = reference_seeds
    recalls = []
    for model in models:
        det = clustering.activation_clustering(model, poisoned.x, poisoned.y, weighted=False, start="separation",
                                               rule="reclassify")
        out = det.evaluate(poisoned.mask)
        recalls.append(out["recall"])
        assert out["recall"] >= 0.7 and out["precision"] >= 0.95, out
        assert [c for c, v in det.info["classes"].items() if v["poisoned"]] == [9], det.info["classes"]
    assert sum(r >= 0.8 for r in recalls) >= 2, recalls


@pytest.mark.slow
def test_spectre_is_stable_where_spectral_signatures_are_not(reference_seeds):
    models, poisoned = reference_seeds
    rows = poisoned.y == 9
    plain, robust = [], []
    for model in models:
        kw = dict(eps=0.1, layer="hidden.0", classes=[9])
        plain.append(ls.auroc(spectral.spectral_signatures(model, poisoned.x, poisoned.y, **kw).scores[rows],
                              poisoned.mask[rows]))
        det = spectral.spectre(model, poisoned.x, poisoned.y, **kw)
        robust.append(ls.auroc(det.scores[rows], poisoned.mask[rows]))
        assert det.evaluate(poisoned.mask)["recall"] >= 0.95
    # SPECTRE's AUROC: 0.995-0.998 on this CPU, 0.989-0.996 on one without AVX-512 (the same three
    # seeds, other rounding); plain spectral signatures 0.28-0.998 and 0.34-0.996
    assert min(robust) >= 0.98 and min(robust) >= max(plain) - 0.01, (plain, robust)


@pytest.mark.slow
def test_spectre_twice_removes_the_poisons_when_half_the_class_is_poison(fmnist):
    """The reference setting at 10 % poison: half of class 9 is poison, the robust estimate of a
    single pass breaks down and leaves ~3 % of the poisons (enough for the backdoor: retrained ASR
    ~14 %); a second pass on what it kept finds them (measured: 97.1 % -> 100 %, ASR 0.6 %)."""
    cfg = ls.TrainConfig(epochs=5, batch_size=128, lr=2e-3)
    trig = ls.Patch()
    poisoned = ls.badnets(fmnist.x_train, fmnist.y_train, trig, 9, rate=0.1, seed=0)
    model = ls.train_model("mlp", poisoned.x, poisoned.y, cfg, progress=False)
    once = spectral.spectre(model, poisoned.x, poisoned.y, eps=0.5, classes=[9])
    twice = spectral.spectre(model, poisoned.x, poisoned.y, eps=(0.5, 0.1), classes=[9])
    assert once.evaluate(poisoned.mask)["recall"] >= 0.9
    assert (twice.flags | once.flags).equal(twice.flags) and torch.equal(twice.scores, once.scores)
    assert twice.evaluate(poisoned.mask)["recall"] >= 0.995, twice.info
    kept = ~twice.flags
    after = ls.train_model("mlp", poisoned.x[kept], poisoned.y[kept], cfg, progress=False)
    xe, ye = fmnist.x_test[2000:], fmnist.y_test[2000:]
    assert ls.attack_success_rate(after, xe, ye, trig, 9) <= 0.10
    assert ls.clean_accuracy(after, xe, ye) >= ls.clean_accuracy(model, xe, ye) - 0.03


@pytest.mark.slow
def test_strip_far_at_one_percent_frr(reference):
    model, _, trig, xd, _, xe, ye = reference
    filt = strip.Strip.fit(model, xd, n=100, frr=0.01)
    rates = filt.rates(xe[:2000], trig(xe[:2000][ye[:2000] != 9]))
    assert rates["far"] <= 0.05 and rates["frr"] <= 0.03, rates


@pytest.mark.slow
def test_neural_cleanse_finds_and_unlearns_the_target(reference):
    model, _, trig, xd, yd, xe, ye = reference
    rev = nc.reverse_engineer(model, xd, progress=False)
    assert int(rev.norms.argmin()) == 9
    ca, asr = ls.clean_accuracy(model, xe, ye), ls.attack_success_rate(model, xe, ye, trig, 9)
    fixed = nc.unlearn(model, xd, yd, rev, 9)
    assert ls.attack_success_rate(fixed, xe, ye, trig, 9) <= 0.10 < asr
    assert ca - ls.clean_accuracy(fixed, xe, ye) <= 0.03


def test_neural_cleanse_in_bfloat16_finds_what_float32_finds(reference, monkeypatch):
    """The trigger search runs under bfloat16 autocast where the CPU has it natively: the same
    smallest-norm label and every mask norm within 15 % of float32's (measured on seeds 0-2: one
    label 13 % off, the median label 0.1 %; the seeds' own spread is as large). Without native
    bfloat16 both runs are float32."""
    model, _, _, xd, *_ = reference
    auto = nc.reverse_engineer(model, xd, progress=False)
    monkeypatch.setenv("LABSUPPORT_PRECISION", "float32")
    exact = nc.reverse_engineer(model, xd, progress=False)
    assert int(auto.norms.argmin()) == int(exact.norms.argmin()) == 9
    assert float(((auto.norms - exact.norms).abs() / exact.norms).max()) <= 0.15, (auto.norms, exact.norms)
    assert auto.flagged() == exact.flagged()


@pytest.mark.slow
def test_fine_pruning_removes_the_backdoor_at_some_ratio(fmnist, reference_seeds):
    """Issue 8's target on three training seeds: with 5,000 clean images and the 20-epoch
    fine-tune, some ratio leaves ASR <= 20 % at a CA drop <= 3 points (measured at 0.95: ASR
    7.7-19.1 %, CA drop 2.0-2.6 over five seeds); fine-tuning alone leaves ASR at 38-80 %."""
    models, poisoned = reference_seeds
    xd, yd, xe, ye = fmnist.x_test[:5000], fmnist.y_test[:5000], fmnist.x_test[5000:], fmnist.y_test[5000:]
    for model in models:
        curve = pruning.pruning_curve(model, xd, yd, (0.0, 0.9, 0.95), xe, ye, poisoned.trigger, 9)
        assert curve.before[1] >= 90, curve   # a backdoor to remove (training seed 2: 94.95 % on Intel AVX-512)
        assert curve.meets(max_asr=20, max_ca_drop=3), curve
        assert curve.asr[0] > 30, curve                  # the pruning matters: fine-tuning alone keeps it


@pytest.mark.slow
def test_probe_separates_triggered_activations(reference):
    model, _, trig, xd, *_ = reference
    probe = ActivationProbe().fit(model, xd[:1000], trig(xd[:1000]))
    det = probe.detect(model, torch.cat([xd[1000:], trig(xd[1000:])]))
    truth = torch.cat([torch.zeros(1000, dtype=torch.bool), torch.ones(1000, dtype=torch.bool)])
    assert det.evaluate(truth)["auroc"] >= 0.95


@pytest.mark.slow
def test_probe_catches_a_trigger_it_never_saw_when_the_backdoor_fires(fmnist, reference):
    model, poisoned, patch, xd, *_ = reference
    blend = ls.Blend(ls.noise_key((1, 28, 28), seed=0), alpha=0.2)
    # a second backdoor to the same target: the probe trained on one trigger catches the other
    both = ls.badnets(poisoned.x, poisoned.y, blend, 9, rate=0.01, seed=1)
    two = ls.train_model("mlp", both.x, both.y, ls.TrainConfig(epochs=5, batch_size=128, lr=2e-3), progress=False)
    table = probe_mod.cross_trigger(two, xd[:1000], xd[1000:], {"patch": patch, "blend": blend})
    cells = {(d["train"], d["test"]): d for d in table.data}
    for pair in (("patch", "blend"), ("blend", "patch")):
        assert cells[pair]["auroc"] >= 0.95 and cells[pair]["recall"] >= 0.9, cells[pair]
    assert len(table.rows()) == 3 and "AUROC" in str(table)
    # on the patch-only model the blend fires nothing: the patch-trained probe lets it through
    # (it learned the backdoor's activations, not "an unusual input")
    single = {(d["train"], d["test"]): d for d in probe_mod.cross_trigger(model, xd[:1000], xd[1000:],
                                                                          {"patch": patch, "blend": blend}).data}
    assert single[("patch", "patch")]["auroc"] >= 0.95 and single[("patch", "blend")]["recall"] < 0.5, single
    with pytest.raises(ValueError, match="triggers"):
        probe_mod.cross_trigger(model, xd[:10], xd[10:20], {})


@pytest.mark.slow
def test_defense_matrix_runs_the_moving_triggers_on_the_cnn(fmnist):
    from labsupport.defenses import matrix
    assert matrix.model_for("random location") == matrix.model_for("BaN") == "cnn" != matrix.model_for("BadNets")
    part = fmnist.subset(6000, 3000, seed=0)
    mx = matrix.run_matrix(part, attacks=("random location",), rates=(0.1,), defenses=("SPECTRE", "fine-pruning"),
                           progress=False)
    poisoned, model = mx.models[("random location", 0.1)]
    assert isinstance(model, ls.SmallCNN)
    ca, asr = mx.before[("random location", 0.1)]
    assert asr >= 0.8                                           # the CNN learns the moving patch
    for defense in ("SPECTRE", "fine-pruning"):                 # measured on 20k: ASR 99.7 -> 2.8 / 0.3 %
        assert mx.get(defense, "random location", 0.1, "asr_after") < asr / 2, mx


@pytest.mark.slow
def test_defense_matrix_and_seed_spread_on_a_subset(fmnist):
    from labsupport.defenses import matrix
    part = fmnist.subset(6000, 3000, seed=0)
    mx = matrix.run_matrix(part, attacks=("BadNets",), rates=(0.01, 0.1), defenses=("SPECTRE", "STRIP", "fine-pruning"),
                           progress=False)
    assert mx.defenses == ["SPECTRE", "STRIP", "fine-pruning"] and mx.columns == [("BadNets", 0.01), ("BadNets", 0.1)]
    assert len(mx.rows()) == 1 + 6 and "ASR after" in str(mx) and "<table>" in mx._repr_html_()
    for rate in (0.01, 0.1):
        ca, asr = mx.before[("BadNets", rate)]
        assert asr >= 0.8                                      # there is a backdoor to remove
        assert mx.get("SPECTRE", "BadNets", rate, "asr_after") < asr / 2
        assert np.isnan(mx.get("fine-pruning", "BadNets", rate, "recall"))
    with pytest.raises(ValueError, match="metric"):
        mx.get("STRIP", "BadNets", 0.1, "accuracy")
    with pytest.raises(ValueError, match="attacks"):
        matrix.run_matrix(part, attacks=("BadNots",), progress=False)
    spread = matrix.seed_spread(part, rates=(0.1,), seeds=(0, 1))
    assert len(spread.rows()) == 3 and len(spread.data) == 2
    for row in spread.data:
        assert 0 <= row["ac_precision"] <= 1 and 0 <= row["ac_recall"] <= 1
        assert row["spectre_auroc"] > row["ss_auroc"]
    # seed 0 is the matrix's own model and STRIP detector: the spread's first row repeats its cell
    assert spread.data[0]["strip_recall"] == pytest.approx(mx.get("STRIP", "BadNets", 0.1, "recall"))



def test_defense_matrix_rows_from_outside_merge_and_round_trip(tmp_path):
    from labsupport.defenses import matrix
    from labsupport.io import IntegrityError
    mx = matrix.DefenseMatrix()
    mx.add("ONION", "text trigger", 0.01, before=(0.72, 0.93), recall=0.99, ca_after=0.70, asr_after=0.4)
    assert np.isnan(mx.get("ONION", "text trigger", 0.01, "fpr")) and "—" in str(mx)
    other = matrix.DefenseMatrix()
    other.add("STRIP", "BadNets", 0.1, before=(0.85, 1.0), recall=0.95, precision=0.9, fpr=0.02, ca_after=0.84,
              asr_after=0.05, seconds=1.5)
    both = other.merge(mx)
    assert both.defenses == ["STRIP", "ONION"] and both.columns == [("BadNets", 0.1), ("text trigger", 0.01)]
    back = matrix.DefenseMatrix.load(both.save(tmp_path / "m.json"))
    assert back.rows() == both.rows() and back.before == both.before
    with pytest.raises(ValueError, match="recall"):
        mx.add("ONION", "x", 0.01, before=(0.5, 0.5), recall=1.5)
    with pytest.raises(ValueError, match="unknown metrics"):
        mx.add("ONION", "x", 0.01, before=(0.5, 0.5), accuracy=0.5)
    with pytest.raises(ValueError, match="rate"):
        mx.add("ONION", "x", 0.0, before=(0.5, 0.5))
    with pytest.raises(TypeError, match="DefenseMatrix"):
        mx.merge({})
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(IntegrityError, match="delete it"):
        matrix.DefenseMatrix.load(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_bytes((tmp_path / "m.json").read_bytes()[:-20])
    with pytest.raises(IntegrityError):
        matrix.DefenseMatrix.load(tmp_path / "cut.json")


def test_text_rows_path_follows_the_model_cache(tmp_path, monkeypatch):
    from labsupport.defenses import matrix
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    assert matrix.text_rows_path().parent == tmp_path and matrix.load_text_rows() is None
    mx = matrix.DefenseMatrix()
    mx.add("ONION", "text trigger", 0.01, before=(0.72, 0.93), recall=0.99)
    mx.save(matrix.text_rows_path())
    assert matrix.load_text_rows().rows() == mx.rows()

# --- SCALE-UP --------------------------------------------------------------------------------------

class _Brightness(torch.nn.Module):
    """Class 1 when the mean pixel exceeds 0.3: amplifying a dim clean image moves it to class 1,
    an image carrying a bright trigger is class 1 at every scale."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([self.offset - m, m - self.offset], 1)


def test_scale_up_flags_inputs_whose_prediction_survives_amplification():
    from labsupport.defenses import scale_up as su
    gen = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.rand(200, 1, 8, 8, generator=gen)            # mean 0.05: class 0
    trig = clean.clone()
    trig[:, :, :5, :] = 1.0                                           # mean > 0.6: class 1
    model = _Brightness()
    spc, pred = su.spc(model, torch.cat([clean, trig]))
    assert (pred[:200] == 0).all() and (pred[200:] == 1).all()
    assert (spc[200:] == 1).all() and spc[:200].mean() < 0.5
    # by hand: ×3 keeps the mean at ≤ 0.15 (class 0), ×5 … ×11 push most clean images past 0.3
    expect = torch.stack([(su.predict(model, (n * clean).clamp(0, 1)) == 0).float() for n in su.SCALES]).mean(0)
    assert torch.equal(spc[:200], expect)
    truth = torch.cat([torch.zeros(200, dtype=torch.bool), torch.ones(200, dtype=torch.bool)])
    assert su.ScaleUp(model).detect(torch.cat([clean, trig])).evaluate(truth)["auroc"] == 1.0
    with pytest.raises(ValueError, match="scales"):
        su.spc(model, clean, scales=(1.0, 3.0))
    with pytest.raises(ValueError, match="fpr"):
        su.ScaleUp.fit(model, clean, fpr=1.5)
    bad = clean.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        su.spc(model, bad)


@pytest.mark.slow
def test_scale_up_is_blind_on_fashion_mnist(reference):
    """SCALE-UP assumes amplification destroys a clean image. Fashion-MNIST's black background
    survives it: a scaled garment is still its silhouette, clean images keep their prediction, and
    the detector cannot tell them from triggered ones (measured: clean SPC 0.91, AUROC 0.11-0.54)."""
    from labsupport.defenses import scale_up as su
    model, _, trig, xd, yd, xe, ye = reference
    x = xe[:1000][ye[:1000] != 9]
    spc, _ = su.spc(model, x)
    assert spc.mean() >= 0.8
    truth = torch.cat([torch.zeros(len(x), dtype=torch.bool), torch.ones(len(x), dtype=torch.bool)])
    out = su.ScaleUp.fit(model, xd).detect(torch.cat([x, trig(x)])).evaluate(truth)
    assert out["auroc"] < 0.7 and out["fpr"] <= 0.1, out
