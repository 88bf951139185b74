"""Small MvCoM fixtures: a face folder of synthetic identities, a tiny face net with a margin
table, fixed batches, and the data-parallel worker (module level so that spawn can pickle it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from algorithms._face.model import build_face_net
from algorithms.mvcom.margins import MarginTable
from algorithms.mvcom.meta import MetaSettings, regress_step, table_step
from framework.config import ModelConfig
from framework.hooks import Hook
from framework.lookahead import average_grads, trainable

CLASSES, LEVELS, BATCH, META = 6, [3, 2], 8, 8


def face_folder(root: Path, identities: int = 8, images: int = 8, size: int = 16) -> Path:
    """``<identity>/<k>.png`` grey images: one smooth pattern per identity plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for p in range(identities):
        base = rng.uniform(40, 215, size=(4, 4))
        folder = root / f"person{p}"
        folder.mkdir(parents=True)
        for k in range(images):
            img = np.kron(base, np.ones((size // 4, size // 4))) + rng.normal(0, 12, size=(size, size))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{k}.png")
    return root


def tiny_setup(seed: int = 0) -> tuple[torch.nn.Module, MarginTable]:
    torch.manual_seed(seed)
    cfg = OmegaConf.structured(ModelConfig(widths=[4, 8], norm="group", stem_stride=1))
    net = build_face_net(cfg, (1, 8, 8), CLASSES, embedding_dim=12, triplet_dim=1, scale=8.0, margin=0.3)
    freq = torch.tensor([[6.0, 1.0, 1.0], [7.0, 1.0, 0.0]])
    table = MarginTable(LEVELS, freq, torch.full((CLASSES,), 0.3), torch.ones(CLASSES), 0.3, 0.05, 0.7, bound=0.15)
    return net, table


def batches(step: int) -> tuple[dict, dict]:
    """A training batch and a meta batch (images, identities, attribute levels) for ``step``."""
    g = torch.Generator().manual_seed(100 + step)

    def one(n: int) -> dict:
        return {"image": torch.rand(n, 1, 8, 8, generator=g),
                "labels": {"identity": torch.randint(0, CLASSES, (n,), generator=g)},
                "attrs": {"blur": torch.randint(0, 3, (n,), generator=g), "occlusion": torch.randint(0, 2, (n,), generator=g)}}

    return one(BATCH), one(META)


def part(batch: dict, rank: int, world: int) -> dict:
    n = len(batch["image"])
    rows = slice(rank * n // world, (rank + 1) * n // world)
    return {"image": batch["image"][rows], "labels": {"identity": batch["labels"]["identity"][rows]},
            "attrs": {k: v[rows] for k, v in batch["attrs"].items()}}


def train_steps(mode: str, steps: int, rank: int = 0, world: int = 1, reduce=None) -> dict[str, np.ndarray]:
    """``steps`` of: meta update of φ (Adam, then centre and bound), then the real SGD step of the net."""
    from algorithms._face.heads import margin_loss
    from algorithms.mvcom.meta import factor_levels

    net, table = tiny_setup()
    opt, meta_opt = torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.Adam(table.parameters(), lr=0.05)
    settings = MetaSettings(alpha=0.1)
    for step in range(steps):
        batch, meta = (part(b, rank, world) for b in batches(step))
        levels, labels = factor_levels(batch, ["blur", "occlusion"]), batch["labels"]["identity"]
        step_fn = table_step if mode == "table" else regress_step
        step_fn(net, table, batch, levels, meta, factor_levels(meta, ["blur", "occlusion"]), settings, reduce, world)
        if mode == "table":
            meta_opt.step()
            meta_opt.zero_grad(set_to_none=True)
        table.project_()
        margin, weight = table(levels, labels, detach=True)
        loss = (weight * margin_loss(net(batch["image"], labels, margin)["logits"], labels, reduction="none")).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        average_grads(trainable(net).values(), reduce, world)
        opt.step()
    out = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    out["phi"] = table.phi.detach().numpy().copy()
    return out


def ddp_worker(rank: int, world: int, modes: list[str], steps: int) -> dict[str, dict]:
    import torch.distributed as dist

    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t)
        return t

    torch.set_num_threads(1)
    return {mode: train_steps(mode, steps, rank, world, reduce) for mode in modes}


class FinalState(Hook):
    """This rank's own φ and face-net weights at the end of training (not the checkpoint rank 0 wrote)."""

    def __init__(self):
        self.out: dict = {}

    def after_fit(self, trainer, summary):
        net = trainer.strategy.unwrap(trainer.model)
        self.out = {"phi": trainer.algorithm.table.phi.detach().cpu().numpy().copy(), "steps": summary["steps"],
                    "world_size": summary["world_size"],
                    "model": {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}}


def engine_worker(rank: int, world: int, overrides: list[str], modes: list[str], steps: int) -> dict:
    """One process start for both checks: the meta steps of ``ddp_worker`` on fixed half batches,
    then ``medley train`` under 2-process DDP; this rank's final φ and face-net weights of each."""
    import algorithms.mvcom  # noqa: F401 - registers the plugin in the spawned process
    from framework.compose import compose
    from framework.run import train

    steps_out = ddp_worker(rank, world, modes, steps)
    final = FinalState()
    train(compose(["strategy=ddp", *overrides]), hooks=[final])
    return {"steps": steps_out, "engine": final.out}
