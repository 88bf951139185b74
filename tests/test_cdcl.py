"""Cross-domain continual learning (algorithm=cdcl): the Mahalanobis head, growth, distillation,
the moving average, experiences as phases (resume, DDP) and the continual metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import algorithms.cdcl  # noqa: F401 - registers cdcl where the entry point is not installed
from algorithms.cdcl.heads import LinearHead, MahalanobisHead
from algorithms.cdcl.model import ContinualNet
from algorithms.cdcl.mov import distillation, ema_, smooth_, snapshot
from algorithms.cdcl.replay import Reservoir
from framework.data.sources import SourceUnavailable
from framework.metrics.continual import accuracy_after_each, forgetting, summarize
from framework.run import train
from tests.helpers.cdcl_workers import SMALL, Losses, ddp_interrupt_and_resume
from tests.helpers.dist_workers import PARITY, StopAfterCheckpoint
from tests.helpers.distributed import run_workers


@pytest.fixture
def digits(compose):
    """``compose`` on the small digit-domain sequence; skips where a data source is not installed."""
    def _compose(*overrides: str):
        return compose(*SMALL, *overrides, small=False)

    return _compose


class Flat(nn.Module):
    """A one-layer backbone with the ``out_dim`` a ContinualNet reads."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layer, self.out_dim = nn.Linear(in_dim, out_dim), out_dim

    def forward(self, x):
        return self.layer(x)


def run(cfg, hooks=()):
    try:
        return train(cfg, hooks=list(hooks))
    except SourceUnavailable as exc:
        pytest.skip(f"digit_domains: {exc}")


# ------------------------------------------------------------------------------ the head
def test_msl_logits_equal_the_explicit_quadratic_form_on_random_tensors():
    torch.manual_seed(0)
    head = MahalanobisHead(dim=6, rank=4, sign=-1, temperature=2.0)
    head.expand(3)
    head.expand(2)
    with torch.no_grad():
        for mu in head.mu:
            mu.normal_()
    f = torch.randn(5, 6)
    mu, factor = torch.cat(list(head.mu)), torch.cat(list(head.factor))
    expected = torch.empty(5, 5)
    for b in range(5):
        for c in range(5):
            d = f[b] - mu[c]
            expected[b, c] = d @ factor[c].T @ factor[c] @ d  # (f - mu)^T L^T L (f - mu)
    torch.testing.assert_close(head.distances(f), expected)
    torch.testing.assert_close(head(f), -expected / 2.0)
    metric = factor[0].T @ factor[0]
    assert torch.linalg.eigvalsh(metric).min() > -1e-5  # PSD by construction


@pytest.mark.parametrize("head", [MahalanobisHead(8, 4), LinearHead(8)], ids=["msl", "linear"])
def test_expanding_the_head_leaves_old_rows_bit_identical_and_old_logits_unchanged(head):
    torch.manual_seed(0)
    net = ContinualNet(Flat(12, 8), 0, head)
    net.add_classes([3, 7])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 12)
    old_logits = net(x)
    assert net.add_classes([7, 1, 5]) == [1, 5]  # 7 is not new
    after = net.state_dict()
    for k, v in before.items():
        if k != "classes":
            assert torch.equal(after[k], v), k
    assert net.classes.tolist() == [3, 7, 1, 5]
    torch.testing.assert_close(net(x)[:, :2], old_logits)  # a wider matmul may sum in another order
    assert net.columns(torch.tensor([5, 3, -1, 1])).tolist() == [3, 0, -1, 2]


