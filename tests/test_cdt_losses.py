"""CDT's loss functions on tiny tensors with hand-checkable values."""

import math

import numpy as np
import torch

from algorithms.cdt.losses import (
    cdt_loss,
    locations,
    mahalanobis_sq,
    make_triplets,
    pair_covariance,
    trace_normalize,
    triplet_loss,
)


def _maps(b=5, d=4, h=3, w=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, h, w, generator=g, dtype=torch.float64) for _ in range(3)]


def _psd(d=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T


def test_covariance_equals_numpy_cov_of_the_flattened_differences():
    fa, fb, _ = _maps()
    diffs = (fa - fb).permute(0, 2, 3, 1).reshape(-1, fa.shape[1]).numpy()  # every location a row
    expected = np.cov(diffs, rowvar=False, ddof=1)
    np.testing.assert_allclose(pair_covariance(fa, fb).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(pair_covariance(fa.float(), fb.float()).numpy(), expected, atol=1e-5)


def test_identity_metric_gives_squared_l2_averaged_over_locations():
    fa, fb, _ = _maps()
    b, d, h, w = fa.shape
    expected = torch.zeros(b, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                expected[i] += ((fa[i, :, y, x] - fb[i, :, y, x]) ** 2).sum() / (h * w)
    torch.testing.assert_close(mahalanobis_sq(fa, fb, torch.eye(d, dtype=torch.float64)), expected)


def test_distance_uses_sigma_itself_not_its_inverse():
    fa, fb, _ = _maps(b=1, d=2, h=1, w=1)
    r = (fa - fb).reshape(2)
    sigma = torch.tensor([[4.0, 0.0], [0.0, 0.25]], dtype=torch.float64)
    assert abs(float(mahalanobis_sq(fa, fb, sigma)) - float(4 * r[0] ** 2 + 0.25 * r[1] ** 2)) < 1e-12


def test_distance_is_nonnegative_for_a_psd_sigma():
    fa, fb, _ = _maps(seed=3)
    assert (mahalanobis_sq(fa, fb, _psd()) >= 0).all()


def test_loss_equals_tau_when_all_features_coincide():
    f = _maps()[0]
    for tau in (1.0, 0.3):
        loss, stats = cdt_loss(f, f.clone(), f.clone(), _psd(seed=2), _psd(seed=5), tau)
        assert float(loss) == tau
        assert float(stats["hinge_active"]) == 1.0 and float(stats["d2_pos"]) == 0.0


def test_comparison_is_location_wise():
    fa, fp, fn = _maps(seed=4)
    sp, sn = _psd(seed=6), _psd(seed=7)
    base, _ = cdt_loss(fa, fp, fn, sp, sn, tau=50.0)  # a large τ keeps every hinge active
    perm = torch.randperm(fa.shape[2] * fa.shape[3], generator=torch.Generator().manual_seed(0))

    def shuffle(t):
        flat = t.flatten(2)[:, :, perm]
        return flat.reshape(t.shape)

    joint, _ = cdt_loss(shuffle(fa), shuffle(fp), shuffle(fn), sp, sn, tau=50.0)
    torch.testing.assert_close(joint, base)
    only_positive, _ = cdt_loss(fa, shuffle(fp), fn, sp, sn, tau=50.0)
    assert abs(float(only_positive) - float(base)) > 1e-3


def test_hinge_is_inactive_when_negatives_are_far():
    fa, fp, _ = _maps(seed=8)
    fn = fa + 100.0
    eye = torch.eye(fa.shape[1], dtype=torch.float64)
    loss, stats = cdt_loss(fa, fp, fn, eye, eye, tau=1.0)
    assert float(loss) == 0.0 and float(stats["hinge_active"]) == 0.0
    assert float(stats["d2_neg"]) > float(stats["d2_pos"])


def test_trace_normalize_gives_unit_mean_eigenvalue():
    s = trace_normalize(_psd(d=5))
    assert abs(float(torch.linalg.eigvalsh(s).mean()) - 1.0) < 1e-12


def test_triplet_loss_matches_a_hand_computed_value():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])  # ‖a − p‖² = 2
    n = torch.tensor([[2.0, 0.0]])  # normalised to a: ‖a − n‖² = 0
    assert math.isclose(float(triplet_loss(a, p, n, rho=1.0)), 3.0, rel_tol=1e-6)
    assert float(triplet_loss(a, n, p, rho=1.0)) == 0.0  # 0 − 2 + 1 < 0


def test_triplets_pair_consecutive_rows_of_an_identity_with_a_partner_negative():
    labels = torch.tensor([7, 7, 3, 3, 9, 9, 5, 5, 5])  # identity 5 has an odd third row: unused
    a, p, n = make_triplets(labels)
    assert a.tolist() == [0, 2, 4, 6] and p.tolist() == [1, 3, 5, 7]
    assert n.tolist() == [3, 1, 7, 5]  # partners 0↔1, 2↔3; the partner's positive row
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()


def test_a_pxk_batch_gives_k_over_two_triplets_per_identity():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # P = 2, K = 4
    a, p, n = make_triplets(labels)
    assert a.tolist() == [0, 2, 4, 6] and p.tolist() == [1, 3, 5, 7]
    assert n.tolist() == [5, 7, 1, 3]


def test_triplets_of_a_batch_split_along_identity_pairs_match_the_whole_batch():
    labels = torch.arange(8).repeat_interleave(2)
    whole = torch.stack(make_triplets(labels), 1)
    halves = [torch.stack(make_triplets(labels[r * 8:(r + 1) * 8]), 1) + r * 8 for r in range(2)]
    torch.testing.assert_close(torch.cat(halves), whole)


def test_an_odd_identity_count_still_gives_every_triplet_a_foreign_negative():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    a, _, n = make_triplets(labels)
    assert len(a) == 3 and (labels[a] != labels[n]).all()
    assert len(make_triplets(torch.tensor([4, 4]))[0]) == 0  # one identity: no negative exists


def test_locations_flatten_every_position_of_every_sample():
    f = torch.arange(2 * 3 * 2 * 2, dtype=torch.float64).reshape(2, 3, 2, 2)
    rows = locations(f)
    assert rows.shape == (8, 3)
    torch.testing.assert_close(rows[5], f[1, :, 0, 1])
