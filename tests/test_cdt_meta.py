"""The meta-train/meta-test step of Algorithm 1: its limits (α = 0, λ = 1, α → 0), BatchNorm
buffers and the seeded choice of domain pairs."""

import pytest
import torch

from algorithms._face.heads import margin_loss
from algorithms.cdt.losses import cdt_loss, make_triplets, normalize_locations, triplet_loss
from algorithms.cdt.meta import MetaSettings, all_pairs, domain_covariances, pair_objective, sample_pairs
from tests.helpers.cdt_workers import tiny_domains, tiny_net


def _grads(net, loss):
    net.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def _plain_meta_test_loss(net, batch_i, batch_j, s: MetaSettings):
    """L_t evaluated directly at Θ (no fast weights), with Σ± from domain j at Θ."""
    y_i, y_j = batch_i["labels"]["identity"], batch_j["labels"]["identity"]
    out_j, out_i = net(batch_j["image"], y_j), net(batch_i["image"], y_i)
    a, p, n = make_triplets(y_i)
    loss = margin_loss(out_i["logits"], y_i) + s.triplet_weight * triplet_loss(
        out_i["trip"][a], out_i["trip"][p], out_i["trip"][n], s.rho)
    sig_p, sig_n = domain_covariances(out_j["fmap"], make_triplets(y_j), s, None)
    f = normalize_locations(out_i["fmap"]) if s.normalize == "l2_trace" else out_i["fmap"]
    return loss + s.cdt_weight * cdt_loss(f[a], f[p], f[n], sig_p, sig_n, s.tau)[0]


@pytest.mark.parametrize("second_order", [True, False])
def test_alpha_zero_makes_the_meta_test_gradient_the_plain_gradient(second_order):
    torch.manual_seed(0)
    net = tiny_net()
    batch_i, batch_j = tiny_domains()[:2]
    s = MetaSettings(alpha=0.0, lam=0.0, second_order=second_order, normalize="l2_trace")
    meta = _grads(net, pair_objective(net, batch_i, batch_j, s)[0])
    plain = _grads(net, _plain_meta_test_loss(net, batch_i, batch_j, s))
    torch.testing.assert_close(_flat(meta), _flat(plain), atol=1e-6, rtol=1e-5)


def test_lambda_one_makes_the_update_a_plain_step_on_the_meta_train_loss():
    s = MetaSettings(alpha=0.1, lam=1.0, second_order=True, normalize="l2_trace")
    batch_i, batch_j = tiny_domains()[:2]
    meta_net, plain_net = tiny_net(), tiny_net()
    for net, loss_of in [(meta_net, lambda n: pair_objective(n, batch_i, batch_j, s)[0]),
                         (plain_net, lambda n: _meta_train_loss(n, batch_j, s))]:
        opt = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
        opt.zero_grad()
        loss_of(net).backward()
        opt.step()
    for (name, a), b in zip(meta_net.named_parameters(), plain_net.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)  # summation order only
    assert not torch.equal(meta_net.neck.weight, tiny_net().neck.weight)


def _meta_train_loss(net, batch, s):
    y = batch["labels"]["identity"]
    out = net(batch["image"], y)
    a, p, n = make_triplets(y)
    return margin_loss(out["logits"], y) + s.triplet_weight * triplet_loss(
        out["trip"][a], out["trip"][p], out["trip"][n], s.rho)


def _meta_grad(alpha, second_order):
    net = tiny_net()
    batch_i, batch_j = tiny_domains()[:2]
    s = MetaSettings(alpha=alpha, lam=0.3, second_order=second_order, normalize="l2_trace")
    return _flat(_grads(net, pair_objective(net, batch_i, batch_j, s)[0])).double()


def test_second_and_first_order_agree_as_alpha_goes_to_zero():
    def rel(alpha):
        so, fo = _meta_grad(alpha, True), _meta_grad(alpha, False)
        return float((so - fo).norm() / so.norm())

    assert rel(1e-6) < 1e-3
    assert rel(0.5) > 10 * rel(1e-6)  # at a real step size the Hessian term does matter


def test_fast_weight_pass_leaves_batchnorm_statistics_to_the_real_pass():
    s = MetaSettings(alpha=0.1, lam=0.5, normalize="l2_trace")
    batch_i, batch_j = tiny_domains()[:2]
    meta_net, real_net = tiny_net(norm="batch"), tiny_net(norm="batch")
    pair_objective(meta_net, batch_i, batch_j, s)[0].backward()
    real_net(batch_j["image"], batch_j["labels"]["identity"])  # the meta-train (real) forward only
    for (name, a), b in zip(meta_net.named_buffers(), real_net.buffers()):
        torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(meta_net.backbone.stem[1].running_mean, torch.zeros(4))


def test_without_the_cdt_term_the_meta_test_loss_has_no_cdt_part():
    s_on = MetaSettings(alpha=0.1, lam=0.0, normalize="l2_trace")
    s_off = MetaSettings(alpha=0.1, lam=0.0, normalize="l2_trace", use_cdt=False)
    batch_i, batch_j = tiny_domains()[:2]
    on, logs_on = pair_objective(tiny_net(), batch_i, batch_j, s_on)
    off, logs_off = pair_objective(tiny_net(), batch_i, batch_j, s_off)
    assert "cdt" in logs_on and "cdt" not in logs_off
    torch.testing.assert_close(on - off, logs_on["cdt"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs_on["meta_test"] - logs_off["meta_test"], logs_on["cdt"], atol=1e-5, rtol=1e-5)


def test_domain_pairs_are_seeded_by_seed_and_step():
    assert all_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    assert sample_pairs(3, 0, seed=1, step=5) == all_pairs(3)
    assert sample_pairs(3, 2, seed=1, step=5) == sample_pairs(3, 2, seed=1, step=5)
    draws = {tuple(sample_pairs(3, 1, seed=1, step=t)) for t in range(40)}
    assert len(draws) == 6  # every pair is drawn over 40 steps
    assert all(i != j for (i, j), in draws)


def test_without_look_ahead_or_cdt_term_the_meta_step_is_the_pooled_cosface_triplet_step():
    """With α = 0 and no CDT term every domain weighs 1/k in Σ_pairs λ L_s + (1 − λ) L_t, so the
    meta loop is pooled CosFace + triplet: that control needs the CDT term to differ."""
    from algorithms.cdt.meta import meta_step, pooled_step

    domains = tiny_domains()
    grads = []
    for step in (lambda n, s: meta_step(n, domains, all_pairs(len(domains)), s, lambda l: l.backward()),
                 lambda n, s: pooled_step(n, domains, s, lambda l: l.backward())):
        net = tiny_net()
        net.zero_grad(set_to_none=True)
        step(net, MetaSettings(alpha=0.0, lam=0.7, use_cdt=False, normalize="l2_trace"))
        grads.append(_flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)
    net = tiny_net()
    meta_step(net, domains, all_pairs(len(domains)), MetaSettings(alpha=0.0, use_cdt=True, normalize="l2_trace"),
              lambda l: l.backward())
    assert not torch.allclose(_flat([p.grad for p in net.parameters()]), grads[1], atol=1e-4)
