"""The planted-conflict toy: two related regression tasks and one conflicting task.

Where GradSplit should help is known by construction here. Tasks A and B read the same latent
``z_u = tanh(3 U x)`` through different linear read-outs (they help each other); task C has 5x
the amplitude (25x the loss scale) and is either pure label noise (``noise``) or a real signal
on another latent ``z_v`` (``signal``). Under hard sharing C's gradient dominates the shared
layers; the asymmetric relation ``[[1,1,0],[1,1,0],[1,1,1]]`` keeps C's loss off the groups of
A and B while A and B may still train C's group. Fully labelled data, so the split section runs
once per task (``replicate``); the net has no normalisation.

The same ``GradSplitNet`` as in training runs is used; R = all-ones is hard sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from algorithms.gradsplit.model import GradSplitNet

TASKS = ("A", "B", "C")
ASYMMETRIC = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]  # rows = groups, columns = tasks
RELATIONS = {"hps": [[1, 1, 1]] * 3, "identity": torch.eye(3).tolist(), "asym": ASYMMETRIC}
VARIANTS = ("noise", "signal")
NOISE = 0.1  # target noise: std 10 % of the target's signal std


class _Backbone(nn.Module):
    """stem -> 3 split layers (Linear + tanh); the Linear outputs are the split modules."""

    def __init__(self, dim: int, width: int, depth: int = 3):
        super().__init__()
        self.stage_names = ["stem"] + [f"split{i}" for i in range(depth)]
        self.stem = nn.Sequential(nn.Linear(dim, width), nn.Tanh())
        for name in self.stage_names[1:]:
            setattr(self, name, nn.Sequential(nn.Linear(width, width), nn.Tanh()))
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


class _Net(nn.Module):
    def __init__(self, dim: int, width: int):
        super().__init__()
        self.backbone = _Backbone(dim, width)
        self.heads = nn.ModuleDict({t: nn.Linear(width, 1) for t in TASKS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.backbone(x)
        return {t: h(z).squeeze(1) for t, h in self.heads.items()}


def make_data(variant: str, seed: int, n_train: int = 256, n_test: int = 4000, dim: int = 16) -> dict:
    """``{split: (x, {task: y})}``; A and B have unit signal std plus noise of std ``NOISE``;
    C is 5x: noise of std 5 (``noise``) or a signal of std 5 plus ``NOISE`` of it (``signal``)."""
    if variant not in VARIANTS:
        raise ValueError(f"planted-conflict variant '{variant}' is not one of {', '.join(VARIANTS)}")
    g = torch.Generator().manual_seed(10_000 + seed)
    latent = 4
    u = torch.randn(latent, dim, generator=g) / dim**0.5
    v = torch.randn(latent, dim, generator=g) / dim**0.5
    read = {t: torch.randn(latent, generator=g) for t in TASKS}
    x = torch.randn(n_train + n_test, dim, generator=g)
    zu, zv = torch.tanh(3 * x @ u.t()), torch.tanh(3 * x @ v.t())
    clean = {"A": zu @ read["A"], "B": zu @ read["B"]}
    for t in ("A", "B"):
        clean[t] = clean[t] / clean[t].std()
    if variant == "signal":
        c = zv @ read["C"]
        clean["C"] = 5 * c / c.std()
    else:
        clean["C"] = torch.zeros(n_train + n_test)
    y = {}
    for t in TASKS:
        scale = 5.0 if (t == "C" and variant == "noise") else clean[t].std().item() * NOISE
        y[t] = clean[t] + scale * torch.randn(n_train + n_test, generator=g)
    cut = n_train
    return {
        "train": (x[:cut], {t: y[t][:cut] for t in TASKS}),
        "test": (x[cut:], {t: y[t][cut:] for t in TASKS}),
    }


def train_arm(
    relation: Sequence[Sequence[float]],
    data: dict,
    seed: int,
    steps: int = 800,
    batch: int = 64,
    lr: float = 3e-3,
    width: int = 24,
) -> dict[str, float]:
    """Train one arm; test nMSE (MSE / Var(target)) per task, lower is better."""
    torch.manual_seed(seed)
    x, y = data["train"]
    net = _Net(x.shape[1], width)
    model = GradSplitNet(
        net, list(TASKS), torch.tensor(relation, dtype=torch.float32), [f"split{i}.0" for i in range(3)],
        task_bn="none", min_group_channels=width // len(TASKS),
    )
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        out = model(x[idx], replicate=True)
        loss = sum(nn.functional.mse_loss(out[t], y[t][idx]) for t in TASKS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    xt, yt = data["test"]
    with torch.no_grad():
        out = model(xt)
    return {t: (nn.functional.mse_loss(out[t], yt[t]) / yt[t].var()).item() for t in TASKS}


def run(
    variant: str, arms: Sequence[str], seeds: Sequence[int], **kwargs
) -> dict[str, list[dict[str, float]]]:
    """``{arm: [per-seed nMSE dicts]}``; every arm sees the same data and initial seed."""
    out: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    for seed in seeds:
        data = make_data(variant, seed)
        for arm in arms:
            out[arm].append(train_arm(RELATIONS[arm], data, seed, **kwargs))
    return out
