"""The look-ahead helper by itself: fast weights and outer gradients of a linear model against
hand-computed float64 values (first and second order), a meta-parameter's outer gradient against
an explicit unrolled update, BatchNorm statistics updated once, and 2 ranks × B/2 == 1 rank × B."""

import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from framework import lookahead
from framework.lookahead import forward_at, inner_step, outer_backward, trainable
from tests.helpers.distributed import run_workers
from tests.helpers.lookahead_workers import ALPHA as MLP_ALPHA
from tests.helpers.lookahead_workers import ddp_worker, look_ahead, problem, rows, tiny_mlp

ALPHA = 0.3


def _linear_problem():
    """y ≈ w·x + b with Θ = [w, b]; a design row is a = [x, 1], so every quantity is matrix algebra."""
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(n, k, generator=g, dtype=torch.float64) for n, k in [(6, 3), (6, 1), (4, 3), (4, 1)]]
    net = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.randn(1, 3, generator=g, dtype=torch.float64))
        net.bias.copy_(torch.randn(1, generator=g, dtype=torch.float64))
    return net, *data


def _design(x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def _theta(net):
    return torch.cat([net.weight.detach().reshape(-1), net.bias.detach()])


def _split(theta):
    return {"weight": theta[:3].reshape(1, 3), "bias": theta[3:]}


@pytest.mark.parametrize("second_order", [True, False])
def test_linear_model_matches_the_hand_computed_fast_weights_and_outer_gradient(second_order):
    net, x, y, x_t, y_t = _linear_problem()
    a, a_t, theta = _design(x), _design(x_t), _theta(net)
    # by hand: ∇L_s = 2/B Aᵀ(AΘ − y), H_s = 2/B AᵀA, Θ' = Θ − α∇L_s, ∇L_t(Θ') = 2/B' A'ᵀ(A'Θ' − y')
    grad_s = 2 / len(x) * a.T @ (a @ theta - y[:, 0])
    hessian = 2 / len(x) * a.T @ a
    fast_ref = theta - ALPHA * grad_s
    grad_t = 2 / len(x_t) * a_t.T @ (a_t @ fast_ref - y_t[:, 0])
    outer_ref = (torch.eye(4, dtype=torch.float64) - ALPHA * hessian) @ grad_t if second_order else grad_t

    fast = inner_step(F.mse_loss(net(x), y), trainable(net), ALPHA, second_order=second_order)
    F.mse_loss(forward_at(net, fast, x_t), y_t).backward()

    for name, ref in _split(fast_ref).items():
        torch.testing.assert_close(fast[name].detach(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_theta_grad(net), outer_ref, rtol=1e-12, atol=1e-12)
    # the Hessian term is large here, so the two orders are told apart
    assert float((ALPHA * hessian @ grad_t).norm()) > 0.1 * float(grad_t.norm())


def _theta_grad(net):
    return torch.cat([net.weight.grad.reshape(-1), net.bias.grad])


def test_meta_parameter_gradient_matches_the_hand_computed_one():
    """A learnable offset φ[level] in each training residual: dL_t/dφ_l = −α 2/B Σ_{v_i=l} a_iᵀ ∇L_t(Θ')."""
    net, x, y, x_t, y_t = _linear_problem()
    level = torch.tensor([0, 1, 2, 0, 1, 0])
    phi = torch.tensor([0.2, -0.5, 0.1], dtype=torch.float64, requires_grad=True)
    a, a_t, theta = _design(x), _design(x_t), _theta(net)
    residual = a @ theta - y[:, 0] + phi.detach()[level]
    fast_ref = theta - ALPHA * 2 / len(x) * a.T @ residual
    grad_t = 2 / len(x_t) * a_t.T @ (a_t @ fast_ref - y_t[:, 0])
    one_hot = F.one_hot(level, 3).double()
    phi_ref = -ALPHA * 2 / len(x) * one_hot.T @ (a @ grad_t)

    inner = ((net(x)[:, 0] - y[:, 0] + phi[level]) ** 2).mean()
    fast = inner_step(inner, trainable(net), ALPHA)
    outer_backward(F.mse_loss(forward_at(net, fast, x_t), y_t), {"phi": phi})

    torch.testing.assert_close(phi.grad, phi_ref, rtol=1e-12, atol=1e-12)
    assert net.weight.grad is None and net.bias.grad is None  # the model's gradient is the caller's


def _mlp(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def test_meta_and_model_gradients_match_an_explicit_unrolled_update():
    data = problem()
    net = tiny_mlp()
    # the reference: plain tensors, the inner step written out, one autograd pass through it all
    leaves = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    phi_ref = data["phi"].clone().requires_grad_(True)
    weights = F.softplus(phi_ref)[data["level"]]
    inner = (weights * (_mlp(leaves, data["x"]) - data["y"])[:, 0] ** 2).mean()
    grads = torch.autograd.grad(inner, leaves, create_graph=True)
    fast = [p - MLP_ALPHA * g for p, g in zip(leaves, grads)]
    F.mse_loss(_mlp(fast, data["x_meta"]), data["y_meta"]).backward()

    got = look_ahead(data, second_order=True)
    np.testing.assert_allclose(got["grad/phi"], phi_ref.grad.numpy(), rtol=1e-10, atol=1e-12)
    for (name, _), ref in zip(net.named_parameters(), leaves):
        np.testing.assert_allclose(got[f"grad/{name}"], ref.grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)
    assert np.abs(got["grad/phi"]).min() > 1e-6  # every level reaches the held-out loss


def test_a_look_ahead_over_the_last_layer_leaves_the_others_at_theta():
    data = problem()
    net = tiny_mlp()
    inner = F.mse_loss(net(data["x"]), data["y"])
    fast = inner_step(inner, trainable(net, ["2"]), ALPHA)
    assert sorted(fast) == ["2.bias", "2.weight"]
    w1, b1, w2, b2 = (p.detach() for p in net.parameters())
    g_w2, g_b2 = torch.autograd.grad(inner, [net[2].weight, net[2].bias], retain_graph=True)
    ref = _mlp([w1, b1, w2 - ALPHA * g_w2, b2 - ALPHA * g_b2], data["x_meta"])
    torch.testing.assert_close(forward_at(net, fast, data["x_meta"]).detach(), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"no trainable parameter under module 'head'.*\['0', '2'\]"):
        trainable(net, ["head"])


def test_batchnorm_statistics_are_updated_by_the_real_pass_only():
    torch.manual_seed(0)
    x, x_meta = torch.randn(8, 3), torch.randn(8, 3) + 2.0

    def bn_net():
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))

    net, once = bn_net(), bn_net()
    inner = net(x).pow(2).mean()  # the real pass
    fast = inner_step(inner, trainable(net), ALPHA)
    outer = forward_at(net, fast, x_meta).pow(2).mean()  # the look-ahead pass
    recomputed = forward_at(net, {}, x).pow(2).mean()  # the same batch again, at Θ
    (inner + outer + recomputed).backward()  # the real pass's saved tensors are intact
    once(x)
    for (name, got), ref in zip(net.named_buffers(), once.buffers()):
        torch.testing.assert_close(got, ref, msg=name)
    assert int(net[1].num_batches_tracked) == 1
    before = net[1].running_mean.clone()
    net(x_meta)  # a plain second pass would have moved them: the comparison above can fail
    assert not torch.equal(net[1].running_mean, before)


def test_misuse_fails_naming_what_to_do():
    net, x, y, x_t, y_t = _linear_problem()
    with pytest.raises(ValueError, match=r"world_size=2 needs a reduce callable"):
        inner_step(F.mse_loss(net(x), y), trainable(net), ALPHA, world_size=2)
    with pytest.raises(ValueError, match=r"no parameters to update"):
        inner_step(F.mse_loss(net(x), y), {}, ALPHA)
    unused = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    fast = inner_step(F.mse_loss(net(x), y), trainable(net), ALPHA)
    with pytest.raises(ValueError, match=r"\['unused'\] get no gradient.*second_order=True"):
        outer_backward(F.mse_loss(forward_at(net, fast, x_t), y_t), {"unused": unused})
    # first order: φ does not reach Θ', and the error says so instead of returning zeros
    phi = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    fast = inner_step(((net(x)[:, 0] - y[:, 0] + phi) ** 2).mean(), trainable(net), ALPHA, second_order=False)
    with pytest.raises(ValueError, match=r"\['phi'\] get no gradient"):
        outer_backward(F.mse_loss(forward_at(net, fast, x_t), y_t), {"phi": phi})


def test_the_module_docstring_example_runs():
    example = textwrap.dedent(lookahead.__doc__.split("::\n", 1)[1])
    assert "inner_step(" in example and "outer_backward(" in example
    exec(compile(example, "framework/lookahead.py (example)", "exec"), {})


@pytest.mark.distributed
def test_two_ranks_with_half_batches_match_one_rank_with_the_whole_batch():
    orders = [True, False]
    ranks = run_workers(ddp_worker, world_size=2, args=(orders,), timeout=120)
    for case, second_order in enumerate(orders):
        single = look_ahead(problem(), second_order)
        half = look_ahead(rows(problem(), 0, 2), second_order)  # one rank alone, without the reduction
        assert not np.allclose(half["fast/0.weight"], single["fast/0.weight"])
        assert ("grad/phi" in single) == second_order
        for rank in ranks:
            assert sorted(rank[case]) == sorted(single)
            for key, value in single.items():
                np.testing.assert_allclose(rank[case][key], value, rtol=1e-10, atol=1e-12,
                                           err_msg=f"second_order={second_order}: {key}")
