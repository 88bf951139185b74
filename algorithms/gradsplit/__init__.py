"""GradSplit: per-group gradient routing for multi-task networks (torch-free registration)."""

from dataclasses import dataclass
from typing import Any

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("gradsplit", impl="algorithms.gradsplit.method:GradSplit")
@dataclass
class GradSplitConfig(AlgorithmConfig):
    """GradSplit (WACV'23): each task's gradient trains only the channel groups R allows."""

    name: str = "gradsplit"
    # R[g][t] = 1: task t's loss may train group g (rows = groups, columns = tasks, diagonal 1).
    # identity | all_ones | pairwise (reads relation_file) | lookahead (measured in warm-up) | [[...]]
    relation: Any = "identity"
    relation_file: str | None = None  # JSON table written by `medley gradsplit-relations`
    # pairwise rule: R[i][j] = 1 iff metric_i(with j) >= metric_i(alone) - eps; None = the table's eps
    pairwise_eps: float | None = ranged(None, ge=0)
    # ... and R[i][j] = 0 only if the drop also exceeds z standard errors over the table's seeds
    pairwise_z: float | None = ranged(None, ge=0)  # None = the table's z
    # lookahead: warm-up steps of plain sharing while the affinity is measured
    lookahead_steps: int = ranged(100, ge=1)
    lookahead_every: int = ranged(5, ge=1)  # lookahead: measure on every k-th warm-up step
    lookahead_lr: float = ranged(0.0, ge=0)  # lookahead: step size eta; 0 = the optimizer's current lr
    split_modules: list | None = None  # backbone module names; None = every block of the last stage
    mode: str = "per_sample"  # per_sample (one labelled task per sample) | exact | random_task
    # BatchNorm after the first split module, without gradient paths between tasks:
    # chunk (statistics per task sub-batch) | cut (whole-batch statistics, cross-task gradient cut) | none
    task_bn: str = "chunk"
    bn_running_stats: str = "task_mean"  # chunk only: task_mean | batch, what the shared running stats track
    min_group_channels: int = ranged(8, ge=1)
    tasks: list | None = None  # train only these tasks (pairwise relation runs); None = all
