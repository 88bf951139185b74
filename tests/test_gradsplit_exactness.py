"""GradSplit's routing is exact: forbidden groups get exactly zero gradient, the routed gradient
equals masked per-task backward passes, all-ones routing is plain sharing, the forward is unchanged."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from algorithms.equal_weight import EqualWeightConfig
from algorithms.equal_weight.method import EqualWeight
from algorithms.gradsplit import GradSplitConfig
from algorithms.gradsplit.method import GradSplit
from algorithms.gradsplit.model import GradSplitNet
from algorithms.gradsplit.taskbn import RoutingState, convert_batchnorm
from framework.models import build_multitask
from tests.helpers.gradsplit_workers import (
    ASYM,
    CHAIN,
    TASKS,
    allowed_grads,
    ce_task_loss,
    data_info,
    forbidden_grads,
    model_config,
    multi_source_batch,
    split_net,
)

IDENTITY = torch.eye(3).tolist()


def is_zero(t: torch.Tensor) -> bool:
    return torch.equal(t, torch.zeros_like(t))


@pytest.mark.parametrize("task_bn", ["chunk", "cut"])
@pytest.mark.parametrize(
    "relation,task",
    [(ASYM, "c"), (IDENTITY, "a"), (IDENTITY, "b"), (IDENTITY, "c")],
    ids=["asym-c", "identity-a", "identity-b", "identity-c"],
)
def test_forbidden_groups_get_exactly_zero_gradient_with_taskwise_batchnorm(relation, task, task_bn):
    model = split_net(relation, task_bn=task_bn).train()
    assert model.taskwise_bn  # the second block's BatchNorms sit in the routed section
    batch = multi_source_batch(4, seed=1)  # tasks interleaved in one batch
    out = model(batch["image"], task_ids=batch["task"])
    ce_task_loss(out, batch["labels"], task).backward()
    t = TASKS.index(task)
    assert all(is_zero(g) for _, g in forbidden_grads(model, t))
    assert all(g.abs().sum() > 0 for _, g in allowed_grads(model, t))


@pytest.mark.xfail(
    strict=True,
    reason="documents the leak: shared batch statistics of a mixed batch carry "
    "task c's gradient into the groups of tasks a and b",
)
def test_plain_batchnorm_on_a_mixed_batch_keeps_forbidden_groups_at_zero():
    model = split_net(ASYM, task_bn="none").train()
    batch = multi_source_batch(4, seed=1)
    out = model(batch["image"], task_ids=batch["task"])
    ce_task_loss(out, batch["labels"], "c").backward()
    assert all(is_zero(g) for _, g in forbidden_grads(model, TASKS.index("c")))


def test_forbidden_groups_stay_exactly_zero_under_gradient_accumulation():
    model = split_net(ASYM).train()
    for k in range(3):  # three accumulated micro-batches, loss divided as the trainer does
        batch = multi_source_batch(4, seed=20 + k)
        out = model(batch["image"], task_ids=batch["task"])
        (ce_task_loss(out, batch["labels"], "c") / 3).backward()
    assert all(is_zero(g) for _, g in forbidden_grads(model, TASKS.index("c")))
    assert all(g.abs().sum() > 0 for _, g in allowed_grads(model, TASKS.index("c")))


@pytest.mark.parametrize("task_bn", ["chunk", "cut"])
def test_forbidden_groups_stay_exactly_zero_under_bf16_autocast(task_bn):
    model = split_net(ASYM, task_bn=task_bn).train()
    batch = multi_source_batch(4, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch["image"], task_ids=batch["task"])
        loss = ce_task_loss(out, batch["labels"], "c")
    loss.backward()
    assert all(is_zero(g) for _, g in forbidden_grads(model, TASKS.index("c")))
    assert all(g.abs().sum() > 0 for _, g in allowed_grads(model, TASKS.index("c")))


# --- routed gradient == T masked per-task backward passes ----------------------------------------
def dyadic_(model: torch.nn.Module, seed: int) -> None:
    """Weights in {-1/4, 0, 1/4}: every sum below is exact in float64, in any order."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-1, 2, p.shape, generator=g).double() / 4)


def linear_task_loss(outputs: dict, coeff: torch.Tensor, task_ids: torch.Tensor, t: int) -> torch.Tensor:
    rows = task_ids == t
    return (outputs[TASKS[t]][rows] * coeff[rows]).sum()


