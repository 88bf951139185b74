"""Small CDT fixtures and the data-parallel worker (module level so that spawn can pickle it)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from algorithms._face.model import build_face_net
from algorithms.cdt.meta import MetaSettings, meta_step, sample_pairs
from framework.config import ModelConfig

P, K, DOMAINS, IDS_PER_DOMAIN = 4, 2, 3, 6


def tiny_net(norm: str = "group", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = OmegaConf.structured(ModelConfig(widths=[4, 8], norm=norm, stem_stride=1))
    return build_face_net(cfg, (1, 8, 8), DOMAINS * IDS_PER_DOMAIN, embedding_dim=12, triplet_dim=6,
                          scale=8.0, margin=0.3)


def tiny_domains(step: int = 0, seed: int = 0) -> list[dict]:
    """Fixed per-domain P×K batches (identity-major), domain d owning identities d·6 … d·6+5."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for d in range(DOMAINS):
        ids = torch.randperm(IDS_PER_DOMAIN, generator=g)[:P] + d * IDS_PER_DOMAIN
        labels = ids.repeat_interleave(K)
        images = torch.rand(P * K, 1, 8, 8, generator=g) + 0.3 * d
        out.append({"image": images, "labels": {"identity": labels}})
    return out


def local_part(domains: list[dict], rank: int, world: int) -> list[dict]:
    """Rank ``rank``'s block of identities of every domain (the global data order)."""
    rows = slice(rank * P * K // world, (rank + 1) * P * K // world)
    return [{"image": d["image"][rows], "labels": {"identity": d["labels"]["identity"][rows]}} for d in domains]


def train_steps(net: torch.nn.Module, settings: MetaSettings, steps: int, rank: int = 0, world: int = 1,
                reduce=None, pairs_per_step: int = 0, lr: float = 0.1) -> dict[str, np.ndarray]:
    """``steps`` outer steps of plain SGD on the meta gradient; the final parameters."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    for step in range(steps):
        domains = local_part(tiny_domains(step), rank, world)
        pairs = sample_pairs(DOMAINS, pairs_per_step, seed=0, step=step)
        opt.zero_grad(set_to_none=True)
        meta_step(net, domains, pairs, settings, lambda loss: loss.backward(), reduce, world)
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


def ddp_worker(rank: int, world: int, cases: list[tuple[MetaSettings, int]], steps: int) -> list[dict]:
    """Every (settings, pairs_per_step) case trained from the same initial weights."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    return [train_steps(tiny_net(), s, steps, rank, world, reduce, n) for s, n in cases]


def lonely_worker(rank: int, world: int, steps: int) -> dict[str, np.ndarray]:
    """Rank 1's slice of domain 0 holds a single identity (no triplet): it must still join
    every collective of the step (a hang or a gloo size mismatch otherwise)."""
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    settings = MetaSettings(alpha=0.05, lam=0.5, second_order=True, normalize="l2_trace")
    for step in range(steps):
        domains = local_part(tiny_domains(step), rank, world)
        if rank == 1:
            domains[0]["labels"]["identity"] = torch.full_like(domains[0]["labels"]["identity"], 0)
        opt.zero_grad(set_to_none=True)
        meta_step(net, domains, sample_pairs(DOMAINS, 0, 0, step), settings, lambda loss: loss.backward(), reduce, world)
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}


class _Weights:
    """Hook: the trained weights of this rank, as numpy (tensors would die with the worker)."""

    def __getattr__(self, name):  # every other hook event is a no-op
        return lambda *a, **k: None

    def before_fit(self, trainer):
        self.initial = self._numpy(trainer)

    def after_fit(self, trainer, summary):
        self.weights = self._numpy(trainer)

    @staticmethod
    def _numpy(trainer) -> dict:
        model = trainer.strategy.unwrap(trainer.model)
        return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def engine_worker(rank: int, world: int, data_root: str, run_dir: str, overrides: list[str]) -> dict:
    """``experiment=cdt_faces`` under ``strategy=ddp`` through the real trainer, a few steps."""
    from framework.run import train
    from tests.helpers.dist_workers import compose

    hook = _Weights()
    summary = train(compose(data_root, "experiment=cdt_faces", "strategy=ddp", f"paths.run_dir={run_dir}",
                            *overrides), hooks=[hook])
    return {"weights": hook.weights, "initial": hook.initial, "steps": summary["steps"],
            "world_size": summary["world_size"]}
