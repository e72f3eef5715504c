"""Lab 1 — data poisoning, one module per attack: ``label_flip`` (random, targeted and chosen
flips), ``svm`` (Biggio et al.'s gradient attack on a linear SVM), ``regression`` (OptP, StatP and
the TRIM defense), ``gradient_canceling`` (model-targeted poisoning of logistic regression),
``feature_collision`` (Poison Frogs). Every attack returns a :class:`common.Poisoned` with the
ground-truth mask of the rows it changed or added."""

from . import common, feature_collision, gradient_canceling, label_flip, regression, svm
from .common import Poisoned
from .label_flip import FlipCurve, flip_curve, flip_labels

__all__ = ["FlipCurve", "Poisoned", "common", "feature_collision", "flip_curve", "flip_labels",
           "gradient_canceling", "label_flip", "regression", "svm"]
