import math
from dataclasses import dataclass, field

from framework.config import AlgorithmConfig, ranged
from framework.registry import register_algorithm


@register_algorithm("mvcom", impl="algorithms.mvcom.method:MvCoM")
@dataclass
class MvCoMConfig(AlgorithmConfig):
    """Per-sample multi-variation cosine margins learned on a held-out meta set (MvCoM, reconstructed).

    Liu et al., "Learning to Learn across Diverse Data Biases in Deep Face Recognition", CVPR 2022.
    The paper's text was not available: this is a reconstruction from its abstract and patent
    (L2RW-style look-ahead applied to margins). Every key marked [INF] is our choice, not the
    authors'; the defaults are the reconstruction's. ``meta_every=0`` is the CosFace baseline
    (uniform margin, nothing learned).
    """

    name: str = "mvcom"
    # per-sample attributes (``batch['attrs']``) that are variation factors; -1 = unknown level (no offset)
    factors: list = field(default_factory=lambda: ["blur", "occlusion"])
    mode: str = "table"  # [INF] table (meta-gradient on φ) | per_sample_regress (fit φ to per-sample offsets)
    apply: str = "margin"  # [INF] margin | loss_weight | both: where the learned offset acts
    head: str = "cosface"  # cosface | arcface
    scale: float = ranged(64.0, gt=0)  # logit scale s
    margin: float = ranged(0.35, ge=0, lt=math.pi)  # base margin m₀ (CosFace m or ArcFace angle)
    margin_min: float = ranged(0.05, ge=0, lt=math.pi)  # [INF] clip of the per-sample margin
    margin_max: float = ranged(0.7, ge=0, lt=math.pi)
    bound: float = ranged(0.15, ge=0)  # [INF] |φ_k[l]| ≤ bound (0: unbounded)
    center: bool = True  # [INF] Σ_l π_kl φ_k[l] = 0 after every update (π: training level frequencies)
    class_margin: str = "constant"  # [INF] constant (m₀) | ldam (∝ n_y^-power, sample mean m₀)
    ldam_power: float = ranged(0.25, gt=0)
    class_weight: str = "none"  # [INF] none (c_y = 1) | inverse_freq (∝ 1/n_y, sample mean 1)
    meta_objective: str = "uniform"  # [INF] uniform (CosFace, m₀, mean over the meta batch) | worst_group
    meta_aux: str = "meta"  # the auxiliary stream (data.aux) holding the balanced meta set
    meta_every: int = ranged(1, ge=0)  # a meta update every N steps; 0 = never (the CosFace baseline)
    meta_warmup: float = ranged(0.25, ge=0, le=1)  # [INF] no meta update in this share of the phase's steps
    meta_optim: str = "adam"  # [INF] adam | sgd, on φ
    meta_lr: float = ranged(1e-2, gt=0)
    alpha: float = ranged(0.0, ge=0)  # look-ahead step; 0 = the model optimizer's current LR [INF, L2RW]
    lookahead: list = field(default_factory=list)  # [INF] submodules the look-ahead updates ([] = all)
    regress_eta: float = ranged(1.0, gt=0)  # per_sample_regress: targets −η·bound·g_i/mean|g| [INF]
    regress_ema: float = ranged(0.1, gt=0, le=1)  # per_sample_regress: φ ← (1−ρ)φ + ρ·batch fit
    embedding_dim: int = ranged(128, ge=1)
    flip_test: bool = False  # test feature = [emb(x), emb(flip(x))]
    table_every: int = ranged(50, ge=1)  # log the margin table (metrics.jsonl, margin_table.json) every N steps
