"""DYMU's stages as phases of one run: freezing, growth, affinity, resume, inference control, PHN-BN."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from framework.hooks import Hook
from framework.run import train
from tests.helpers.dymu_workers import TINY
from tests.test_trainer import Recorder


def snapshot(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()]) if module is not None else None


class StageLog(Hook):
    """Per step: the phase and snapshots of the anchor (weights, BatchNorm statistics) and hypernetworks."""

    def __init__(self):
        self.rows: list[dict] = []

    def before_step(self, trainer, step):
        net = trainer.strategy.unwrap(trainer.model)
        self.rows.append({
            "phase": trainer.ctx.phase,
            "streams": [snapshot(s) for s in net.streams], "heads": snapshot(net.heads),
            "stats": torch.cat([b.flatten().clone() for n, b in net.named_buffers() if "running" in n]),
            "edge": snapshot(getattr(net, "edge_hyper", None)), "weight": snapshot(getattr(net, "weight_hyper", None)),
        })

    def after_fit(self, trainer, summary):
        self.net = trainer.strategy.unwrap(trainer.model)
        self.algorithm = trainer.algorithm


@pytest.fixture(scope="module")
def dymu_run(data_root, tmp_path_factory):
    """One tiny run through the four stages (shared by the tests below)."""
    from tests.helpers.dist_workers import compose

    log, record = StageLog(), Recorder()
    run_dir = tmp_path_factory.mktemp("dymu") / "run"
    summary = train(compose(data_root, *TINY, f"paths.run_dir={run_dir}", "algorithm.phase_eval=[val]"),
                    hooks=[log, record])
    log.record = record
    return summary, log, run_dir


def test_stages_run_as_phases_and_each_trains_only_its_own_parameters(dymu_run):
    summary, log, run_dir = dymu_run
    rows = log.rows
    assert [r["phase"] for r in rows] == ["pretrain"] * 4 + ["anchor"] * 4 + ["edge"] * 8 + ["weight"] * 8
    first = rows[0]
    pre_end, anchor_start = rows[3], rows[4]
    # pretrain: one stream (stream 0) trains for every task; the others wait
    assert not torch.equal(first["streams"][0], pre_end["streams"][0])
    assert all(torch.equal(first["streams"][j], pre_end["streams"][j]) for j in (1, 2))
    # anchor: every stream starts as a copy of the pretrained one, then trains on its own task
    assert all(torch.equal(anchor_start["streams"][j], anchor_start["streams"][0]) for j in (1, 2))
    edge_start, weight_start, last = rows[8], rows[16], rows[-1]
    assert not torch.equal(edge_start["streams"][1], anchor_start["streams"][1])
    # edge: only the edge hypernetwork; the anchor's weights and BatchNorm statistics stay fixed
    for key in ("heads", "stats"):
        assert torch.equal(edge_start[key], last[key]), key
    assert all(torch.equal(edge_start["streams"][j], last["streams"][j]) for j in range(3))
    assert edge_start["weight"] is None and not torch.equal(edge_start["edge"], weight_start["edge"])
    # weight: only the weight hypernetwork (its heads start at zero: the anchor's own BatchNorm)
    assert torch.equal(weight_start["edge"], last["edge"])
    assert not torch.equal(weight_start["weight"], snapshot(log.net.weight_hyper))
    assert all(p.grad is None for n, p in log.net.named_parameters() if not n.startswith("weight_hyper"))
    assert summary["steps"] == 24


def test_affinity_and_loss_scales_are_computed_once_and_saved(dymu_run):
    summary, log, run_dir = dymu_run
    doc = json.loads((run_dir / "affinity.json").read_text())
    assert doc["tasks"] == ["seg", "depth", "edge"]
    a = torch.tensor(doc["affinity"])
    assert a.shape == (3, 3) and torch.allclose(a.diagonal(), torch.ones(3)) and (a >= 0).all() and (a <= 1).all()
    assert doc["loss_scales"] == pytest.approx([1 / v for v in doc["val_loss"]])
    state = log.algorithm.state_dict()
    assert torch.equal(state["affinity"], a.float()) and state["scales"] == doc["loss_scales"]
    matrix = json.loads((run_dir / "eval_matrix.json").read_text())
    assert matrix["phases"] == ["pretrain", "anchor", "edge", "weight"]
    assert matrix["matrix"]["pretrain"]["val"]["tree/nodes"] == 3  # hard sharing: one stream
    assert matrix["matrix"]["anchor"]["val"]["tree/nodes"] == 9  # the anchor: every node


def test_eval_derives_the_tree_for_a_preference_and_budget_and_reports_its_cost(dymu_run, caplog):
    from algorithms.dymu.anchor import cost_table
    from framework.evaluate import evaluate_checkpoint

    summary, log, run_dir = dymu_run
    caplog.set_level(logging.INFO, logger="medley")
    got = evaluate_checkpoint(str(run_dir), ["val"], ["algorithm.preference=[1,0,0]", "algorithm.budget=1.0"])
    m = got["metrics"]
    assert "dymu derived tree for r=[1.0, 0.0, 0.0] c=1.00" in caplog.text and "layer 0:" in caplog.text
    net = log.net
    tree = net.derive(torch.tensor([1.0, 0.0, 0.0]), 1.0)
    cost = cost_table(net, (3, 64, 64)).cost(*tree)
    assert m["val/tree/nodes"] == cost["nodes"] and m["val/tree/params"] == cost["params"]
    assert m["val/tree/mflops"] == pytest.approx(cost["flops"] / 1e6)
    assert {"val/seg/miou", "val/depth/acc", "val/edge/f1", "val/control/uniformity"} <= set(m)
    anchor = evaluate_checkpoint(str(run_dir), ["val"], ["algorithm.eval_tree=anchor", "algorithm.modulate=false"])
    assert anchor["metrics"]["val/tree/nodes"] == 9
    with pytest.raises(ValueError, match="algorithm.preference"):
        evaluate_checkpoint(str(run_dir), ["val"], ["algorithm.preference=[1,0]"])


def test_resume_inside_the_edge_phase_matches_the_uninterrupted_run(data_root, tmp_path, dymu_run):
    from tests.helpers.dist_workers import compose

    full = dymu_run[1].record  # the uninterrupted run (its phase-end evaluations do not touch the training state)

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == 12:  # inside 'edge' (steps 8..15), after the hypernetwork grew
                raise KeyboardInterrupt

    first, second = Recorder(), Recorder()
    with pytest.raises(KeyboardInterrupt):
        train(compose(data_root, *TINY, "trainer.ckpt_every=12", f"paths.run_dir={tmp_path / 'split'}"),
              hooks=[first, StopAt()])
    summary = train(compose(data_root, *TINY, f"paths.run_dir={tmp_path / 'split'}", "resume=auto"),
                    hooks=[second])
    assert summary["resumed_from"] == 12
    assert first.losses + second.losses == full.losses
    assert torch.equal(second.params[-1], full.params[-1])


def test_phn_bn_modulates_the_shared_stream_at_a_constant_cost(data_root, tmp_path):
    from framework.evaluate import evaluate_checkpoint
    from tests.helpers.dist_workers import compose

    log = StageLog()
    run_dir = tmp_path / "phn"
    train(compose(data_root, *TINY, "algorithm=phn_bn", f"paths.run_dir={run_dir}"), hooks=[log])
    assert [r["phase"] for r in log.rows] == ["pretrain"] * 4 + ["weight"] * 20  # 0.1667 · 24 = 4
    assert sorted(log.net.weight_hyper.keys) == [(0, 0), (1, 0), (2, 0)]  # stream 0's BatchNorms only
    assert not hasattr(log.net, "edge_hyper")
    costs = [evaluate_checkpoint(str(run_dir), ["val"], [f"algorithm.preference={p}", f"algorithm.budget={c}"])
             for p, c in (("[1,0,0]", 0.0), ("[0.2,0.3,0.5]", 1.0))]
    assert costs[0]["metrics"]["val/tree/mflops"] == costs[1]["metrics"]["val/tree/mflops"]
    assert costs[0]["metrics"]["val/tree/nodes"] == 3
    assert costs[0]["metrics"]["val/seg/loss"] != costs[1]["metrics"]["val/seg/loss"]  # the preference acts


def test_config_errors_name_the_key():
    from algorithms.dymu import DymuConfig
    from algorithms.dymu.method import Dymu

    with pytest.raises(ValueError, match="algorithm.variant='nope'"):
        Dymu(DymuConfig(variant="nope"))
    with pytest.raises(ValueError, match="pretrain_share"):
        Dymu(DymuConfig(pretrain_share=0.5, anchor_share=0.5, edge_share=0.5)).phases()


def test_medley_report_draws_the_accuracy_flops_trade_off_and_the_trees(dymu_run, tmp_path):
    from framework.report import write_report

    _, _, run_dir = dymu_run
    written = {p.name: p for p in write_report(str(run_dir), tmp_path / "report")}
    assert {"dymu_accuracy_flops.svg", "dymu_trees.txt"} <= set(written)
    assert any(name.startswith("train") and name.endswith(".png") for name in written)  # the curves
    svg = written["dymu_accuracy_flops.svg"].read_text()
    assert svg.count("<circle") == 40 and "c=0" in svg and "c=1" in svg  # 20 preferences x 2 budgets
    trees = written["dymu_trees.txt"].read_text()
    assert "uniform, c=0:" in trees and "skewed seg, c=1:" in trees and "layer 0:" in trees
