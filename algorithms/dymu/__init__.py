"""DYMU: one multi-task model whose architecture and weights follow a task preference and a
compute budget at inference (torch-free registration)."""

from dataclasses import dataclass, field

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("dymu", impl="algorithms.dymu.method:Dymu")
@dataclass
class DymuConfig(AlgorithmConfig):
    """DYMU (CVPR'22): preference- and budget-controlled tree over single-task anchor streams."""

    name: str = "dymu"
    # dymu: pretrain → anchor → affinity → edge → weight | phn_bn: pretrain → scales → weight on the
    # hard-shared net (Pareto HyperNetwork, BatchNorm only) | hard_sharing: pretrain | single_task: the anchor
    variant: str = "dymu"
    tasks: list | None = None  # None: the dataset's dense targets (else its label tasks)
    shared_init: bool = True  # anchors start from one jointly pretrained stream (off: independent inits)
    # phase lengths as shares of trainer.max_steps; the last phase takes the rest
    pretrain_share: float = ranged(0.15, ge=0, le=1)
    anchor_share: float = ranged(0.25, ge=0, le=1)
    edge_share: float = ranged(0.35, ge=0, le=1)
    phase_eval: list = field(default_factory=list)  # evaluation sets run at the end of each phase
    # hypernetwork stages: Adam, lr ×lr_decay at lr_decay_at of the phase (the paper: 14K of 30K steps)
    hyper_lr: float = ranged(1e-3, gt=0)
    lr_decay: float = ranged(0.3, gt=0, le=1)
    lr_decay_at: float = ranged(14 / 30, gt=0, le=1)
    embed_dim: int = ranged(32, ge=1)
    edge_hidden: int = ranged(100, ge=1)
    edge_depth: int = ranged(2, ge=1)
    own_bias: float = ranged(0.0, ge=0)  # initial logit bonus of a child's own-stream parent (0: plain init)
    weight_hidden: int = ranged(100, ge=1)
    weight_depth: int = ranged(3, ge=1)
    # Gumbel-softmax: temperature start, ×decay, number of decays over the edge phase (paper: 100)
    tau_start: float = ranged(5.0, gt=0)
    tau_decay: float = ranged(0.97, gt=0, le=1)
    tau_decays: int = ranged(100, ge=1)
    gumbel_hard: bool = False  # straight-through one-hot samples instead of soft mixtures
    dirichlet: float = ranged(0.2, gt=0)  # training preferences r ~ Dir(η·1)
    prefs_per_step: int = ranged(1, ge=1)  # (r, c) draws per step, each on its own group of the batch
    active_threshold: float = ranged(0.6, gt=0, lt=1)  # task i active iff r_i >= threshold / N
    lambda_active: float = ranged(5.0, ge=0)  # paper 1, patent 0.05; the spec's toy needed 5
    lambda_inactive: float = ranged(0.1, ge=0)
    usage: str = "auto"  # P_use: exact (2^N states) | independent (the spec's DP) | auto: exact up to 8 tasks
    affinity_split: str = "train"
    affinity_samples: int = ranged(100, ge=2)
    scale_split: str = "val"  # w_i = 1 / (loss of task i on this split) before the hypernetwork stages
    loss_scales: str = "anchor"  # anchor | none
    output_stride: int = ranged(1, ge=1)  # dense heads predict (and are scored) at 1/stride of the image
    balanced_tasks: list = field(default_factory=lambda: ["edge"])  # binary tasks weighted like BMTAS edges
    pos_weight: float = ranged(0.95, gt=0, lt=1)
    # inference control (`medley eval RUN algorithm.preference=[...] algorithm.budget=...`)
    preference: list | None = ranged(None, ge=0)  # None: uniform
    budget: float = ranged(0.0, ge=0, le=1)
    eval_tree: str = "auto"  # auto | derived | anchor | shared
    modulate: bool = True  # add the weight hypernetwork's BatchNorm shifts (when it exists)
