"""Bad input gets a clear error naming the argument (property tests with hypothesis)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import labsupport as ls

X = torch.rand(20, 1, 8, 8)
Y = torch.arange(20) % 10
fast = settings(max_examples=40, deadline=None)


@fast
@given(st.floats(allow_nan=True, allow_infinity=True).filter(lambda r: not 0 <= r <= 1))
def test_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="rate"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), 9, rate=rate)


@fast
@given(st.integers().filter(lambda t: not 0 <= t <= 9))
def test_target_not_a_class(target):
    with pytest.raises(ValueError, match="target"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), target, rate=0.1)


@fast
@given(st.integers(min_value=9, max_value=64))
def test_trigger_larger_than_image(size):
    with pytest.raises(ValueError, match="larger than"):
        ls.Patch(ls.white_square(size), (0, 0))(X)


@fast
@given(st.integers(min_value=3, max_value=1000))
def test_count_above_eligible_rows(count):
    with pytest.raises(ValueError, match="count"):
        ls.clean_label(X, Y, ls.Patch(ls.white_square(2)), 9, count=count)  # only 2 rows are class 9


@fast
@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in ("fashion-mnist", "mnist", "cifar10", "digits")))
def test_unknown_dataset_name(name):
    with pytest.raises(ValueError, match="name"):
        ls.load_dataset(name)


@fast
@given(st.text(min_size=1, max_size=12).filter(lambda s: s not in ("logreg", "mlp", "cnn", "resnet18")))
def test_unknown_model_name(name):
    with pytest.raises(ValueError, match="name"):
        ls.build_model(name, (1, 28, 28))


@fast
@given(st.floats(min_value=-10, max_value=10).filter(lambda a: not 0 < a <= 1))
def test_blend_alpha_range(alpha):
    with pytest.raises(ValueError, match="alpha"):
        ls.Blend(torch.rand(1, 8, 8), alpha)


@fast
@given(st.integers(max_value=0))
def test_train_config_epochs(epochs):
    with pytest.raises(ValueError, match="epochs"):
        ls.TrainConfig(epochs=epochs)


def test_rate_and_count_exclusive():
    with pytest.raises(ValueError, match="exactly one"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), 9, rate=0.1, count=2)
    with pytest.raises(ValueError, match="exactly one"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), 9)


@pytest.mark.parametrize("bad_x, err", [
    (torch.rand(20, 64), ValueError),                      # not (N, C, H, W)
    (torch.randint(0, 255, (20, 1, 8, 8)), TypeError),     # integer images
    ([[0.0]], TypeError),                                  # not a tensor
])
def test_image_shape_and_dtype(bad_x, err):
    with pytest.raises(err, match="x"):
        ls.badnets(bad_x, Y, ls.Patch(ls.white_square(2)), 9, rate=0.1)


def test_label_count_mismatch():
    with pytest.raises(ValueError, match="y has 19 labels"):
        ls.badnets(X, Y[:19], ls.Patch(ls.white_square(2)), 9, rate=0.1)


def test_channel_mismatch():
    with pytest.raises(ValueError, match="channels"):
        ls.Patch(torch.ones(3, 2, 2))(X)


def test_float_type_errors():
    with pytest.raises(TypeError, match="rate"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), 9, rate="0.1")
    with pytest.raises(TypeError, match="target"):
        ls.badnets(X, Y, ls.Patch(ls.white_square(2)), 2.5, rate=0.1)


def test_bad_device():
    with pytest.raises(ValueError, match="device"):
        ls.pick_device("tpu")


def test_profile_name():
    with pytest.raises(ValueError, match="profile"):
        ls.get_profile("huge")
