"""Cross-domain continual learning: the Mahalanobis similarity classifier with moving-average
distillation (MSL + Mov, Simon et al., CVPR 2022) and its baselines (torch-free registration).

The baselines are configurations of the same plugin (``configs/algorithm/cdcl_*.yaml``):
fine-tuning (``head=linear distill=false mov_mode=none``), LwF (``head=linear``, distillation
only), experience replay (``head=linear buffer_size=N``) and a linear head with the same
distillation and moving average (``head=linear``, the rest as MSL + Mov).
"""

from dataclasses import dataclass

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("cdcl", impl="algorithms.cdcl.method:CDCL")
@dataclass
class CDCLConfig(AlgorithmConfig):
    """A run is a sequence of experiences (phases ``exp0 .. exp{n-1}``); experience i trains on
    ``data.phase_classes.exp{i}`` and ``data.phase_sources.exp{i}`` (default: every class, every source).

    Defaults follow the only available implementation of the paper (spec part B): logit
    ``+d_c(f)`` (``msl_sign=1``, ``msl_temperature=1``), rank 64, LwF soft cross-entropy over the old
    classes with weight 30 at temperature 1, parameter smoothing with gamma 0.96, no buffer.
    """

    name: str = "cdcl"
    experiences: int = ranged(5, ge=1)
    steps_per_experience: int = ranged(0, ge=0)  # 0: an equal part of trainer.max_steps each
    task: str = ""  # the task whose classes arrive over time ("": the dataset's only task)
    neck: int = ranged(64, ge=0)  # Linear+ReLU feature layer after the backbone (0: none)
    flatten: bool = True  # the neck reads the flattened last stage (the spec's conv + FC-64), not the pooled one
    head: str = "msl"  # msl (Mahalanobis similarity) | linear
    msl_rank: int = ranged(64, ge=1)  # r: rows of each class's factor L_c (metric L_c^T L_c)
    msl_sign: int = ranged(1, choices=(1, -1))  # logit = sign * d_c / temperature; +1 as in the reimplementation
    msl_temperature: float = ranged(1.0, gt=0)
    ce_weight: float = ranged(1.0, ge=0)  # lambda_c
    distill: bool = True  # distil the old classes' outputs from the previous experience's model
    kd_weight: float = ranged(30.0, ge=0)  # lambda_d
    kd_temperature: float = ranged(1.0, gt=0)  # T of the soft cross-entropy over the old classes
    # param_smoothing: theta <- gamma*theta_before_step + (1-gamma)*theta_after_step, from experience 1 on;
    # ema_teacher: the distillation teacher follows the student, teacher <- alpha*teacher + (1-alpha)*student;
    # none: neither
    mov_mode: str = "param_smoothing"
    mov_gamma: float = ranged(0.96, ge=0, lt=1)
    ema_alpha: float = ranged(0.99, ge=0, lt=1)
    buffer_size: int = ranged(0, ge=0)  # reservoir of past training rows replayed with each step (0: none)
    replay_batch: int = ranged(32, ge=1)  # buffer rows added to every step once the buffer holds rows
    unseen_split: str = "unseen"  # split of an unseen domain evaluated per experience ("": none)
