"""Verification metrics: TAR@FAR, ROC-AUC, rank-1, k-fold accuracy, reducible across ranks."""

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from framework.metrics.verification import (
    Verification,
    best_threshold,
    kfold_accuracy,
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
