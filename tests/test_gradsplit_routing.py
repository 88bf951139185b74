"""GradSplit's building blocks on tiny tensors whose results are computed by hand."""

from __future__ import annotations

import json

import pytest
import torch

from algorithms.gradsplit import GradSplitConfig
from algorithms.gradsplit.relation import LookaheadAffinity, initial_relation, pairwise_relation
from algorithms.gradsplit.report import delta_m, mean_std
from algorithms.gradsplit.routing import (
    GradMask,
    channel_groups,
    check_relation,
    keep_only_task,
    labelled_task,
    mask_table,
    random_task,
)


def test_channel_groups_are_equal_with_the_remainder_to_the_first_groups():
    assert channel_groups(26, 3).tolist() == [0] * 9 + [1] * 9 + [2] * 8
    with pytest.raises(ValueError, match="stage3.0: 20 channels give groups of 6"):
        channel_groups(20, 3, min_channels=8, where="stage3.0")


def test_mask_table_row_t_is_relation_column_t_per_channel_and_no_task_row_is_zero():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # group 0 is closed to task 1
    table = mask_table(r, torch.tensor([0, 0, 1]))
    assert table.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]


def test_grad_mask_is_identity_forward_and_multiplies_the_gradient_backward():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    y = GradMask.apply(x, mask)
    assert torch.equal(y, x)
    (y * torch.tensor([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]])).sum().backward()
    assert x.grad.tolist() == [[2.0, 0.0, 4.0], [0.0, 6.0, 7.0]]


def test_relation_must_be_square_binary_with_unit_diagonal():
    assert check_relation([[1, 0], [1, 1]], ["a", "b"]).tolist() == [[1, 0], [1, 1]]
    with pytest.raises(ValueError, match="expected a 2x2 matrix"):
        check_relation([[1, 0, 0], [1, 1, 0]], ["a", "b"])
    with pytest.raises(ValueError, match="0 or 1"):
        check_relation([[1, 0.5], [1, 1]], ["a", "b"])
    with pytest.raises(ValueError, match="diagonal must be 1"):
        check_relation([[0, 1], [1, 1]], ["a", "b"])


def test_labelled_task_reads_the_single_label_and_marks_unlabelled_rows():
    labels = {"a": torch.tensor([3, -1, -1]), "b": torch.tensor([-1, 7, -1])}
    assert labelled_task(labels, ["a", "b"]).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="mode=exact or random_task"):
        labelled_task({"a": torch.tensor([1]), "b": torch.tensor([2])}, ["a", "b"])


def test_random_task_is_balanced_on_fully_labelled_rows_and_keeps_only_that_label():
    labels = {t: torch.arange(10) for t in ("a", "b")}
    ids = random_task(labels, ["a", "b"], torch.Generator().manual_seed(0))
    assert torch.bincount(ids).tolist() == [5, 5]
    kept = keep_only_task(labels, ["a", "b"], ids)
    assert torch.equal(kept["a"] >= 0, ids == 0) and torch.equal(kept["b"] >= 0, ids == 1)
    partial = {"a": torch.tensor([1, -1, -1]), "b": torch.tensor([2, 5, -1])}
    assert random_task(partial, ["a", "b"], torch.Generator().manual_seed(1)).tolist()[1:] == [1, 2]


def test_pairwise_rule_is_asymmetric_and_uses_eps():
    table = {
        "single": {"a": 0.90, "b": 0.80, "c": 0.70},
        "pair": {
            "a|b": {"a": 0.91, "b": 0.78},
            "a|c": {"a": 0.85, "c": 0.72},
            "b|c": {"b": 0.795, "c": 0.69},
        },
    }
    r = pairwise_relation(table, ["a", "b", "c"])
    # R[i][j] = 1 iff i with j >= i alone: b helps a, a hurts b; c hurts a, a helps c; c hurts b, b hurts c
    assert r.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert pairwise_relation(table, ["a", "b", "c"], eps=0.011).tolist() == [[1, 1, 0], [0, 1, 1], [1, 1, 1]]


