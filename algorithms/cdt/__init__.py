from dataclasses import dataclass

from framework.config import AlgorithmConfig
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
    pairs_per_step: int = 0  # (meta-test, meta-train) pairs per step; 0 = all k(k-1), seeded by (seed, step)
    alpha: float = 1e-4  # inner step size
    alpha_halve_every: int = 0  # halve alpha every N steps (paper: 1000); 0 = constant
    alpha_max_halvings: int = 5
    lam: float = 0.7  # weight of the meta-train gradient
    second_order: bool = True
    tau: float = 1.0  # CDT hinge margin
    rho: float = 1.0  # triplet margin
    cdt_weight: float = 1.0
    triplet_weight: float = 1.0
    normalize: str = "none"  # none (paper) | l2_trace (unit local vectors, Σ scaled to unit mean eigenvalue)
    detach_cov: bool = False  # stop gradients through Σ
    head: str = "cosface"  # cosface | arcface
    scale: float = 64.0
    margin: float = 0.5
    embedding_dim: int = 256
    triplet_dim: int = 128
    flip_test: bool = True  # test feature = [emb(x), emb(flip(x))]
    eval_domain: str = ""  # verify only this domain's rows (leave-one-domain-out); "" = all rows
