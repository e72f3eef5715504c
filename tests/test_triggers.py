import pytest
import torch

import labsupport as ls
from labsupport.triggers import stamp


def test_patch_bottom_right_changes_only_its_window(images):
    pattern = ls.checkerboard(4)
    out = ls.Patch(pattern, "bottom-right", margin=1)(images)
    assert torch.equal(out[:, :, 23:27, 23:27], pattern.expand(6, 1, 4, 4))
    window = torch.zeros_like(images, dtype=torch.bool)
    window[:, :, 23:27, 23:27] = True
    assert torch.equal(out[~window], images[~window])
    assert not torch.equal(out, images)


@pytest.mark.parametrize("position, corner", [("top-left", (1, 1)), ("top-right", (1, 24)),
                                              ("bottom-left", (24, 1)), ((5, 7), (5, 7))])
def test_patch_positions(images, position, corner):
    out = ls.Patch(ls.white_square(3), position)(images)
    r, c = corner
    assert torch.all(out[:, :, r:r + 3, c:c + 3] == 1)


def test_patch_rgb_pattern_on_rgb_images():
    x = torch.zeros(2, 3, 32, 32)
    pattern = torch.rand(3, 5, 5)
    out = ls.Patch(pattern, (0, 0))(x)
    assert torch.equal(out[0, :, :5, :5], pattern)


def test_blend_is_convex_combination(images):
    key = ls.noise_key((1, 28, 28), seed=1)
    out = ls.Blend(key, 0.3)(images)
    assert torch.allclose(out, 0.3 * key + 0.7 * images)
    assert torch.allclose(ls.Blend(key, 0.3).with_alpha(1.0)(images), key.expand_as(images))


def test_noise_key_names_a_bad_shape():
    with pytest.raises(ValueError, match="shape's H=-28 is out of range"):
        ls.noise_key((1, -28, 28))
    with pytest.raises(ValueError, match=r"shape must be \(C, H, W\)"):
        ls.noise_key((28, 28))


def test_random_patch_stays_in_region_and_moves():
    x = torch.zeros(200, 1, 28, 28)
    out = ls.RandomPatch(ls.white_square(3), region=(0, 14, 14, 28), seed=0)(x)
    assert torch.all(out.sum((1, 2, 3)) == 9)           # whole pattern inside
    assert out[:, :, 14:, :].sum() == 0 and out[:, :, :, :14].sum() == 0
    positions = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(positions) > 20                            # positions vary


def test_random_patch_is_reproducible():
    x = torch.zeros(10, 1, 28, 28)
    assert torch.equal(ls.RandomPatch(seed=3)(x), ls.RandomPatch(seed=3)(x))


def test_compose_applies_both(images):
    a, b = ls.Patch(ls.white_square(2), "top-left"), ls.Patch(ls.white_square(2), "bottom-right")
    out = (a + b)(images)
    assert torch.equal(out, b(a(images)))
    assert isinstance(a + b, ls.Compose)


def test_stamp_per_sample_patterns_pass_gradients():
    x = torch.zeros(4, 1, 10, 10)
    pattern = torch.rand(4, 1, 3, 3, requires_grad=True)
    out = stamp(x, pattern, torch.tensor([0, 1, 2, 7]), torch.tensor([0, 5, 3, 7]))
    assert torch.equal(out[1, 0, 1:4, 5:8], pattern[1, 0].detach())
    out.sum().backward()
    assert torch.allclose(pattern.grad, torch.ones_like(pattern))


def test_region_grid_tiles_the_image():
    regions = ls.region_grid((28, 28), 10, rows=5)
    assert len(regions) == 10
    cover = torch.zeros(28, 28, dtype=torch.int64)
    for r0, c0, r1, c1 in regions:
        cover[r0:r1, c0:c1] += 1
    assert torch.all(cover == 1)