def hand_masked_reference(net: torch.nn.Module, model, x, task_ids, loss_fn, state=None, relation=None):
    """Per task t: a fresh backward of L_t alone, zeroing by explicit channel index the gradient at
    every split module output for the groups t may not train; gradients summed over tasks."""
    relation = model.relation if relation is None else relation
    total, deltas = {}, {}
    for t in range(len(TASKS)):
        net.zero_grad(set_to_none=True)
        handles, captured = [], {}
        for name in model.split_modules:
            forbidden = [c for c, g in enumerate(model.groups[name].tolist()) if relation[g, t] == 0]

            def hook(module, inputs, output, forbidden=forbidden, name=name, captured=captured):
                def mask(grad):
                    grad = grad.clone()
                    grad[:, forbidden] = 0.0
                    captured[name] = grad
                    return grad

                output.register_hook(mask)

            handles.append(net.backbone.get_submodule(name).register_forward_hook(hook))
        if state is not None:
            state.set(task_ids, len(TASKS) + 1)
        loss_fn(net(x), t).backward()
        if state is not None:
            state.clear()
        for h in handles:
            h.remove()
        for k, p in net.named_parameters():
            if p.grad is not None:
                total[k] = total[k] + p.grad if k in total else p.grad.clone()
        for name, d in captured.items():  # sample b's gradient comes from its own task's loss only
            rows = task_ids == t
            deltas.setdefault(name, torch.zeros_like(d))[rows] = d[rows]
    return total, deltas


def routed(model, x, task_ids, loss_fn):
    captured = {}

    def hook(name):
        def fn(module, inputs, output):
            output.register_hook(lambda g: captured.__setitem__(name, g))  # the raw output: after GradMask

        return fn

    handles = [
        model.net.backbone.get_submodule(n).register_forward_hook(hook(n), prepend=True)
        for n in model.split_modules
    ]
    model.zero_grad(set_to_none=True)
    out = model(x, task_ids=task_ids)
    sum(loss_fn(out, t) for t in range(len(TASKS))).backward()
    for h in handles:
        h.remove()
    return {k: p.grad for k, p in model.net.named_parameters() if p.grad is not None}, captured


def test_routed_gradient_equals_masked_per_task_backwards_bit_for_bit():
    """No BatchNorm, float64 and dyadic values: one routed backward == sum of T masked backwards,
    for every parameter (shared ones included), with torch.equal."""
    model = split_net(ASYM, norm="none", dtype=torch.float64).train()
    dyadic_(model, seed=3)
    batch = multi_source_batch(4, seed=2, dtype=torch.float64)
    x = (batch["image"] * 4).round() / 4
    ids = batch["task"]
    coeff = torch.randint(-2, 3, (len(ids), 3), generator=torch.Generator().manual_seed(4)).double()
    loss_fn = lambda out, t: linear_task_loss(out, coeff, ids, t)
    got, got_delta = routed(model, x, ids, loss_fn)
    ref, ref_delta = hand_masked_reference(model.net, model, x, ids, loss_fn)
    assert got.keys() == ref.keys() and len(got) == len(list(model.net.parameters()))
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
        scaled = ref[k] * 2.0**30  # the exactness premise: small dyadic values, nothing rounded
        assert torch.equal(scaled, scaled.round()) and scaled.abs().max() < 2.0**52, k
    assert not model.taskwise_bn  # no BatchNorm: the batch runs in the caller's order
    for name in model.split_modules:
        assert torch.equal(got_delta[name], ref_delta[name]), name


@pytest.mark.parametrize("task_bn", ["chunk", "cut"])
@pytest.mark.parametrize("relation", [IDENTITY, ASYM], ids=["identity", "asymmetric"])
def test_routed_gradient_matches_masked_reference_with_taskwise_batchnorm(relation, task_bn):
    """With task-wise BatchNorm: every per-sample gradient at the split outputs is bit-identical;
    group parameters trained by one task are bit-identical; sums over several tasks differ only
    by float64 summation order."""
    model = split_net(relation, task_bn=task_bn, dtype=torch.float64).train()
    batch = multi_source_batch(4, seed=5, dtype=torch.float64)
    ids, labels = batch["task"], batch["labels"]
    loss_fn = lambda out, t: ce_task_loss(out, labels, TASKS[t])
    got, got_delta = routed(model, batch["image"], ids, loss_fn)
    ref, ref_delta = hand_masked_reference(model.net, model, batch["image"], ids, loss_fn, state=model.state)
    for name in model.split_modules:
        assert torch.equal(got_delta[name], ref_delta[name]), name
    r = torch.tensor(relation)
    for entries in model.group_parameters().values():
        for name, p, groups in entries:
            key = name if name in ref else f"backbone.{name}"
            for g in range(3):
                rows = groups == g
                if r[g].sum() == 1:
                    assert torch.equal(got[key][rows], ref[key][rows]), (key, g)
                else:
                    torch.testing.assert_close(got[key][rows], ref[key][rows], rtol=1e-12, atol=1e-15)


