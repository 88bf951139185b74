"""CDT: Cross-Domain Similarity Learning for Face Recognition in Unseen Domains
(Faraki, Yu, Tsai, Suh, Chandraker, CVPR 2021), as a manual-optimisation plugin.

Each training batch is ``{domain_name: batch}`` (episodic P×K batches, ``labels['identity']``
global over all source identities, one classifier row per identity). Config keys: see
``CDTConfig``. The meta loop runs on the *unwrapped* model with ``framework.lookahead``
(a data-parallel wrapper would synchronise the inner gradient as if it were the real one), so
the accumulated gradient is averaged over ranks here with ``ctx.all_reduce``.
"""

from __future__ import annotations

import torch
from torch import nn

from algorithms._face.model import build_face_net
from algorithms.cdt.meta import MetaSettings, meta_step, pooled_step, sample_pairs
from framework.algorithm import Algorithm, Capabilities
from framework.metrics.verification import Verification

MODES = ("meta", "pooled")
NORMALIZE = ("none", "l2_trace")


class CDT(Algorithm):
    # ZeRO shards parameters and gradients across ranks, while the fast weights need every
    # full parameter and gradient on every rank: DeepSpeed is refused at start-up.
    capabilities = Capabilities(strategies=("single", "ddp"), precisions=("fp32",), accumulation=False,
                                manual_optimization=True)

    def __init__(self, config, full_config=None):
        super().__init__(config, full_config)
        c = config
        if c.mode not in MODES:
            raise ValueError(f"algorithm.mode: '{c.mode}' is not one of {', '.join(MODES)}")
        if c.normalize not in NORMALIZE:
            raise ValueError(f"algorithm.normalize: '{c.normalize}' is not one of {', '.join(NORMALIZE)}")
        data = getattr(full_config, "data", None) if full_config is not None else None
        p, k = getattr(data, "episode_p", 2), getattr(data, "episode_k", 2)
        if c.mode == "meta" and (p < 2 or k < 2):
            # triplets need two images of an identity and a second identity in every domain batch;
            # under DDP a rank without triplets would also skip collectives the others enter
            raise ValueError(f"algorithm 'cdt' (mode=meta) needs data.episode_p >= 2 and data.episode_k >= 2, "
                             f"got {p} and {k}")
        self.settings = MetaSettings(alpha=c.alpha, lam=c.lam, second_order=c.second_order, use_cdt=c.use_cdt,
                                     cdt_weight=c.cdt_weight, triplet_weight=c.triplet_weight, tau=c.tau,
                                     rho=c.rho, normalize=c.normalize, detach_cov=c.detach_cov)

    def build_model(self, data_info) -> nn.Module:
        if "identity" not in data_info.tasks:
            raise ValueError(f"algorithm 'cdt' needs an 'identity' task; dataset '{data_info.name}' has "
                             f"{sorted(data_info.tasks)}")
        c = self.config
        return build_face_net(self.full_config.model, tuple(data_info.image_shape), data_info.tasks["identity"],
                              c.embedding_dim, c.triplet_dim, c.scale, c.margin, c.head)

    def alpha_at(self, step: int) -> float:
        c = self.config
        if not c.alpha_halve_every:
            return c.alpha
        return c.alpha * 0.5 ** min(step // c.alpha_halve_every, c.alpha_max_halvings)

    def training_step(self, model, batch, ctx) -> dict[str, torch.Tensor]:
        if not isinstance(batch, dict) or "image" in batch:
            raise TypeError("algorithm 'cdt' trains on episodic batches {domain_name: batch}; "
                            "configure the data module's per-domain P×K sampler")
        names = sorted(batch)
        domains = [batch[k] for k in names]
        net = ctx.unwrap(model)
        reduce = (lambda t: ctx.all_reduce(t, "sum")) if ctx.world_size > 1 else None
        self.settings.alpha = self.alpha_at(ctx.global_step)
        if self.config.mode == "pooled" or len(domains) < 2:
            logs = pooled_step(net, domains, self.settings, ctx.backward, reduce, ctx.world_size)
        else:
            pairs = sample_pairs(len(domains), self.config.pairs_per_step, self.full_config.trainer.seed,
                                 ctx.global_step)
            logs = meta_step(net, domains, pairs, self.settings, ctx.backward, reduce, ctx.world_size)
        ctx.step("main")
        # the returned terms sum to the objective that was stepped; the rest are diagnostics
        if "meta_train" in logs:
            lam = self.settings.lam
            terms = {"meta_train": lam * logs.pop("meta_train"), "meta_test": (1 - lam) * logs.pop("meta_test")}
        else:
            terms = {"cls": logs.pop("cls"), "trp": self.settings.triplet_weight * logs.pop("trp", 0.0)}
        for key, value in logs.items():
            ctx.log(f"cdt/{key}", value)
        ctx.log("cdt/alpha", self.settings.alpha)
        return {k: torch.tensor(v) for k, v in terms.items()}

    # --- evaluation: verification on held-out identities --------------------------------
    def build_metrics(self, data_info) -> dict:
        """All pairs of the evaluated rows (see ``Verification``); the duplicate-image pairs a data
        set declares in ``extra['exclude_pairs']`` (sample-id pairs) are left out."""
        exclude = data_info.extra.get("exclude_pairs")
        domains = list(data_info.extra.get("domains", []))
        want = self.config.eval_domain
        if want and want not in domains:
            raise ValueError(f"algorithm.eval_domain: '{want}' is not a domain of {data_info.name} ({domains})")
        self._eval_domain = domains.index(want) if want else -1
        return {"identity/verify": Verification(exclude=torch.tensor(exclude, dtype=torch.long) if exclude else None)}

    @torch.no_grad()
    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The test feature: the embedding, concatenated with that of the mirrored image."""
        emb = model(images)["emb"]
        if self.config.flip_test:
            emb = torch.cat([emb, model(images.flip(-1))["emb"]], dim=1)
        return emb

    def evaluate(self, model, batch, metrics, ctx) -> None:
        # held-out identities have no classifier row (identity -1); ``person`` names them
        who = batch.get("person", batch["labels"]["identity"])
        mask = batch.get("mask", torch.ones_like(who, dtype=torch.bool))
        if getattr(self, "_eval_domain", -1) >= 0 and "domain" in batch:
            mask = mask & (batch["domain"] == self._eval_domain)
        if mask.any():
            metrics["identity/verify"].update(self.embed(model, batch["image"]), who, batch["id"], mask)
