import pytest
import torch
from sklearn.metrics import roc_auc_score

import labsupport as ls
from labsupport.metrics import target_labels


class Always(torch.nn.Module):
    """A stub classifier that predicts one class for every input."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls = cls
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.zeros(len(x), 10)
        out[:, self.cls] = 1
        return out


def test_asr_excludes_rows_already_in_target_class():
    x = torch.rand(10, 1, 4, 4)
    y = torch.tensor([9, 9, 9, 9, 9, 1, 2, 3, 4, 5])
    assert ls.attack_success_rate(Always(9), x, y, lambda t: t, 9) == 1.0
    assert ls.attack_success_rate(Always(1), x, y, lambda t: t, 9) == 0.0


def test_asr_all_to_all_uses_per_row_targets():
    x = torch.rand(4, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3])
    assert ls.attack_success_rate(Always(1), x, y, lambda t: t, ls.AllToAll(10)) == 0.25


def test_clean_accuracy():
    x = torch.rand(4, 1, 4, 4)
    assert ls.clean_accuracy(Always(2), x, torch.tensor([2, 2, 1, 0])) == 0.5


def test_clean_accuracy_refuses_labels_the_model_cannot_output():
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(ValueError, match=r"y must name classes of the model, in \[0, 9\]; got labels in \[0, 12\]"):
        ls.clean_accuracy(Always(2), x, torch.tensor([2, 12, 1, 0]))  # would silently score 0 for row 1


def test_auroc_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(300, generator=gen) < 0.2
    scores = truth.float() * 0.8 + torch.rand(300, generator=gen)
    scores[:20] = 0.5  # ties
    assert ls.auroc(scores, truth) == pytest.approx(roc_auc_score(truth.numpy(), scores.numpy()), abs=1e-9)


def test_asr_refuses_a_target_the_model_cannot_output():
    x, y = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    for target in (11, -1, lambda labels: labels + 10):
        with pytest.raises(ValueError, match=r"in \[0, 9\]"):
            ls.attack_success_rate(Always(2), x, y, lambda z: z, target)
    assert ls.attack_success_rate(Always(2), x, y, lambda z: z, 2) == 1.0


def test_auroc_refuses_nan_scores_and_mismatched_rows():
    truth = torch.tensor([0, 1, 0, 1], dtype=torch.bool)
    with pytest.raises(ValueError, match="1 NaN"):
        ls.auroc(torch.tensor([0.1, float("nan"), 0.3, 0.9]), truth)
    with pytest.raises(ValueError, match="scores \\(3 rows\\) and truth \\(4 rows\\)"):
        ls.auroc(torch.tensor([0.1, 0.2, 0.3]), truth)
    assert ls.auroc(torch.tensor([-float("inf"), 1.0, 0.0, float("inf")]), truth) == 1.0  # infinities still order


def test_detection_scores():
    flags = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    truth = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    s = ls.detection_scores(flags, truth)
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert ls.detection_scores([1, 1, 0, 0, 1], truth.numpy()) == s  # 0/1 numbers and arrays are masks too


@pytest.mark.parametrize("flags, what", [
    (torch.tensor([0.9, 0.2, 0.0, 0.0, 0.7]), "e.g. 0.9"),  # scores, not flags: .bool() would flag all three
    ([0, 2, 0, 0, 1], "e.g. 2"),
    (torch.tensor([float("nan"), 1.0, 0.0, 0.0, 1.0]), "e.g. nan"),
])
def test_detection_scores_refuse_scores_passed_as_flags(flags, what):
    truth = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"flags must be a boolean mask .*{what}.*Threshold"):
        ls.detection_scores(flags, truth)
    with pytest.raises(ValueError, match="truth must be a boolean mask"):
        ls.detection_scores(truth, flags)
    with pytest.raises(ValueError, match="truth must be a boolean mask"):
        ls.auroc(torch.rand(5), flags)
    with pytest.raises(TypeError, match="flags must be a boolean mask .* got str"):
        ls.detection_scores("10101", truth)


def test_target_labels_rejects_bad_function():
    with pytest.raises(ValueError):
        target_labels(lambda y: y[:1], torch.tensor([1, 2]))