def test_pairwise_rule_over_seeds_cuts_only_drops_larger_than_their_noise():
    """Per-seed differences: a drop of 0.02 +- 0.03 is noise at z = 1, a steady drop of 0.02 is not."""
    table = {
        "single": {"a": [0.90, 0.80, 0.85], "b": [0.70, 0.70, 0.70]},
        "pair": {"a|b": {"a": [0.92, 0.74, 0.83], "b": [0.68, 0.681, 0.679]}},
    }
    assert pairwise_relation(table, ["a", "b"], eps=0.0, z=1.0).tolist() == [[1, 1], [0, 1]]
    assert pairwise_relation(table, ["a", "b"], eps=0.0, z=0.0).tolist() == [[1, 0], [0, 1]]
    table["pair"]["a|b"]["a"] = [0.92, 0.74]
    with pytest.raises(ValueError, match="2 seeds of a two-task run against 3"):
        pairwise_relation(table, ["a", "b"])


def test_pairwise_relation_is_read_from_the_table_file(tmp_path):
    path = tmp_path / "relations.json"
    path.write_text(json.dumps({"single": {"a": 0.5, "b": 0.5}, "pair": {"a|b": {"a": 0.6, "b": 0.4}}}))
    cfg = GradSplitConfig(relation="pairwise", relation_file=str(path))
    assert initial_relation(cfg, ["a", "b"]).tolist() == [[1, 1], [0, 1]]
    path.write_text(
        json.dumps({"single": {"a": 0.5, "b": 0.5}, "pair": {"a|b": {"a": 0.6, "b": 0.4}}, "eps": 0.2})
    )
    assert initial_relation(cfg, ["a", "b"]).tolist() == [[1, 1], [1, 1]]  # the table's eps
    cfg.pairwise_eps = 0.05
    assert initial_relation(cfg, ["a", "b"]).tolist() == [[1, 1], [0, 1]]  # the config's eps wins
    with pytest.raises(ValueError, match="relation_file"):
        initial_relation(GradSplitConfig(relation="pairwise"), ["a", "b"])


def test_lookahead_affinity_of_two_quadratics_matches_the_hand_computation():
    # L_a = (x - 1)^2, L_b = (x - 0.2)^2 at x = 0, eta = 0.25:
    # a's step: x = 0.5 -> L_a = 0.25, L_b = 0.09: Z[a][a] = 0.75, Z[b][a] = 1 - 0.09/0.04 = -1.25
    # b's step: x = 0.1 -> L_a = 0.81, L_b = 0.01: Z[a][b] = 0.19, Z[b][b] = 0.75
    x = torch.zeros(1, requires_grad=True)
    loss = lambda v: [((v - 1) ** 2).sum(), ((v - 0.2) ** 2).sum()]
    aff = LookaheadAffinity(2)
    z = aff.measure(loss(x), [x], 0.25, lambda moved: loss(moved["x"]), ["x"])
    torch.testing.assert_close(z, torch.tensor([[0.75, 0.19], [-1.25, 0.75]], dtype=torch.float64))
    assert LookaheadAffinity.relation(aff.mean()).tolist() == [[1, 1], [0, 1]]


def test_delta_m_is_the_mean_signed_relative_change_in_percent():
    assert delta_m({"a": 0.9, "b": 0.4}, {"a": 0.8, "b": 0.5}) == pytest.approx(100 * (0.125 - 0.2) / 2)
    assert delta_m({"a": 2.0}, {"a": 4.0}, {"a": False}) == pytest.approx(50.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))


def test_chunk_statistics_normalise_each_task_like_batchnorm_on_its_own_rows():
    from algorithms.gradsplit.taskbn import RoutingState, TaskwiseBatchNorm2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 2, 2, generator=g, dtype=torch.float64) * 3 + 1
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 1])
    state = RoutingState()
    bn = TaskwiseBatchNorm2d(3, state, "task_mean", "chunk").double().train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    state.set(ids, 3)
    out = bn(x)
    for k in range(3):
        rows = ids == k
        want = torch.nn.functional.batch_norm(x[rows], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        torch.testing.assert_close(out[rows], want)
    # running statistics: momentum 0.1 from (0, 1) towards the row-weighted per-task mean / unbiased variance
    means = torch.stack([x[ids == k].mean(dim=(0, 2, 3)) for k in range(3)])
    vars_ = torch.stack([x[ids == k].var(dim=(0, 2, 3)) for k in range(3)])
    w = torch.tensor([3.0, 3.0, 1.0])[:, None] / 7
    torch.testing.assert_close(bn.running_mean, 0.1 * (w * means).sum(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * (w * vars_).sum(0))
    state.clear()
    bn.eval()
    torch.testing.assert_close(
        bn(x),
        torch.nn.functional.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        ),
    )