# ------------------------------------------------------------------ distillation and Mov
def test_one_parameter_smoothing_step_with_sgd_equals_an_sgd_step_at_the_scaled_lr():
    torch.manual_seed(0)
    a = nn.Linear(5, 3)
    b = nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    x, lr, gamma = torch.randn(7, 5), 0.1, 0.96
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=lr), torch.optim.SGD(b.parameters(), lr=lr * (1 - gamma))
    before = snapshot(a)
    a(x).pow(2).sum().backward()
    opt_a.step()
    smooth_(before, gamma)
    b(x).pow(2).sum().backward()
    opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_ema_teacher_follows_the_student_on_the_shared_parameters():
    torch.manual_seed(0)
    student = ContinualNet(Flat(4, 3), 0, LinearHead(3))
    student.add_classes([0, 1])
    student.freeze_teacher()
    teacher = student.teacher
    student.add_classes([2])
    old = {k: v.clone() for k, v in teacher.named_parameters()}
    with torch.no_grad():
        for name, p in student.named_parameters():
            if not name.startswith("teacher."):
                p.add_(1.0)
    ema_(teacher, student, alpha=0.75)
    for name, p in teacher.named_parameters():
        torch.testing.assert_close(p, old[name] + 0.25)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_is_the_soft_cross_entropy_over_the_old_classes():
    s, t = torch.randn(6, 5), torch.randn(6, 3)
    ref = -(torch.softmax(t / 2, -1) * torch.log_softmax(s[:, :3] / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(distillation(s, t, temperature=2.0), ref)


def test_reservoir_keeps_capacity_rows_and_restores_from_its_state():
    buf = Reservoir(capacity=5, seed=0)
    for step in range(4):
        buf.add(torch.full((3, 1), float(step)), torch.arange(3) + 3 * step, step)
    assert len(buf) == 5 and buf.seen == 12
    copy = Reservoir(5, 0)
    copy.load_state_dict(buf.state_dict())
    assert torch.equal(copy.sample(4, 9, 0)[1], buf.sample(4, 9, 0)[1])


# ----------------------------------------------------------------------- continual metrics
def test_average_accuracy_and_forgetting_of_a_known_matrix():
    a = [[0.9, None, None], [0.5, 0.8, None], [0.3, 0.6, 0.7]]
    assert accuracy_after_each(a) == pytest.approx([0.9, 0.65, 1.6 / 3])
    assert forgetting(a) == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    doc = {"phases": ["p0", "p1", "p2"],
           "matrix": {f"p{t}": {"test": {f"acc_exp{j}": a[t][j] for j in range(3)}} for t in range(3)}}
    out = summarize(doc, {"seen": ("test", "acc_exp{}"), "absent": ("nothing", "acc_exp{}")})
    assert out["seen"]["final_acc"] == pytest.approx(1.6 / 3) and "absent" not in out
    assert out["seen"]["avg_acc"] == pytest.approx((0.9 + 0.65 + 1.6 / 3) / 3)


# ---------------------------------------------------------------- runs on the phase engine
def test_each_experience_trains_on_full_batches_of_its_own_digits_and_reports_the_matrix(digits, monkeypatch):
    from algorithms.cdcl.method import CDCL

    seen, original = [], CDCL.training_step

    def spy(self, model, batch, ctx):
        seen.append((ctx.phase, len(batch["image"]), set(batch["labels"]["digit"].tolist())))
        return original(self, model, batch, ctx)

    monkeypatch.setattr(CDCL, "training_step", spy)
    summary = run(digits("algorithm=cdcl_finetune", "algorithm.steps_per_experience=2", "trainer.max_steps=10"))
    assert [p for p, _, _ in seen] == [f"exp{i}" for i in range(5) for _ in range(2)]
    for phase, size, labels in seen:  # data.phase_classes: 32 rows, all of the experience's two digits
        i = int(phase[3:])
        assert size == 32 and labels <= {2 * i, 2 * i + 1}
    doc = json.loads((Path(summary["run_dir"]) / "continual.json").read_text())
    assert set(doc) >= {"seen", "heldout", "unseen"}
    assert doc["seen"]["matrix"][0][1] is None and doc["seen"]["matrix"][4][0] is not None
    assert doc["heldout"]["matrix"][4][4] is not None  # mnist_m's test rows, never trained on
    assert "continual/heldout/final_acc" in summary["final_metrics"]


def test_phase_classes_name_the_offending_key(data_root):
    from framework.data.builtin import DigitDomainsConfig
    from framework.data.module import DataModule

    try:
        data = DataModule(DigitDomainsConfig(limit=256, verify="size", phase_classes={
            "exp0": {"digit": [1, 10]}, "exp1": {"colour": [0]}}), data_root, seed=0)
    except SourceUnavailable as exc:
        pytest.skip(f"digit_domains: {exc}")
    data.set_phase("other")  # not listed: every class
    assert data.classes == {}
    with pytest.raises(ValueError, match=r"data.phase_classes.exp0.digit: \[1, 10\] must be .* in \[0, 9\]"):
        data.set_phase("exp0")
    with pytest.raises(ValueError, match="data.phase_classes.exp1: 'colour' is not a task of digit_domains"):
        data.set_phase("exp1")


def test_forgetting_of_fine_tuning_exceeds_distillation_with_moving_average(digits):
    results = {}
    for name in ("cdcl_finetune", "cdcl_linear_mov"):
        summary = run(digits(f"algorithm={name}", "algorithm.steps_per_experience=15", "trainer.max_steps=75",
                             "algorithm.unseen_split=", "data.holdout_domain="))
        results[name] = summary["final_metrics"]["continual/seen/forgetting"]
    assert results["cdcl_finetune"] > 0.5
    assert results["cdcl_finetune"] > results["cdcl_linear_mov"] + 0.2


def test_resume_inside_an_experience_after_growth_matches_the_uninterrupted_run(digits, tmp_path):
    common = ["algorithm.steps_per_experience=3", "trainer.max_steps=15", "algorithm.buffer_size=8",
              "algorithm.replay_batch=4", "algorithm.unseen_split="]  # MSL + KD + smoothing, and a buffer to restore
    full = Losses()
    run(digits(*common, f"paths.run_dir={tmp_path / 'full'}"), hooks=[full])
    first, second = Losses(), Losses()
    with pytest.raises(KeyboardInterrupt):  # step 5: inside exp1, two steps after the teacher and new rows
        run(digits(*common, "trainer.ckpt_every=5", f"paths.run_dir={tmp_path / 'split'}"),
            hooks=[first, StopAfterCheckpoint(5)])
    summary = run(digits(*common, f"paths.run_dir={tmp_path / 'split'}", "resume=auto"), hooks=[second])
    assert summary["resumed_from"] == 5
    assert first.losses + second.losses == full.losses
    assert "kd" in full.losses[4]
    assert full.final.keys() == second.final.keys() and any(k.startswith("teacher.") for k in full.final)
    for k in full.final:
        assert torch.equal(full.final[k], second.final[k]), k
    doc = json.loads((tmp_path / "split" / "eval_matrix.json").read_text())
    assert doc["phases"] == [f"exp{i}" for i in range(5)]  # exp0's row survived the restart


@pytest.mark.distributed
def test_two_process_ddp_resumes_inside_the_sequence_like_the_uninterrupted_run(data_root, tmp_path):
    parity = [o for o in PARITY if not o.startswith(("data.order", "trainer.max_steps", "model.widths"))]
    overrides = [*SMALL, *parity, "strategy=ddp", "data.batch_size=16", "algorithm.steps_per_experience=2",
                 "trainer.max_steps=10", "trainer.ckpt_every=3", "algorithm.unseen_split="]  # data.order stays local
    try:
        results = run_workers(ddp_interrupt_and_resume, world_size=2, timeout=300,
                              args=(str(data_root), str(tmp_path), overrides))
    except RuntimeError as exc:
        if "SourceUnavailable" in str(exc):
            pytest.skip(f"digit_domains: {exc}")
        raise
    for r in results:
        assert r["split_losses"] == r["full_losses"]
        assert r["summary"]["resumed_from"] == 3  # inside exp1, one step after the teacher and new rows
        for k, v in r["full"].items():
            assert (r["resumed"][k] == v).all(), k
    for k, v in results[0]["full"].items():  # the ranks agree: grown rows, teacher, smoothing
        assert (results[1]["full"][k] == v).all(), k
