import torch

import labsupport as ls


def test_badnets_marks_and_relabels_exactly_count_rows(small):
    trig = ls.Patch()
    p = ls.badnets(small.x_train, small.y_train, trig, 9, count=120, seed=1)
    assert p.count == 120 and p.mask.dtype == torch.bool
    assert torch.all(p.y[p.mask] == 9)
    assert torch.all(small.y_train[p.mask] != 9)               # only non-target rows
    assert torch.equal(p.x[~p.mask], small.x_train[~p.mask])    # clean rows untouched
    assert torch.equal(p.y[~p.mask], small.y_train[~p.mask])
    assert torch.equal(p.x[p.mask], trig(small.x_train[p.mask]))


def test_badnets_rate_is_fraction_of_training_set(small):
    p = ls.badnets(small.x_train, small.y_train, ls.Patch(), 9, rate=0.01)
    assert p.count == 120 and abs(p.rate - 0.01) < 1e-9


def test_badnets_all_to_all(small):
    p = ls.badnets(small.x_train, small.y_train, ls.Patch(), "all-to-all", count=500)
    assert torch.equal(p.y[p.mask], (small.y_train[p.mask] + 1) % 10)


def test_badnets_does_not_modify_inputs(small):
    x0, y0 = small.x_train.clone(), small.y_train.clone()
    ls.badnets(small.x_train, small.y_train, ls.Patch(), 9, count=50)
    assert torch.equal(x0, small.x_train) and torch.equal(y0, small.y_train)


def test_clean_label_keeps_labels_and_poisons_only_target_class(small):
    base = ls.MLP()
    p = ls.clean_label(small.x_train, small.y_train, ls.Patch(), 9, count=200, surrogate=base, eps=0.1, steps=3)
    assert torch.equal(p.y, small.y_train)
    assert torch.all(small.y_train[p.mask] == 9) and p.count == 200
    delta = (p.x[p.mask] - small.x_train[p.mask])[:, :, :22, :22]  # away from the patch
    assert float(delta.abs().max()) <= 0.1 + 1e-6


def test_pgd_stays_in_the_box_and_raises_loss(small):
    torch.manual_seed(0)
    model = ls.train_model("mlp", small.x_train[:2000], small.y_train[:2000], ls.TrainConfig(epochs=2),
                           cache=False, progress=False)
    x, y = small.x_test[:256], small.y_test[:256]
    xa = ls.pgd_away(model, x, y, eps=0.1, steps=10)
    assert float((xa - x).abs().max()) <= 0.1 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    assert ls.clean_accuracy(model, xa, y) < ls.clean_accuracy(model, x, y) - 0.3


def test_composite_cover_rows_keep_labels(small):
    a, b = ls.Patch(ls.white_square(3), "top-left"), ls.Patch(ls.white_square(3), "bottom-right")
    p = ls.composite(small.x_train, small.y_train, a, b, 9, count=100, cover_ratio=2.0)
    assert p.info == {"poisons": 100, "cover": 200} and p.count == 300
    relabelled = p.y != small.y_train
    assert int(relabelled.sum()) == 100 and torch.all(p.y[relabelled] == 9)


def test_multi_target_label_follows_region(small):
    p = ls.multi_target(small.x_train, small.y_train, ls.white_square(3), [6, 7, 8, 9], count=400)
    regions = p.info["regions"]
    diff = (p.x != small.x_train).any(1)                       # (N, H, W) changed pixels
    for i in p.mask.nonzero().flatten()[:50].tolist():
        if not diff[i].any():
            continue
        r, c = diff[i].nonzero()[0].tolist()
        region = next(k for k, (r0, c0, r1, c1) in enumerate(regions) if r0 <= r < r1 and c0 <= c < c1)
        assert int(p.y[i]) == [6, 7, 8, 9][region]


def test_generator_outputs_valid_triggers():
    g = ls.TriggerGenerator(noise_dim=8, size=5, channels=3)
    out = g.sample(7, torch.Generator().manual_seed(0))
    assert out.shape == (7, 3, 5, 5) and out.min() >= 0 and out.max() <= 1


def test_trigger_diversity_separates_collapsed_and_dynamic_generators():
    gen = ls.TriggerGenerator(noise_dim=8, size=4)
    torch.nn.init.zeros_(gen.net[2].weight)  # output independent of the noise: one pattern
    collapsed = ls.trigger_diversity(gen)
    assert collapsed["patterns"] < 1e-6 and abs(collapsed["random"] - 1 / 3) < 0.02
    assert abs(collapsed["noise"] - 1 / 3) < 0.02
    dynamic = ls.trigger_diversity(ls.TriggerGenerator(noise_dim=8, size=4, hidden=16))
    assert dynamic["patterns"] > 100 * collapsed["patterns"] + 1e-3
