"""GradSplit through the real trainer: every mode and relation source runs from the config path."""

from __future__ import annotations

import json

import pytest
import torch

from framework.hooks import Hook
from framework.run import train


class ParamRecorder(Hook):
    def __init__(self):
        self.params: list[torch.Tensor] = []
        self.relation = None

    def after_step(self, trainer, step, losses):
        model = trainer.strategy.unwrap(trainer.model)
        self.params.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        self.relation = getattr(model, "relation", None)


MULTI_SOURCE = (
    "data=multi_source",
    "data.limit=256",
    "model.widths=[8,32]",
    "data.batch_size=32",
    "++data.verify=size",
)


def test_all_ones_without_task_bn_equals_equal_weight_through_the_trainer(compose):
    """Multi-source batches (one task per sample): GradSplit with R = all-ones and plain
    BatchNorm is equal-weight hard sharing, bit for bit, at every step."""
    runs = {}
    for name, algo in (
        ("gs", ["algorithm=gradsplit", "algorithm.relation=all_ones", "algorithm.task_bn=none"]),
        ("ew", ["algorithm=equal_weight"]),
    ):
        rec = ParamRecorder()
        summary = train(compose(*MULTI_SOURCE, *algo, "trainer.max_steps=4"), hooks=[rec])
        runs[name] = (rec.params, summary["final_metrics"])
    assert len(runs["gs"][0]) == 4
    assert all(torch.equal(a, b) for a, b in zip(runs["gs"][0], runs["ew"][0]))
    assert runs["gs"][1] == runs["ew"][1]


@pytest.mark.parametrize("mode", ["exact", "random_task"])
def test_fully_labelled_modes_train_and_evaluate(compose, mode):
    summary = train(
        compose(
            "algorithm=gradsplit",
            f"algorithm.mode={mode}",
            "model.blocks_per_stage=2",
            "trainer.max_steps=3",
            "trainer.accumulate_grad_batches=2",
        )
    )
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert set(summary["final_metrics"]) >= {"test/left/acc", "test/right/acc"}


def test_per_sample_mode_on_fully_labelled_data_names_the_fix(compose):
    with pytest.raises(ValueError, match="algorithm.mode=exact or random_task"):
        train(compose("algorithm=gradsplit", "trainer.max_steps=1"))


def test_lookahead_warm_up_fixes_a_relation_after_its_steps(compose):
    rec = ParamRecorder()
    cfg = compose(
        "algorithm=gradsplit",
        "algorithm.relation=lookahead",
        "algorithm.mode=random_task",
        "algorithm.lookahead_steps=3",
        "algorithm.lookahead_every=1",
        "trainer.max_steps=5",
        "trainer.precision=bf16",
    )
    train(cfg, hooks=[rec])
    r = rec.relation
    assert r is not None and r.diagonal().tolist() == [1.0, 1.0] and set(r.flatten().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("task_bn", ["chunk", "cut"])
def test_lookahead_measurement_leaves_the_training_trajectory_unchanged(compose, task_bn):
    """The look-ahead evaluates moved weights through ``functional_call``; none of them may stay
    in the model: while R is still all-ones the run equals plain all-ones routing, bit for bit."""
    runs = {}
    for name, relation in (
        ("ones", ["algorithm.relation=all_ones"]),
        (
            "lookahead",
            ["algorithm.relation=lookahead", "algorithm.lookahead_steps=10", "algorithm.lookahead_every=1"],
        ),
    ):
        rec = ParamRecorder()
        algo = ["algorithm=gradsplit", f"algorithm.task_bn={task_bn}", "algorithm.lookahead_lr=0.5"]
        algo += relation
        train(compose(*MULTI_SOURCE, *algo, "trainer.max_steps=3"), hooks=[rec])
        runs[name] = rec.params
    assert len(runs["ones"]) == 3
    assert all(torch.equal(a, b) for a, b in zip(runs["ones"], runs["lookahead"]))


def test_pairwise_table_file_sets_the_relation(compose, tmp_path):
    path = tmp_path / "relations.json"
    path.write_text(
        json.dumps(
            {"single": {"left": 0.9, "right": 0.8}, "pair": {"left|right": {"left": 0.95, "right": 0.7}}}
        )
    )
    rec = ParamRecorder()
    train(
        compose(
            "algorithm=gradsplit",
            "algorithm.relation=pairwise",
            f"algorithm.relation_file={path}",
            "algorithm.mode=random_task",
            "trainer.max_steps=2",
        ),
        hooks=[rec],
    )
    assert rec.relation.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_pairwise_table_runs_single_and_two_task_runs(data_root, tmp_path):
    from algorithms.gradsplit.pairwise import build_table

    seen = []

    def fake_train(cfg):  # records what each run trains on; metrics by hand
        tasks = list(cfg.algorithm.tasks)
        seen.append((tasks, list(cfg.data.train_sources), cfg.data.batch_size))
        acc = {("digit",): 0.9, ("digit", "garment"): 0.95}.get(tuple(tasks), 0.5)
        return {"final_metrics": {f"val/{t}/acc": acc for t in tasks}}

    base = [*MULTI_SOURCE, f"paths.data_root={data_root}", f"paths.run_root={tmp_path}"]
    table = build_table(base, steps=2, train_fn=fake_train)
    assert len(seen) == 4 + 6
    assert seen[0] == (["digit"], ["digit"], 8) and seen[4] == (
        ["digit", "garment"],
        ["digit", "garment"],
        16,
    )
    r = torch.tensor(table["relation"])
    assert r[0, 1] == 1 and r[1, 0] == 1 and r[0, 2] == 0  # digit gains with garment, loses with animal
