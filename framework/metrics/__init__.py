"""Metrics: names are ``{split}/{task}/{metric}`` (e.g. ``test/left/acc``)."""

from framework.metrics.accuracy import Accuracy
from framework.metrics.base import Metric
from framework.metrics.continual import accuracy_after_each, forgetting, summarize
from framework.metrics.segmentation import MaskedMean, MeanIoU

__all__ = ["Metric", "Accuracy", "accuracy_after_each", "forgetting", "summarize", "MeanIoU", "MaskedMean"]