# --- all-ones routing is plain hard sharing -------------------------------------------------------
def test_all_ones_relation_equals_equal_weight_bit_for_bit():
    """Same init, same batches, same task-wise BatchNorm chunking: three SGD steps of GradSplit
    with R = all-ones and of equal_weight give identical losses, parameters and BN statistics."""
    full = SimpleNamespace(model=model_config())
    gs = GradSplit(GradSplitConfig(relation="all_ones"), full)
    torch.manual_seed(0)
    model = gs.build_model(data_info())
    ew = EqualWeight(EqualWeightConfig(), full)
    torch.manual_seed(0)
    ref = ew.build_model(data_info())
    state = RoutingState()
    convert_batchnorm(ref.backbone, model.taskwise_bn, state, "task_mean")
    opt_a = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ctx = SimpleNamespace(global_step=0)
    for step in range(3):
        batch = multi_source_batch(4, seed=30 + step, shuffled=False)
        batch = {"image": batch["image"], "labels": batch["labels"]}
        losses_a = gs.training_step(model, batch, ctx)
        state.set(torch.arange(3).repeat_interleave(4), len(TASKS) + 1)
        losses_b = ew.training_step(ref, batch, ctx)
        state.clear()
        assert all(torch.equal(losses_a[t], losses_b[t]) for t in TASKS)
        sum(losses_a.values()).backward()
        sum(losses_b.values()).backward()
        for opt in (opt_a, opt_b):
            opt.step()
            opt.zero_grad()
    a, b = model.net.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task_bn", ["chunk", "cut"])
def test_eval_mode_outputs_equal_the_unwrapped_network(task_bn):
    model = split_net(ASYM, task_bn=task_bn).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(3):  # move weights and running statistics away from their initial values
        batch = multi_source_batch(4, seed=40 + step)
        out = model(batch["image"], task_ids=batch["task"])
        sum(ce_task_loss(out, batch["labels"], t) for t in TASKS).backward()
        opt.step()
        opt.zero_grad()
    torch.manual_seed(123)
    plain = build_multitask(model_config(), data_info())  # ordinary BatchNorm2d, no hooks
    plain.load_state_dict(model.net.state_dict())
    x = multi_source_batch(4, seed=99)["image"]
    model.eval(), plain.eval()
    got, want = model(x), plain(x)
    assert all(torch.equal(got[t], want[t]) for t in TASKS)
    model.train(), plain.train()
    got, want = model(x), plain(x)  # train mode without task ids: the plain forward too
    assert all(torch.equal(got[t], want[t]) for t in TASKS)


def test_task_statistics_do_not_depend_on_where_the_rows_sit_in_the_batch():
    model = split_net(ASYM, dtype=torch.float64).train()
    batch = multi_source_batch(4, seed=6, dtype=torch.float64)
    order = torch.argsort(batch["task"], stable=True)
    got = model(batch["image"], task_ids=batch["task"])
    want = model(batch["image"][order], task_ids=batch["task"][order])
    for t in TASKS:
        torch.testing.assert_close(got[t][order], want[t], rtol=1e-12, atol=1e-12)


def test_exact_mode_equals_masked_per_task_backwards_bit_for_bit():
    """Fully labelled samples, exact mode: one backward over the replicated split section ==
    T backwards of each task's loss over the whole batch with that task's mask (no BN, dyadic)."""
    model = split_net(ASYM, norm="none", dtype=torch.float64).train()
    dyadic_(model, seed=8)
    x = (
        torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 4
    ).round() / 4
    coeff = torch.randint(-2, 3, (6, 3), generator=torch.Generator().manual_seed(10)).double()
    out = model(x, replicate=True)
    sum((out[t] * coeff).sum() for t in TASKS).backward()
    got = {k: p.grad.clone() for k, p in model.net.named_parameters()}
    all_rows = torch.zeros(6, dtype=torch.long)
    ref, _ = hand_masked_reference(model.net, model, x, all_rows, lambda o, t: (o[TASKS[t]] * coeff).sum())
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    model.eval()
    plain = model(x)
    model.train()
    with torch.no_grad():
        rep = model(x, replicate=True)
    assert all(torch.equal(rep[t], plain[t]) for t in TASKS)  # forward unchanged (no BN here)


