"""The phase engine: lengths, per-phase optimizers and schedules, growth, evaluation sets, resume, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tests.helpers.toy_phases  # noqa: F401 - registers toy_phases
from framework.hooks import Hook
from framework.phases import Phase, plan
from framework.run import train
from tests.helpers.dist_workers import PARITY, FinalWeights
from tests.helpers.distributed import run_workers
from tests.helpers.toy_phases import SETS, train_phases
from tests.test_trainer import Recorder


class PhaseLog(Hook):
    """Per step: phase, optimizer class, learning rate, parameter count, backbone and head snapshots."""

    def __init__(self):
        self.rows: list[dict] = []

    def before_step(self, trainer, step):
        opt = trainer.ctx.optimizers["main"]
        module = trainer.strategy.unwrap(trainer.model)
        self.rows.append({"step": step, "phase": trainer.ctx.phase, "opt": type(opt).__name__,
                          "lr": opt.param_groups[0]["lr"], "n_params": sum(p.numel() for p in module.parameters()),
                          "backbone": torch.cat([p.detach().flatten() for p in module.backbone.parameters()]).clone()})


def test_plan_gives_steps_then_shares_then_equal_parts_of_the_rest():
    p = plan([Phase("a", steps=3), Phase("b", share=0.5), Phase("c"), Phase("d")], max_steps=20)
    assert p.starts == (0, 3, 13, 16) and p.ends == (3, 13, 16, 20)
    assert plan(["x", "y", "z"], 10).ends == (3, 6, 10)  # plain names: even split, as before
    assert plan([Phase("stats", steps=0), Phase("train")], 5).ends == (0, 5)
    with pytest.raises(ValueError, match="unique"):
        plan(["a", "a"], 4)
    with pytest.raises(ValueError, match="steps or share"):
        Phase("a", steps=1, share=0.5)


def test_three_phases_get_their_own_lengths_optimizers_schedules_growth_and_trainable_sets(compose):
    log = PhaseLog()
    summary = train(compose("algorithm=toy_phases", "trainer.max_steps=100"), hooks=[log])
    rows = log.rows
    assert summary["steps"] == 13  # 4 + 6 + 3: declared lengths, not trainer.max_steps
    assert [r["phase"] for r in rows] == ["left"] * 4 + ["both"] * 6 + ["heads"] * 3
    assert [r["opt"] for r in rows] == ["SGD"] * 4 + ["Adam"] * 6 + ["SGD"] * 3
    # warm-up restarts in phase 1 (2 steps), Adam's cosine starts at its peak, phase 3 is constant
    assert rows[0]["lr"] == pytest.approx(0.025) and rows[1]["lr"] == pytest.approx(0.05)
    assert rows[4]["lr"] == pytest.approx(5e-4) and rows[9]["lr"] < rows[5]["lr"]
    assert [r["lr"] for r in rows[10:]] == pytest.approx([0.02] * 3)
    # the right head appears when phase 2 starts
    assert rows[3]["n_params"] == rows[0]["n_params"] < rows[4]["n_params"] == rows[12]["n_params"]
    assert "test/right/acc" in summary["final_metrics"]
    # phase 3 trains only the heads
    assert not torch.equal(rows[9]["backbone"], rows[10]["backbone"])
    assert torch.equal(rows[10]["backbone"], rows[12]["backbone"])


def test_phase_end_evaluation_writes_a_phase_by_set_matrix(compose):
    summary = train(compose("algorithm=toy_phases"))
    run = Path(summary["run_dir"])
    doc = json.loads((run / "eval_matrix.json").read_text())
    assert doc["phases"] == ["left", "both", "heads"] and doc["sets"] == list(SETS)
    for phase in doc["phases"]:
        row = doc["matrix"][phase]
        assert set(row) == set(SETS)
        assert 0.0 <= row["val"]["left/acc"] <= 1.0
    assert doc["matrix"]["left"]["val"]["right/acc"] is None  # no right head yet: no value, not NaN
    assert doc["matrix"]["both"]["val"]["right/acc"] is not None
    # the class subsets partition val: their accuracies average to val's, weighted by size
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    phase_lines = [x for x in lines if any(k.startswith("phase/left/") for k in x)]
    assert phase_lines and "phase/left/low_left/left/acc" in phase_lines[0]
    low, high, val = (doc["matrix"]["heads"][s]["left/acc"] for s in ("low_left", "high_left", "val"))
    assert min(low, high) <= val <= max(low, high)


def test_resume_inside_phase_two_after_growth_matches_the_uninterrupted_run(compose, tmp_path):
    full = Recorder()
    train(compose("algorithm=toy_phases", f"paths.run_dir={tmp_path / 'full'}"), hooks=[full])

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == 7:  # phase 'both' runs steps 4..9; its head is 3 steps old
                raise KeyboardInterrupt

    first, second = Recorder(), Recorder()
    with pytest.raises(KeyboardInterrupt):
        train(compose("algorithm=toy_phases", "trainer.ckpt_every=7", f"paths.run_dir={tmp_path / 'split'}"),
              hooks=[first, StopAt()])
    summary = train(compose("algorithm=toy_phases", f"paths.run_dir={tmp_path / 'split'}", "resume=auto"),
                    hooks=[second])
    assert summary["resumed_from"] == 7
    assert first.losses + second.losses == full.losses  # every per-step loss ==
    assert torch.equal(second.params[-1], full.params[-1])
    doc = json.loads((tmp_path / "split" / "eval_matrix.json").read_text())
    assert doc["phases"] == ["left", "both", "heads"]  # phase 1's row survived the restart
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in x]
    assert steps == sorted(set(steps))  # each step logged once


@pytest.mark.distributed
def test_two_process_ddp_matches_one_process_with_the_global_batch(data_root, tmp_path):
    common = [*PARITY, "trainer.max_steps=13", "logger.progress=off"]
    hook = FinalWeights()
    from tests.helpers.dist_workers import compose as dist_compose

    train(dist_compose(data_root, "algorithm=toy_phases", *common, "data.batch_size=32",
                       f"paths.run_dir={tmp_path / 'one'}"), hooks=[hook])
    results = run_workers(train_phases, world_size=2, timeout=300,
                          args=(str(data_root), [*common, "strategy=ddp", "data.batch_size=16",
                                                 f"paths.run_dir={tmp_path / 'two'}"]))
    got = {k: torch.as_tensor(v) for k, v in results[0]["weights"].items()}
    assert got.keys() == hook.weights.keys() and "heads.right.weight" in got
    # phase 2 uses Adam, which divides by sqrt(v): where a gradient is ~0 it magnifies the float noise
    # of a different summation order, so its lr stays small (5e-4 gives ~1e-7 here, 2e-3 gave 3e-6)
    for k in got:
        torch.testing.assert_close(got[k], hook.weights[k], rtol=1e-6, atol=1e-6, msg=k)


def test_an_evaluation_set_from_the_config_restricts_rows_and_names_its_metrics(compose):
    select = ["++trainer.eval_sets.odd_left.split=val", "++trainer.eval_sets.odd_left.select.left=[1,3,5,7,9]"]
    seen = {}

    class Peek(Hook):
        def after_eval(self, trainer, name, metrics):
            seen[name] = metrics
            if name == "odd_left":  # the same weights on all of val, through ctx.evaluate
                seen["val"] = trainer.ctx.evaluate("val")

    summary = train(compose("trainer.max_steps=4", "trainer.eval_split=odd_left", *select), hooks=[Peek()])
    assert "odd_left/left/acc" in summary["final_metrics"] and "test/left/acc" in summary["final_metrics"]
    assert seen["odd_left"]["odd_left/left/acc"] != seen["val"]["val/left/acc"]
    with pytest.raises(ValueError, match="not 'module:Class'"):
        train(compose("trainer.callbacks=[no_colon_here]"))


def test_selection_mask_keeps_rows_whose_label_or_attribute_is_listed():
    from framework.evalsets import selection_mask

    batch = {"image": torch.zeros(5, 1), "labels": {"digit": torch.tensor([0, 1, 2, 3, 4])},
             "attrs": {"lighting": torch.tensor([0, 0, 1, 1, 2])}, "domain": torch.tensor([3, 3, 3, 4, 4]), "mask": torch.tensor([1, 1, 1, 1, 0]).bool()}
    assert selection_mask(batch, {"digit": (1, 3, 4)}).tolist() == [False, True, False, True, False]
    assert selection_mask(batch, {"digit": (1, 2, 3), "lighting": (1,)}).tolist() == [False, False, True, True, False]
    assert selection_mask(batch, {"domain": (4,)}).tolist() == [False, False, False, True, False]  # padding stays out
    with pytest.raises(KeyError, match="neither a task nor an attribute"):
        selection_mask(batch, {"colour": (1,)})


def test_ctx_batches_visit_every_sample_of_a_split_once(compose):
    seen = {}

    class Count(Hook):
        def before_fit(self, trainer):
            ids = [b["id"][b["mask"]] for b in trainer.ctx.batches("val")]
            seen["ids"] = torch.cat(ids).tolist()

    train(compose("trainer.max_steps=1"), hooks=[Count()])
    assert len(seen["ids"]) == len(set(seen["ids"])) > 0
