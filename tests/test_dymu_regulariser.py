"""DYMU's branching regulariser, usage probabilities, affinity and control metrics."""

from __future__ import annotations

import math

import pytest
import torch

from algorithms.dymu.affinity import rsa_affinity
from algorithms.dymu.hypernetworks import draw_control, gumbel_softmax, temperature
from algorithms.dymu.pareto import hypervolume, uniformity
from algorithms.dymu.regulariser import (active_loss, inactive_loss, omega, usage_probability,
                                         usage_probability_exact)


def monte_carlo_usage(alpha: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """Sample trees from α and count how often each node is used (every top node is)."""
    gen = torch.Generator().manual_seed(seed)
    n_branch, n, _ = alpha.shape
    used = torch.ones(samples, n, dtype=torch.bool)
    rows = [used]
    for l in range(n_branch - 1, -1, -1):
        picks = torch.stack([torch.multinomial(alpha[l, k], samples, replacement=True, generator=gen)
                             for k in range(n)], dim=1)  # [samples, child]
        below = torch.zeros(samples, n, dtype=torch.bool)
        for k in range(n):
            below[torch.arange(samples)[used[:, k]], picks[used[:, k], k]] = True
        used = below
        rows.insert(0, used)
    return torch.stack([r.double().mean(0) for r in rows])


def random_alpha(seed: int, n_branch: int = 3, n: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n_branch, n, n, generator=gen, dtype=torch.float64), dim=-1)


def test_usage_probability_matches_monte_carlo_within_0_03():
    errors = []
    for seed in range(3):
        alpha = random_alpha(seed)  # N = 3 tasks, L = 4 layers
        mc = monte_carlo_usage(alpha, 40000, seed)
        assert (usage_probability_exact(alpha) - mc).abs().max() <= 0.015  # Monte Carlo noise only
        errors.append(float((usage_probability(alpha) - mc).abs().max()))
    assert max(errors) > 0.03  # why the exact computation is the default: siblings' usage is correlated


def test_the_independence_dp_is_exact_for_one_branching_and_the_exact_one_is_differentiable():
    alpha = random_alpha(5, n_branch=1, n=4)
    torch.testing.assert_close(usage_probability(alpha), usage_probability_exact(alpha))
    alpha = random_alpha(6).requires_grad_(True)
    usage_probability_exact(alpha).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_omega_is_zero_when_all_active_tasks_share_every_parent():
    affinity = torch.tensor([[1.0, 0.6, 0.3], [0.5, 1.0, 0.4], [0.2, 0.7, 1.0]])
    alpha = random_alpha(7).float()
    shared = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    nu = shared[:, None, :].expand(3, 3, 3).clone()  # every child of a layer: the same parent distribution
    pref = torch.tensor([0.45, 0.45, 0.10])  # task 2 inactive (0.10 < 0.6 / 3)
    zero = omega(nu, alpha, affinity, pref, 1.0, lambda_active=5.0, lambda_inactive=0.1, threshold=0.6)
    assert zero["active"].item() == 0.0 and zero["inactive"].item() == 0.0
    nu[:, 1] = torch.tensor([0.0, 0.0, 1.0])  # an active task branches away: the active loss rises
    apart = omega(nu, alpha, affinity, pref, 1.0, lambda_active=5.0, lambda_inactive=0.1, threshold=0.6)
    assert apart["active"].item() > 0
    assert omega(nu, alpha, affinity, pref, 0.0, 5.0, 0.1, 0.6)["active"].item() == 0.0  # c = 0: no pressure
    nu[:, 2] = torch.tensor([0.5, 0.5, 0.0])  # the inactive task copies neither active task
    assert omega(nu, alpha, affinity, pref, 1.0, 5.0, 0.1, 0.6)["inactive"].item() > 0


def test_active_loss_weighs_low_layers_and_similar_tasks_more():
    usage = torch.ones(4, 2)
    both = torch.tensor([True, True])
    apart = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    low = torch.stack([apart, torch.eye(2)[[0, 0]], torch.eye(2)[[0, 0]]])  # branch apart at the lowest layer
    high = torch.stack([torch.eye(2)[[0, 0]], torch.eye(2)[[0, 0]], apart])  # ... at the highest layer
    aff = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert active_loss(low, usage, aff, both) > active_loss(high, usage, aff, both) > 0
    assert active_loss(low, usage, aff * 0.5, both) == pytest.approx(0.5 * active_loss(low, usage, aff, both).item())
    assert inactive_loss(low, both).item() == 0.0  # no inactive task


def test_rsa_affinity_recovers_tasks_that_share_a_representation():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(40, 64, generator=gen)
    other = torch.randn(40, 64, generator=gen)
    layers = 2
    feats = [[base * 2 + 1 + 0.05 * torch.randn(40, 64, generator=gen) for _ in range(layers)],  # affine copy
             [base for _ in range(layers)],
             [other for _ in range(layers)]]
    a = rsa_affinity(feats)
    assert a[0, 1] > 0.9 and a[1, 0] > 0.9
    assert a[0, 2] == 0.0 and a[1, 2] == 0.0  # the least similar task of each row
    assert torch.allclose(a.diagonal(), torch.ones(3))
    same = rsa_affinity([[base], [base], [base]])  # identical streams: all ones, no division by zero
    assert torch.equal(same, torch.ones(3, 3))


def test_uniformity_is_one_when_preference_weighted_losses_are_equal():
    assert uniformity([1.0, 2.0, 2.0], [0.5, 0.25, 0.25]) == pytest.approx(1.0)
    skew = uniformity([1.0, 1.0, 1.0], [0.98, 0.01, 0.01])
    assert 1 - math.log(3) <= skew < 0.5


def test_hypervolume_of_known_point_sets():
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    assert hypervolume([[1, 3], [2, 2], [3, 1], [3, 3]], [4, 4]) == pytest.approx(6.0)  # dominated: no change
    assert hypervolume([[1, 1, 1]], [2, 2, 2]) == pytest.approx(1.0)
    assert hypervolume([[1, 5]], [4, 4]) == 0.0  # outside the reference box


def test_gumbel_temperature_and_control_draws():
    alpha = torch.tensor([[0.7, 0.2, 0.1]])
    noise = torch.zeros(1, 3)
    cold = gumbel_softmax(alpha, noise, 0.01)
    assert torch.allclose(cold, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)
    hard = gumbel_softmax(alpha.requires_grad_(True), noise, 5.0, hard=True)
    assert torch.equal(hard.detach(), torch.tensor([[1.0, 0.0, 0.0]]))
    hard[0, 1].backward()
    assert alpha.grad.abs().sum() > 0  # straight-through: the soft sample's gradient
    assert temperature(0, 30000, 5.0, 0.97, 100) == 5.0
    assert temperature(29999, 30000, 5.0, 0.97, 100) == pytest.approx(5.0 * 0.97 ** 99)
    assert temperature(299, 30000, 5.0, 0.97, 100) == 5.0 and temperature(300, 30000, 5.0, 0.97, 100) < 5.0
    r1, c1, _ = draw_control(3, 17, 3, 0.2)
    r2, c2, _ = draw_control(3, 17, 3, 0.2)
    assert (r1 == r2).all() and c1 == c2 and abs(r1.sum() - 1) < 1e-12 and 0 <= c1 <= 1
