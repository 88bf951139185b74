"""UniSeg end to end on seg_label_shift: two phases with their own lengths and optimizers, the
statistics pass between them, the relations in the run directory and the checkpoint, and resume
on either side of the stage boundary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import algorithms.uniseg  # noqa: F401 - registers uniseg
from framework.hooks import Hook
from framework.run import train
from tests.test_trainer import Recorder

# 8 steps: stage1 = 6 (SGD from optim.*), stage2 = 2 (AdamW from algorithm.stage2_*)
TINY = ("experiment=uniseg_label_shift", "data.limit=64", "data.batch_size=16", "data.eval_batch_size=192",
        "model.widths=[8,16]", "trainer.max_steps=8", "trainer.log_every=1", "algorithm.phase_eval_sets=[val]",
        "optim.warmup_steps=0")


class PhaseOptimizers(Hook):
    def __init__(self):
        self.rows: list[tuple[str, str, float]] = []

    def before_step(self, trainer, step):
        opt = trainer.ctx.optimizers["main"]
        self.rows.append((trainer.ctx.phase, type(opt).__name__, opt.param_groups[0]["lr"]))


@pytest.fixture
def tiny(compose):
    return lambda *extra: compose(*TINY, *extra, small=False)


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> tuple[Recorder, PhaseOptimizers, Path]:
    """One two-stage run, shared by the tests below (the reference of the resume tests)."""
    from framework.compose import compose as compose_config

    run = tmp_path_factory.mktemp("uniseg") / "full"
    full, log = Recorder(), PhaseOptimizers()
    train(compose_config([f"paths.data_root={data_root}", "logger.progress=off", "logger.tensorboard=false", *TINY,
                          f"paths.run_dir={run}"]), hooks=[full, log])
    return full, log, run


def test_two_stages_train_with_their_own_optimizers_and_leave_the_relations_behind(uninterrupted):
    _, log, run = uninterrupted
    assert [r[:2] for r in log.rows] == [("stage1", "SGD")] * 6 + [("stage2", "AdamW")] * 2
    assert log.rows[6][2] == pytest.approx(1e-3)  # stage 2's schedule starts at its own peak
    doc = json.loads((run / "relations.json").read_text())
    assert doc["datasets"] == ["fine", "coarse", "parts", "unseen"] and len(doc["classes"]) == 29
    assert (run / "relations.md").read_text().startswith("# Class relations")
    # every labelled pixel of the training splits was counted once: 3 splits x 64 images x 48 x 48
    assert sum(map(sum, doc["pixels"])) == 3 * 64 * 48 * 48
    state = torch.load(max((run / "checkpoints").glob("step-*.pt")), weights_only=True)
    relations = state["algorithm"]["relations"]
    assert relations["targets"].shape == (4, 29, 29) and relations["targets"].dtype == torch.int8
    assert relations["targets"].tolist() == _targets_from(doc)
    matrix = json.loads((run / "eval_matrix.json").read_text())
    assert matrix["phases"] == ["stage1", "stage2"]
    final = json.loads((run / "summary.json").read_text())["final_metrics"]
    for key in ("test/seg/miou_fine", "test/seg/miou_coarse", "test/seg/miou_parts", "unseen/seg/miou_unseen",
                "test/seg/conflict_iou_digit", "test/seg/conflict_p_digit"):
        assert 0.0 <= final[key] <= 1.0, key


def _targets_from(doc: dict) -> list:
    """The checkpoint's target matrix rebuilt from relations.json (1: own or related, 0: in the dataset's space)."""
    from algorithms.uniseg.labels import LabelSpace
    from framework.data.builtin.seg_label_shift import LABEL_SPACES, UNIFIED

    space = LabelSpace.from_manifest({"datasets": doc["datasets"], "unseen_datasets": ["unseen"],
                                      "label_spaces": LABEL_SPACES, "unified": UNIFIED})
    mask = space.class_mask()
    names = doc["classes"]
    out = [[[1 if j == c else (0 if mask[d, j] else -1) for j in range(len(names))] for c in range(len(names))]
           for d in range(len(doc["datasets"]))]
    for r in doc["relations"]:
        d, c = doc["datasets"].index(r["dataset"]), names.index(r["class"])
        for name in r["related"]:
            out[d][c][names.index(name)] = 1
    return out


@pytest.mark.parametrize("stop_at", [6, 7], ids=["last_stage1_step", "inside_stage2"])
def test_resume_on_either_side_of_the_stage_boundary_matches_the_uninterrupted_run(tiny, tmp_path, stop_at,
                                                                                   uninterrupted):
    full, _, full_dir = uninterrupted

    class StopAt(Hook):
        def after_checkpoint(self, trainer, path):
            if trainer.ctx.global_step == stop_at:
                raise KeyboardInterrupt

    first, second = Recorder(), Recorder()
    with pytest.raises(KeyboardInterrupt):
        train(tiny(f"trainer.ckpt_every={stop_at}", f"paths.run_dir={tmp_path / 'split'}"), hooks=[first, StopAt()])
    summary = train(tiny(f"paths.run_dir={tmp_path / 'split'}", "resume=auto"), hooks=[second])
    assert summary["resumed_from"] == stop_at
    assert first.losses + second.losses == full.losses
    assert torch.equal(second.params[-1], full.params[-1])
    kept = json.loads((tmp_path / "split" / "relations.json").read_text())
    assert kept == json.loads((full_dir / "relations.json").read_text())


def test_baselines_are_one_phase_runs_of_the_same_model(tiny, tmp_path):
    shapes = {}
    for arm in ("uniseg_ce", "uniseg_bce", "uniseg_bce_null"):
        log = PhaseOptimizers()
        summary = train(tiny(f"algorithm={arm}", "trainer.max_steps=2", f"paths.run_dir={tmp_path / arm}"),
                        hooks=[log])
        assert {r[0] for r in log.rows} == {"stage1"} and summary["steps"] == 2
        assert not (Path(summary["run_dir"]) / "relations.json").exists()
        state = torch.load(Path(summary["run_dir"]) / "checkpoints" / "step-00000002.pt", weights_only=True)
        shapes[arm] = {k: tuple(v.shape) for k, v in state["model"].items()}
    assert shapes["uniseg_ce"] == shapes["uniseg_bce"] == shapes["uniseg_bce_null"]
