import math
from dataclasses import dataclass

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("cdt", impl="algorithms.cdt.method:CDT")
@dataclass
class CDTConfig(AlgorithmConfig):
    """Cross-domain triplet loss in a meta-train/meta-test loop (Faraki et al., CVPR 2021).

    ``mode=pooled`` with ``triplet_weight=0`` is the CosFace baseline on pooled domains;
    ``use_cdt=false`` is the meta loop without the CDT term.
    """

    name: str = "cdt"
    mode: str = "meta"  # meta (Algorithm 1) | pooled (one plain step on all domains together)
    use_cdt: bool = True
    # (meta-test, meta-train) pairs per step; 0 = all k(k-1), seeded by (seed, step)
    pairs_per_step: int = ranged(0, ge=0)
    alpha: float = ranged(1e-4, ge=0)  # inner step size
    alpha_halve_every: int = ranged(0, ge=0)  # halve alpha every N steps (paper: 1000); 0 = constant
    alpha_max_halvings: int = ranged(5, ge=0)
    lam: float = ranged(0.7, ge=0, le=1)  # weight of the meta-train gradient
    second_order: bool = True
    tau: float = ranged(1.0, ge=0)  # CDT hinge margin
    rho: float = ranged(1.0, ge=0)  # triplet margin
    cdt_weight: float = ranged(1.0, ge=0)
    triplet_weight: float = ranged(1.0, ge=0)
    normalize: str = "none"  # none (paper) | l2_trace (unit local vectors, Σ scaled to unit mean eigenvalue)
    detach_cov: bool = False  # stop gradients through Σ
    head: str = "cosface"  # cosface | arcface
    scale: float = ranged(64.0, gt=0)  # logit scale s
    margin: float = ranged(0.5, ge=0, lt=math.pi)  # CosFace m, or ArcFace's angle m (radians)
    embedding_dim: int = ranged(256, ge=1)
    triplet_dim: int = ranged(128, ge=1)
    flip_test: bool = True  # test feature = [emb(x), emb(flip(x))]
    eval_domain: str = ""  # verify only this domain's rows (leave-one-domain-out); "" = all rows
