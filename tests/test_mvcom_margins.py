"""MvCoM's margin model and meta step in isolation: exact reduction to CosFace/ArcFace, the
centring and bound of the table, the class-level terms, and the sign of one meta step."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from algorithms._face.heads import MarginHead, margin_loss
from algorithms.mvcom.margins import MarginTable, center_and_bound, inverse_frequency_weights, ldam_margins
from algorithms.mvcom.meta import MetaSettings, factor_levels, meta_objective, regress_step, table_step
from tests.helpers.mvcom_workers import CLASSES, batches, tiny_setup


def _table(base=0.35, kind_min=0.05, kind_max=0.7, **kw) -> MarginTable:
    freq = torch.tensor([[8.0, 1.0, 1.0], [9.0, 1.0, 0.0]])
    return MarginTable([3, 2], freq, torch.full((5,), base), torch.ones(5), base, kind_min, kind_max, **kw)


def test_zero_table_gives_exactly_the_cosface_logits_and_loss():
    torch.manual_seed(0)
    head, table = MarginHead(8, 5, scale=64.0, margin=0.35), _table()
    emb, y = torch.randn(16, 8), torch.randint(0, 5, (16,))
    levels = torch.randint(-1, 2, (16, 2))
    margin, weight = table(levels, y)
    logits = head(emb, y, margin)
    assert torch.equal(logits, head(emb, y))  # the scalar-margin CosFace head
    assert torch.equal(weight, torch.ones(16))
    loss = (weight * margin_loss(logits, y, reduction="none")).mean()
    assert torch.equal(loss, margin_loss(head(emb, y), y))


def test_per_sample_arcface_equals_scalar_arcface_when_every_margin_is_equal():
    torch.manual_seed(1)
    head = MarginHead(8, 5, scale=64.0, margin=0.5, kind="arcface")
    emb, y = torch.randn(32, 8), torch.randint(0, 5, (32,))
    emb[0] = head.weight[y[0]].detach() * -3  # θ near π: the monotone fallback branch
    table = _table(base=0.5, kind_min=0.2, kind_max=0.8)
    margin, _ = table(torch.zeros(32, 2, dtype=torch.long), y)
    torch.testing.assert_close(head(emb, y, margin), head(emb, y), rtol=0, atol=1e-6)


def test_nonzero_entries_move_only_the_target_logit_of_their_level():
    torch.manual_seed(2)
    head, table = MarginHead(8, 5, scale=16.0, margin=0.35), _table()
    with torch.no_grad():
        table.phi[0, 2] = 0.1
    emb, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    levels = torch.tensor([[2, 0], [0, 0], [-1, 1], [2, -1]])
    margin, _ = table(levels, y)
    torch.testing.assert_close(margin, torch.tensor([0.45, 0.35, 0.35, 0.45]))
    diff = (head(emb, y, margin) - head(emb, y)).abs() > 0
    assert diff.sum() == 2 and diff[0, 0] and diff[3, 3]


@pytest.mark.parametrize("bound,center", [(0.15, True), (0.0, True), (0.15, False)])
def test_projection_centres_and_bounds_the_table(bound, center):
    g = torch.Generator().manual_seed(3)
    table = _table(bound=bound, center=center)
    for _ in range(20):
        with torch.no_grad():
            table.phi.add_(torch.randn(table.phi.shape, generator=g) * 0.3)
        table.project_()
        if center:
            assert table.weighted_means().abs().max() < 1e-6
        if bound:
            assert table.phi.abs().max() <= bound + 1e-7
        assert table.phi[1, 2] == 0  # occlusion has no third level


def test_centre_and_bound_keeps_a_feasible_row_unchanged():
    row, freq = torch.tensor([-0.01, 0.05, 0.04]), torch.tensor([0.9, 0.05, 0.05])
    row = row - (freq * row).sum()
    torch.testing.assert_close(center_and_bound(row, freq, 0.15, True), row, atol=1e-7, rtol=0)


def test_centring_holds_after_every_meta_update():
    net, table = tiny_setup()
    opt = torch.optim.Adam(table.parameters(), lr=0.05)
    for step in range(4):
        batch, meta = batches(step)
        levels = factor_levels(batch, ["blur", "occlusion"])
        table_step(net, table, batch, levels, meta, factor_levels(meta, ["blur", "occlusion"]),
                   MetaSettings(alpha=0.1))
        assert table.phi.grad is not None and table.phi.grad.abs().sum() > 0
        opt.step()
        opt.zero_grad(set_to_none=True)
        table.project_()
        assert table.weighted_means().abs().max() < 1e-6
    assert table.phi.abs().max() > 1e-3


def test_class_terms_keep_their_sample_mean():
    counts = torch.tensor([20.0, 5.0, 1.0])
    m = ldam_margins(counts, 0.35, 0.25)
    assert m[2] > m[1] > m[0]  # rarer classes get larger margins
    assert math.isclose(float((m * counts).sum() / counts.sum()), 0.35, rel_tol=1e-6)
    w = inverse_frequency_weights(counts)
    assert math.isclose(float((w * counts).sum() / counts.sum()), 1.0, rel_tol=1e-6)


def test_loss_weight_mode_keeps_the_margin_and_scales_the_loss():
    table = _table(apply="loss_weight")
    with torch.no_grad():
        table.phi[0] = torch.tensor([0.0, 0.07, 0.0])
    margin, weight = table(torch.tensor([[1, 0], [0, 0]]), torch.tensor([0, 1]))
    torch.testing.assert_close(margin, torch.tensor([0.35, 0.35]))
    torch.testing.assert_close(weight, torch.tensor([1.2, 1.0]))


def test_worst_group_objective_is_the_largest_group_mean():
    losses = torch.tensor([1.0, 3.0, 2.0, 6.0])
    levels = torch.tensor([[0, 0], [1, 0], [0, 1], [1, -1]])
    assert meta_objective(losses, levels, "worst_group") == 4.5  # factor 0, level 1: (3 + 6) / 2
    assert meta_objective(losses, levels, "uniform") == 3.0


class _LinearFace(nn.Module):
    """Embedding = W x, then a fixed cosine head: the two-level linear toy."""

    def __init__(self):
        super().__init__()
        self.neck = nn.Linear(2, 2, bias=False)
        nn.init.eye_(self.neck.weight)
        self.head = MarginHead(2, 2, scale=4.0, margin=0.1)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        self.head.weight.requires_grad_(False)

    def forward(self, x, labels=None, margin=None):
        return {"logits": self.head(self.neck(x), labels, margin)}


def _toy_batch(n_major: int, n_minor: int, g: torch.Generator) -> dict:
    """Majority level 0 lies along the class axis (fitted); minority level 1 mostly along the other
    axis, with only a small class-dependent component (under-fitted)."""
    y = torch.arange(n_major + n_minor) % 2
    sign = 1.0 - 2.0 * y.float()
    x = torch.stack([sign, torch.zeros_like(sign)], 1)
    x[n_major:] = torch.stack([0.15 * sign[n_major:], torch.ones(n_minor)], 1)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    level = torch.cat([torch.zeros(n_major, dtype=torch.long), torch.ones(n_minor, dtype=torch.long)])
    return {"image": x, "labels": {"identity": y}, "attrs": {"v": level}}


def test_one_meta_step_raises_the_minority_entry_on_the_linear_toy():
    g = torch.Generator().manual_seed(0)
    net = _LinearFace()
    table = MarginTable([2], torch.tensor([[9.0, 1.0]]), torch.full((2,), 0.1), torch.ones(2), 0.1, 0.0, 0.7,
                        bound=0.15)
    train = _toy_batch(36, 4, g)
    meta = _toy_batch(0, 16, g)  # the meta set holds only the minority level
    levels = factor_levels(train, ["v"])
    table_step(net, table, train, levels, meta, factor_levels(meta, ["v"]), MetaSettings(alpha=0.5))
    assert table.phi.grad[0, 1] < 0  # descending the meta loss raises the minority margin
    opt = torch.optim.SGD(table.parameters(), lr=1.0)
    opt.step()
    table.project_()
    assert table.phi[0, 1] > 0 > table.phi[0, 0]


def test_regression_mode_also_favours_the_minority_on_the_linear_toy():
    g = torch.Generator().manual_seed(0)
    net = _LinearFace()
    table = MarginTable([2], torch.tensor([[9.0, 1.0]]), torch.full((2,), 0.1), torch.ones(2), 0.1, 0.0, 0.7,
                        bound=0.15)
    train, meta = _toy_batch(36, 4, g), _toy_batch(0, 16, g)
    regress_step(net, table, train, factor_levels(train, ["v"]), meta, factor_levels(meta, ["v"]),
                 MetaSettings(alpha=0.5, ema=1.0))
    table.project_()
    assert table.phi[0, 1] > 0 > table.phi[0, 0]


def test_missing_factor_names_the_key_and_the_attributes():
    batch, _ = batches(0)
    with pytest.raises(KeyError, match=r"algorithm.factors: \['pose'\].*blur"):
        factor_levels(batch, ["pose"])


def test_meta_step_leaves_the_face_model_untouched():
    net, table = tiny_setup()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batch, meta = batches(0)
    table_step(net, table, batch, factor_levels(batch, ["blur", "occlusion"]), meta,
               factor_levels(meta, ["blur", "occlusion"]), MetaSettings(alpha=0.1))
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert np.isfinite(table.phi.grad.numpy()).all() and CLASSES == 6
