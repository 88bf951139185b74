"""Metrics: names are ``{split}/{task}/{metric}`` (e.g. ``test/left/acc``)."""

from framework.metrics.accuracy import Accuracy
from framework.metrics.base import Metric

__all__ = ["Metric", "Accuracy"]
