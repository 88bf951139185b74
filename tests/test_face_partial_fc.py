"""The class-sharded margin head at 2 ranks equals the unsharded head on the whole batch."""

import itertools

import numpy as np
import pytest
import torch

from algorithms._face.heads import MarginHead
from algorithms._face.partial_fc import ShardedMarginHead, class_range
from tests.helpers.distributed import run_workers

B, D, C, E = 8, 6, 7, 5  # global batch, input dim, classes (odd: uneven shards), embedding dim


def _problem(kind: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g)
    labels = torch.randint(0, C, (B,), generator=g)
    labels[3] = -1  # an unlabelled row
    margins = torch.rand(B, generator=g) * 0.4 + 0.1
    backbone = torch.randn(E, D, generator=g) * 0.3
    weight = torch.randn(C, E, generator=g)
    return x, labels, margins, backbone, weight


def _unsharded(kind: str):
    x, labels, margins, backbone, weight = _problem(kind)
    lin = torch.nn.Linear(D, E, bias=False)
    head = MarginHead(E, C, scale=16.0, kind=kind)
    with torch.no_grad():
        lin.weight.copy_(backbone)
        head.weight.copy_(weight)
    loss = head.loss(lin(x), labels, margins)
    loss.backward()
    return float(loss.detach()), lin.weight.grad.numpy(), head.weight.grad.numpy()


def sharded_worker(rank: int, world: int, kinds: tuple[str, ...]) -> dict:
    return {kind: _sharded(rank, world, kind) for kind in kinds}


def _sharded(rank: int, world: int, kind: str):
    import torch.distributed as dist

    x, labels, margins, backbone, weight = _problem(kind)
    rows = slice(rank * B // world, (rank + 1) * B // world)
    lin = torch.nn.Linear(D, E, bias=False)
    head = ShardedMarginHead(E, C, rank, world, scale=16.0, kind=kind)
    with torch.no_grad():
        lin.weight.copy_(backbone)
        head.weight.copy_(weight[head.start:head.end])
    loss = head.loss(lin(x[rows]), labels[rows], margins[rows])
    loss.backward()
    dist.all_reduce(lin.weight.grad)  # what DDP does to the backbone: average over ranks
    lin.weight.grad /= world
    loss = loss.detach()
    # plain arrays: tensors would travel through shared memory that dies with the worker
    return float(loss), lin.weight.grad.numpy(), (head.start, head.end, head.weight.grad.numpy())


def test_class_ranges_cover_every_class_once():
    for c, w in [(7, 2), (10, 3), (2, 2)]:
        ranges = [class_range(c, r, w) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == c
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


@pytest.mark.distributed
def test_sharded_head_at_two_ranks_matches_the_unsharded_head():
    kinds = ("cosface", "arcface")
    results = run_workers(sharded_worker, world_size=2, args=(kinds,))  # one process group for both
    for kind in kinds:
        _compare(kind, [r[kind] for r in results])


def _compare(kind: str, results: list) -> None:
    loss, backbone_grad, weight_grad = _unsharded(kind)
    covered = set()
    for rank_loss, rank_backbone_grad, (start, end, shard_grad) in results:
        covered |= set(range(start, end))
        assert abs(rank_loss - loss) < 1e-5, kind
        np.testing.assert_allclose(rank_backbone_grad, backbone_grad, atol=1e-5, rtol=1e-4)
        np.testing.assert_allclose(shard_grad, weight_grad[start:end], atol=1e-5, rtol=1e-4)
    assert covered == set(range(C))
