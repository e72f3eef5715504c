"""Bad input found by feeding the public API: each gets a clear error, never a silent result."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labsupport as ls
from labsupport import _validate
from labsupport.training import TrainConfig

X = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.arange(40) % 10
TINY = TrainConfig(epochs=1, batch_size=16)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([float("nan"), float("inf"), float("-inf")]), st.integers(0, X.numel() - 1))
def test_non_finite_pixels_are_refused_everywhere(value, index):
    bad = X.clone()
    bad.view(-1)[index] = value
    model = ls.MLP(in_shape=(1, 8, 8))
    for call in (lambda: ls.train_model("mlp", bad, Y, TINY, cache=False, progress=False),
                 lambda: ls.fit(model, bad, Y, TINY, progress=False),
                 lambda: ls.attack_success_rate(model, bad, Y, ls.Patch(ls.white_square(2)), 9),
                 lambda: ls.badnets(bad, Y, ls.Patch(ls.white_square(2)), 9, rate=0.1)):
        with pytest.raises(ValueError, match=r"NaN|values in \[") as info:
            call()
        assert "[0, 1]" in str(info.value)


def test_0_255_floats_are_refused_with_a_hint():
    with pytest.raises(ValueError, match="divide by 255"):
        ls.train_model("mlp", X * 255, Y, TINY, cache=False, progress=False)


def test_slightly_out_of_range_after_blend_rounding_is_fine():
    x = torch.ones(4, 1, 8, 8)
    out = ls.Blend(torch.ones(1, 8, 8), alpha=0.2)(x)
    _validate.check_images("x", out)  # 0.2 * 1 + 0.8 * 1 may round above 1 by an ulp


def test_checking_a_tensor_that_requires_grad_warns_nothing():
    x = torch.rand(2, 1, 8, 8, requires_grad=True) * 1.0   # e.g. a trigger generator's output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _validate.check_images("x", x)


def test_empty_training_set():
    with pytest.raises(ValueError, match="x is empty"):
        ls.badnets(X[:0], Y[:0], ls.Patch(ls.white_square(2)), 9, rate=0.1)
    with pytest.raises(ValueError, match="x is empty"):
        ls.train_model("mlp", X[:0], Y[:0], TINY, cache=False, progress=False)


@pytest.mark.parametrize("trigger, match", [
    (lambda t: t + 0.5, r"trigger\(x\) has values in \[0\.5"),   # a hand-written trigger that forgot to clip
    (lambda t: t[:, :, :5], r"trigger returned \(\d+, 1, 5, 8\) for images of shape"),
    (lambda t: None, "trigger returned NoneType"),
    ("patch", "trigger must be a callable"),
])
def test_a_broken_trigger_is_named(trigger, match):
    model = ls.MLP(in_shape=(1, 8, 8))
    for call in (lambda: ls.badnets(X, Y, trigger, 9, rate=0.1),
                 lambda: ls.clean_label(X, Y, trigger, 9, count=2),
                 lambda: ls.attack_success_rate(model, X, Y, trigger, 9)):
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    with pytest.raises(TypeError, match="trigger_b must be a Trigger"):
        ls.composite(X, Y, ls.Patch(ls.white_square(2)), trigger, 9, count=2)


def test_images_of_another_shape_are_named():
    model = ls.MLP(in_shape=(1, 8, 8))
    for call in (lambda: ls.predict(model, torch.rand(2, 3, 32, 32)),
                 lambda: ls.fit(model, torch.rand(4, 1, 28, 28), Y[:4], TINY, progress=False)):
        with pytest.raises(ValueError, match=r"images of shape \(\d, \d+, \d+\), but the MLP was built for \(1, 8, 8"):
            call()


def test_channels_last_input_is_named():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) with C in \{1, 3\}.*channels-last.*permute"):
        ls.Patch(ls.white_square(2))(X.permute(0, 2, 3, 1).reshape(40, 8, 8, 1).contiguous())


def test_values_are_scanned_once_per_tensor(monkeypatch):
    """train -> evaluate -> ASR on the same tensors scans each tensor's values once; an in-place
    change is noticed."""
    scans = []
    real = torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t, *a, **k: (scans.append(t.shape), real(t, *a, **k))[1])
    x = torch.rand(64, 1, 8, 8)
    y = torch.arange(64) % 10
    model = ls.train_model("mlp", x, y, TINY, cache=False, progress=False)
    ls.clean_accuracy(model, x, y)
    ls.predict(model, x)
    assert scans.count(x.shape) == 1
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        ls.predict(model, x)


def _flip_byte_in_tensor_data(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's bytes (the header comes first)
    path.write_bytes(bytes(data))


def test_cache_entry_with_a_flipped_byte_is_retrained(tmp_path, monkeypatch):
    monkeypatch.setenv("LABSUPPORT_MODELS", str(tmp_path))
    first = ls.train_model("mlp", X, Y, TINY, progress=False)
    (entry,) = tmp_path.glob("*.safetensors")
    _flip_byte_in_tensor_data(entry)
    with pytest.warns(UserWarning, match="failed verification.*retraining"):
        again = ls.train_model("mlp", X, Y, TINY, progress=False)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # retrained from the same seed, and the entry rewritten
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ls.train_model("mlp", X, Y, TINY, progress=False)  # the rewritten entry verifies


def test_explicit_load_refuses_tampered_weights(tmp_path):
    path = ls.save_model(tmp_path / "m.safetensors", ls.MLP())
    digest = ls.sha256_file(path)
    ls.load_model(path, ls.MLP(), sha256=digest)
    _flip_byte_in_tensor_data(path)
    with pytest.raises(ls.IntegrityError, match="SHA-256 is .* expected"):
        ls.load_model(path, ls.MLP(), sha256=digest)
    with pytest.raises(ls.IntegrityError, match="does not match its recorded SHA-256"):
        ls.load_model(path, ls.MLP())
