"""A test-only staged algorithm that exercises every part of the phase engine.

Three phases of unequal length, each with its own optimizer and a schedule that restarts:
``left`` (4 steps, SGD with warm-up; one head), ``both`` (6 steps, Adam; a ``right`` head is
added when it starts), ``heads`` (3 steps, constant-LR SGD; only the heads train). Every phase
ends with an evaluation over three named sets: the ``val`` split and two class subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from framework import Algorithm, AlgorithmConfig, register_algorithm
from framework.evalsets import EvalSet
from framework.losses import task_losses
from framework.models import build_multitask, make_head
from framework.phases import Phase

SETS = ("val", "low_left", "high_left")


@dataclass
class ToyPhasesConfig(AlgorithmConfig):
    name: str = "toy_phases"


@register_algorithm("toy_phases", config=ToyPhasesConfig, override=True)
class ToyPhases(Algorithm):
    def phases(self):
        return [
            Phase("left", steps=4, optim={"name": "sgd", "lr": 0.05, "warmup_steps": 2}, eval_sets=SETS),
            Phase("both", steps=6, optim={"name": "adam", "lr": 5e-4, "warmup_steps": 0}, eval_sets=SETS),
            Phase("heads", steps=3, trainable=("heads",), optim={"name": "sgd", "lr": 0.02, "schedule": "constant",
                                                          "warmup_steps": 0},
                  eval_sets=SETS),
        ]

    def eval_sets(self):
        return [EvalSet("low_left", "val", {"left": tuple(range(5))}),
                EvalSet("high_left", "val", {"left": tuple(range(5, 10))})]

    def build_model(self, data_info) -> nn.Module:
        return build_multitask(self.full_config.model, data_info, tasks={"left": data_info.tasks["left"]})

    def configure_model(self, phase, model, ctx):
        if phase == "both":  # grow: a head for the second task
            model.heads["right"] = make_head(model.backbone.out_dim, ctx.data_info.tasks["right"],
                                             self.full_config.model.head_hidden)
        return model

    def training_step(self, model, batch, ctx):
        return task_losses(model(batch["image"]), batch["labels"])


def train_phases(rank: int, world: int, data_root: str, overrides: list[str]) -> dict:
    """A 2-process worker: trains ``toy_phases``; rank 0 returns its final weights and summary."""
    from tests.helpers.dist_workers import cpu_only, train_weights

    cpu_only()
    return train_weights(rank, world, data_root, ["algorithm=toy_phases", *overrides])
