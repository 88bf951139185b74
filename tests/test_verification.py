"""Verification metrics: TAR@FAR, ROC-AUC, rank-1, k-fold accuracy, reducible across ranks."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from framework.metrics.verification import (
    Verification,
    best_threshold,
    contiguous_folds,
    kfold_accuracy,
    lfw_style_pairs,
    rank1_accuracy,
    roc_auc,
    tar_at_far,
)
from tests.helpers.distributed import run_workers


def test_tar_at_far_lets_through_at_most_the_allowed_negatives():
    neg = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    pos = np.array([0.95, 0.85, 0.75, 0.65])
    # FAR 0.1 of 10 negatives: one may pass, threshold = 0.8 (second highest), accept > 0.8
    assert tar_at_far(pos, neg, 0.1) == 0.5
    # FAR 0.01: no negative may pass, threshold = 0.9
    assert tar_at_far(pos, neg, 0.01) == 0.25
    assert tar_at_far(pos, neg, 0.3) == 1.0  # three may pass: threshold 0.6


def test_roc_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    pos = rng.integers(0, 5, 40).astype(float)
    neg = rng.integers(0, 4, 60).astype(float)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[pos, neg])
    assert abs(roc_auc(pos, neg) - expected) < 1e-12


def test_best_threshold_separates_separable_scores_and_kfold_accuracy_is_one():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0])
    same = np.array([1, 1, 1, 0, 0, 0])
    t = best_threshold(scores, same)
    assert 0.2 < t < 0.7
    acc, std = kfold_accuracy(np.tile(scores, 5), np.tile(same, 5), np.repeat(np.arange(5), 6), 5)
    assert acc == 1.0 and std == 0.0


def test_kfold_accuracy_is_balanced_over_genuine_and_impostor_pairs():
    # 2 genuine, 8 impostors; the best threshold accepts scores > 0.55: TPR 1/2, TNR 7/8 would be
    # worse than accepting > 0.35: TPR 2/2, TNR 6/8 -> balanced 0.875
    scores = np.array([0.9, 0.4, 0.6, 0.5, 0.3, 0.2, 0.1, 0.0, -0.1, -0.2])
    same = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    t = best_threshold(scores, same)
    assert 0.3 < t < 0.4


def test_equally_accurate_thresholds_tie_exactly_and_the_strictest_wins():
    # 3 genuine (0.9, 0.4, 0.3), 6 impostors. Accepting > 0.85 gives TP 1, TN 6: TPR + TNR =
    # 1/3 + 1 = 4/3; accepting > 0.25 gives TP 3, TN 2: 1 + 1/3 = 4/3 too. As rounded ratios
    # the looser one reads larger (0.6666666666666667 against 0.6666666666666666).
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    same = np.array([1, 0, 0, 0, 0, 1, 1, 0, 0])
    assert (3 / 3 + (1 - 4 / 6)) / 2 > (1 / 3 + (1 - 0 / 6)) / 2  # the rounding the rule must not follow
    t = best_threshold(scores, same)
    assert 0.8 < t < 0.9  # the strictest of the two tied cut points


def test_best_threshold_matches_an_exact_brute_force_with_the_stated_tie_rule():
    from fractions import Fraction

    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.integers(0, 6, 30) / 5.0
        same = rng.integers(0, 2, 30)
        same[:2] = [0, 1]
        n_pos, n_neg = int(same.sum()), int(len(same) - same.sum())
        cuts = sorted(set(scores.tolist()), reverse=True)
        # cut point c accepts every score >= c; "none" accepts nothing
        def bal(c):
            acc = scores >= c if c is not None else np.zeros(len(scores), bool)
            return Fraction(int((acc & (same == 1)).sum()), n_pos) + Fraction(int((~acc & (same == 0)).sum()), n_neg)
        values = [bal(None)] + [bal(c) for c in cuts]
        best = values.index(max(values))  # first maximum in order of strictness
        t = best_threshold(scores, same)
        accepted = scores > t
        expected = scores >= cuts[best - 1] if best else np.zeros(len(scores), bool)
        assert np.array_equal(accepted, expected)


def test_lfw_protocol_uses_contiguous_folds_and_plain_accuracy():
    assert contiguous_folds(20, 10).tolist() == [f for f in range(10) for _ in range(2)]
    assert contiguous_folds(7, 2).tolist() == [0, 0, 0, 0, 1, 1, 1]
    emb, labels, ids = _toy(n_id=8, per=6)
    pairs = lfw_style_pairs(ids, labels, folds=10, per_fold=8, seed=1)
    assert pairs.shape == (80, 3)
    blocks = pairs[:, 2].reshape(10, 8)
    assert (blocks[:, :4] == 1).all() and (blocks[:, 4:] == 0).all()  # genuine then impostor, per fold
    pos = {int(i): r for r, i in enumerate(ids.tolist())}
    for a, b, s in pairs.tolist():
        assert (labels[pos[a]] == labels[pos[b]]).item() == bool(s)
    assert len({(a, b) for a, b, _ in pairs.tolist()}) == 80  # drawn without replacement
    m = Verification(pairs=pairs, protocol="lfw")
    m.update(emb, labels, ids)
    out = m.compute()
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    scores = np.array([float(e[pos[a]] @ e[pos[b]]) for a, b, _ in pairs.tolist()])
    acc, std = kfold_accuracy(scores, pairs[:, 2].numpy(), contiguous_folds(80, 10), 10, balanced=False)
    assert out["acc"] == pytest.approx(acc) and out["acc_std"] == pytest.approx(std)
    with pytest.raises(ValueError, match="pass pairs="):
        Verification(protocol="lfw")


def test_rank1_counts_a_hit_when_the_nearest_other_sample_has_the_same_identity():
    sim = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.95], [0.1, 0.95, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # probe 0 -> 1 (hit); probe 1 -> 2 (miss); probe 2 has no mate and is not a probe
    assert rank1_accuracy(sim, labels) == 0.5


def _toy(n_id=6, per=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_id, dim, generator=g)
    labels = torch.arange(n_id).repeat_interleave(per)
    emb = centres[labels] + 0.8 * torch.randn(len(labels), dim, generator=g)
    ids = torch.randperm(len(labels), generator=g) + 100
    return emb, labels, ids


def test_metric_uses_all_pairs_and_ignores_padding():
    emb, labels, ids = _toy()
    m = Verification()
    pad = torch.zeros(3, emb.shape[1])
    mask = torch.cat([torch.ones(len(ids), dtype=torch.bool), torch.zeros(3, dtype=torch.bool)])
    m.update(torch.cat([emb, pad]), torch.cat([labels, torch.zeros(3, dtype=torch.long)]),
             torch.cat([ids, torch.full((3,), -1)]), mask)
    out = m.compute()
    n = len(ids)
    assert out["pairs_pos"] == 6 * (4 * 3 // 2) and out["pairs_pos"] + out["pairs_neg"] == n * (n - 1) // 2
    sim = torch.nn.functional.normalize(emb.double(), dim=1) @ torch.nn.functional.normalize(emb.double(), dim=1).T
    a, b = torch.triu_indices(n, n, 1)
    same = (labels[a] == labels[b]).numpy()
    assert abs(out["auc"] - roc_auc_score(same, sim[a, b].numpy())) < 1e-9
    assert 0.5 < out["auc"] <= 1.0 and 0.0 <= out["tar@far=0.001"] <= out["tar@far=0.1"] <= 1.0


def test_excluded_pairs_are_neither_scored_nor_used_as_gallery_mates():
    # 10 and 11 are the same image of identity 0; 14 is another image of identity 0
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-0.6, 0.8], [0.6, 0.8], [0.1, 0.995]])
    labels, ids = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([10, 11, 14, 12, 13])
    full = Verification()
    full.update(emb, labels, ids)
    m = Verification(exclude=torch.tensor([[10, 11]]))
    m.update(emb, labels, ids)
    out = m.compute()
    assert out["pairs_pos"] == 3 and out["pairs_neg"] == 6
    # with the twin: 10 and 11 find each other, 12 and 13 find each other, 14 finds 13 (miss)
    assert full.compute()["rank1"] == pytest.approx(4 / 5)
    # blocked: 10 and 11 now find 12 (misses), so 2 hits of 5
    assert out["rank1"] == pytest.approx(2 / 5)


def test_given_pairs_are_scored_instead_of_all_pairs(tmp_path):
    emb, labels, ids = _toy()
    pairs = torch.tensor([[int(ids[0]), int(ids[1]), 1], [int(ids[0]), int(ids[5]), 0], [int(ids[2]), int(ids[9]), 0]])
    m = Verification(pairs=pairs)
    m.update(emb, labels, ids)
    out = m.compute()
    assert out["pairs_pos"] == 1 and out["pairs_neg"] == 2
    m.save_roc(tmp_path / "roc.json")
    roc = json.loads((tmp_path / "roc.json").read_text())
    assert roc["far"][-1] == 1.0 and roc["tar"][-1] == 1.0
    assert all(x <= y for x, y in zip(roc["far"], roc["far"][1:]))


class _GlooStrategy:
    """The three collectives ``Metric.reduce`` uses, over the test's process group."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.world_size = dist.get_world_size()

    def all_reduce(self, t, op="sum"):
        self.dist.all_reduce(t)
        return t

    def all_gather_object(self, obj):
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out


def reduce_worker(rank: int, world: int):
    emb, labels, ids = _toy()
    m = Verification()
    rows = torch.arange(rank, len(ids), world)  # dealt round-robin, like the eval stream
    m.update(emb[rows], labels[rows], ids[rows])
    m.reduce(_GlooStrategy())
    return m.compute()


@pytest.mark.distributed
def test_metric_reduced_over_two_ranks_equals_one_process():
    emb, labels, ids = _toy()
    single = Verification()
    single.update(emb, labels, ids)
    expected = single.compute()
    for got in run_workers(reduce_worker, world_size=2):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
