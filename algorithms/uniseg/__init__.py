"""UniSeg: one segmentation network from several datasets whose label spaces conflict (torch-free registration)."""

from dataclasses import dataclass, field

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("uniseg", impl="algorithms.uniseg.method:UniSeg")
@dataclass
class UniSegConfig(AlgorithmConfig):
    """UniSeg (Kim et al., ECCV 2022): class-independent BCE with "null" masking in the unified label
    space, then a class-relational BCE whose targets come from relations measured after stage 1.

    ``loss=ce`` / ``loss=bce`` with ``relational=false`` are the naive-merge softmax and plain-BCE
    baselines on the same model and data; ``loss=bce_null relational=false`` is stage 1 alone.
    """

    name: str = "uniseg"
    loss: str = "bce_null"  # stage-1 loss: ce (softmax, naive merge) | bce (no null masking) | bce_null
    relational: bool = True  # stage 2: statistics pass, relation rule, class-relational BCE
    stage2_share: float = ranged(0.25, gt=0, lt=1)  # of trainer.max_steps (the authors: 50 of 200 epochs)
    stage2_optimizer: str = "adamw"  # stage 2 fine-tunes with its own optimizer and schedule
    stage2_lr: float = ranged(1e-3, gt=0)
    stage2_weight_decay: float = ranged(1e-4, ge=0)
    tau: float = ranged(1 / 6, ge=0, le=1)  # relation threshold on the mean probability
    head: str = "cosine"  # cosine (scale · cos, no bias: the relation model's head) | linear (1×1 conv)
    scale: float = ranged(20.0, gt=0)  # cosine head scale s
    decoder_width: int = ranged(0, ge=0)  # decoder channels; 0: the backbone's last width
    aspp_rates: list = ranged(default_factory=lambda: [2, 4], ge=1)  # dilations of the atrous pyramid
    # splits of the statistics pass; empty: the training sources' splits (train.<source>)
    stats_splits: list = field(default_factory=list)
    phase_eval_sets: list = field(default_factory=lambda: ["val", "unseen"])  # evaluated at each phase end