def test_cut_statistics_forward_the_values_of_plain_batchnorm_and_track_the_same_running_stats():
    routed, plain = (
        split_net(ASYM, task_bn="cut", dtype=torch.float64),
        split_net(ASYM, task_bn="none", dtype=torch.float64),
    )
    batch = multi_source_batch(4, seed=7, dtype=torch.float64)
    got = routed(batch["image"], task_ids=batch["task"])
    want = plain(batch["image"], task_ids=batch["task"])
    for t in TASKS:
        torch.testing.assert_close(got[t], want[t], rtol=1e-10, atol=1e-12)
    for name, buf in routed.net.named_buffers():
        torch.testing.assert_close(buf, dict(plain.net.named_buffers())[name], rtol=1e-10, atol=1e-12)


def test_loading_a_relation_rebuilds_the_masks():
    model = split_net(IDENTITY).train()
    batch = multi_source_batch(4, seed=12)
    model(batch["image"], task_ids=batch["task"])  # builds the mask tables for R = I
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["relation"] = torch.tensor(ASYM, dtype=torch.float32)
    model.load_state_dict(state)
    model.zero_grad()
    out = model(batch["image"], task_ids=batch["task"])
    ce_task_loss(out, batch["labels"], "a").backward()
    for entries in model.group_parameters().values():  # under ASYM, a's loss trains c's group too
        assert all(p.grad[groups == 2].abs().sum() > 0 for _, p, groups in entries)


# --- GroupNorm in the routed section ----------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_forbidden_groups_get_exactly_zero_gradient_with_groupnorm(task):
    """24 channels in 3 split groups of 8: the model's GroupNorm (8 groups of 3) would put channels
    6-8 and 15-17 in one normalisation group across two split groups."""
    model = split_net(CHAIN, norm="group").train()
    batch = multi_source_batch(4, seed=1)
    out = model(batch["image"], task_ids=batch["task"])
    ce_task_loss(out, batch["labels"], task).backward()
    t = TASKS.index(task)
    assert all(is_zero(g) for _, g in forbidden_grads(model, t))
    assert all(g.abs().sum() > 0 for _, g in allowed_grads(model, t))


def test_routed_gradient_matches_masked_reference_with_groupnorm():
    """GroupNorm normalises each sample alone: one routed backward equals T masked backwards (float64),
    per-sample split-output gradients bit for bit."""
    model = split_net(CHAIN, norm="group", dtype=torch.float64).train()
    batch = multi_source_batch(4, seed=5, dtype=torch.float64)
    ids, labels = batch["task"], batch["labels"]
    loss_fn = lambda out, t: ce_task_loss(out, labels, TASKS[t])
    got, got_delta = routed(model, batch["image"], ids, loss_fn)
    ref, ref_delta = hand_masked_reference(model.net, model, batch["image"], ids, loss_fn)
    for name in model.split_modules:
        assert torch.equal(got_delta[name], ref_delta[name]), name
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "widths,tasks,want",
    [((8, 24), 3, 6), ((8, 48), 3, 6), ((8, 72), 3, 9), ((8, 32), 2, 8)],
    ids=["24ch-3tasks", "48ch-3tasks", "72ch-3tasks", "32ch-2tasks-already-aligned"],
)
def test_groupnorm_groups_are_aligned_inside_split_groups(widths, tasks, want):
    names = TASKS[:tasks]
    torch.manual_seed(0)
    net = build_multitask(model_config("group", widths=widths), data_info(names))
    model = GradSplitNet(net, names, torch.eye(tasks))
    norms = model.aligned_norms
    assert norms  # bn2 and the shortcut's norm of every split block
    for name, split_module in norms.items():
        gn = model.net.backbone.get_submodule(name)
        assert gn.num_groups == want, name
        split = model.groups[split_module]
        per_norm_group = split.view(gn.num_groups, -1)  # contiguous, equal GroupNorm groups
        assert bool((per_norm_group == per_norm_group[:, :1]).all()), name


def test_groupnorm_that_cannot_be_aligned_is_refused_naming_the_keys():
    """32 channels in split groups of 11, 11, 10: only single-channel GroupNorm groups would fit."""
    torch.manual_seed(0)
    net = build_multitask(model_config("group", widths=(8, 32)), data_info())
    with pytest.raises(ValueError,
                       match=r"model\.norm=group.*stage2\.0.*32 channels.*3 tasks.*model\.widths"):
        GradSplitNet(net, TASKS, torch.eye(3))
