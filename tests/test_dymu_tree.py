"""DYMU's anchor: any parent choice is a valid tree, pruning keeps the outputs, costs add up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from algorithms.dymu.anchor import (AnchorNet, TaskSpec, TreeNet, anchor_tree, cost_table, describe, shared_tree,
                                    used_nodes)
from framework.metrics.cost import count_parameters, forward_flops

TASKS = [TaskSpec("seg", 5, True), TaskSpec("depth", 3, True), TaskSpec("count", 4, False)]


def trained_anchor(seed: int = 0, norm: str = "batch") -> AnchorNet:
    """Streams that differ (random init per stream) with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = AnchorNet(3, [4, 8, 8, 8], TASKS, norm, stem_stride=2, output_stride=2)
    with torch.no_grad():
        net.train()
        for _ in range(3):
            net(torch.randn(8, 3, 16, 16))  # moves the running statistics away from 0/1
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


def random_tree(gen: torch.Generator, n: int, n_layers: int):
    parents = torch.randint(n, (n_layers - 1, n), generator=gen).tolist()
    return parents, list(range(n))


def test_any_sampled_parent_choice_is_a_valid_tree_whose_pruned_model_matches_the_anchor():
    net = trained_anchor()
    x = torch.randn(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(1)
    n, n_layers = net.n_tasks, net.n_layers
    for _ in range(25):
        parents, heads = random_tree(gen, n, n_layers)
        used = used_nodes(parents, heads)
        # valid: every used node's parent is used, every head's path reaches the first layer
        assert used[-1] == sorted(set(heads))
        for l in range(1, n_layers):
            assert {parents[l - 1][j] for j in used[l]} == set(used[l - 1])
        pruned = TreeNet(net, parents, heads)
        assert sorted(pruned.nodes) == sorted(f"{l}_{j}" for l, u in enumerate(used) for j in u)
        one_hot = F.one_hot(torch.tensor(parents), n).float()  # the full anchor, every node computed
        with torch.no_grad():
            full = net(x, mix=one_hot)
            routed = net(x, tree=(parents, heads))
            got = pruned(x)
        for t in TASKS:
            torch.testing.assert_close(got[t.name], full[t.name], rtol=0, atol=1e-6)
            torch.testing.assert_close(routed[t.name], full[t.name], rtol=0, atol=1e-6)
    with torch.no_grad():  # the fully branched tree is the anchor itself
        anchor_out, tree_out = net(x), TreeNet(net, *anchor_tree(n, n_layers))(x)
    for t in TASKS:
        assert torch.equal(anchor_out[t.name], tree_out[t.name])


def test_parameter_and_flop_counts_of_a_tree_equal_its_standalone_model():
    net = trained_anchor(norm="group")
    table = cost_table(net, (3, 16, 16))
    x = torch.zeros(1, 3, 16, 16)
    gen = torch.Generator().manual_seed(2)
    trees = [random_tree(gen, 3, 4) for _ in range(6)] + [anchor_tree(3, 4), shared_tree(3, 4)]
    seen = set()
    for parents, heads in trees:
        model = TreeNet(net, parents, heads).eval()
        cost = table.cost(parents, heads)
        assert cost["params"] == count_parameters(model)
        assert cost["flops"] == forward_flops(model, x)
        assert cost["nodes"] == len(model.nodes)
        seen.add(cost["nodes"])
    assert len(seen) > 2  # the trees really differ in size
    assert table.cost(*anchor_tree(3, 4))["params"] == count_parameters(net)


def test_batchnorm_shifts_are_baked_into_the_standalone_model():
    net = trained_anchor()
    parents, heads = [[0, 0, 2], [0, 0, 2], [0, 1, 2]], [0, 1, 2]
    gen = torch.Generator().manual_seed(3)
    deltas = {(l, j): (torch.randn(net.node(l, j).channels, generator=gen),
                       torch.randn(net.node(l, j).channels, generator=gen)) for l in range(4) for j in range(3)}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        routed = net(x, tree=(parents, heads), deltas=deltas)
        plain = net(x, tree=(parents, heads))
        baked = TreeNet(net, parents, heads, deltas)(x)
    for t in TASKS:
        torch.testing.assert_close(baked[t.name], routed[t.name], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(plain[t.name], routed[t.name])


def test_describe_names_which_tasks_each_used_node_serves():
    text = describe([[0, 0, 2], [0, 1, 2]], [0, 1, 2], ["a", "b", "c"])
    assert text.splitlines() == ["layer 0: [a+b]@a  [c]@c", "layer 1: [a]@a  [b]@b  [c]@c",
                                 "layer 2: [a]@a  [b]@b  [c]@c"]
