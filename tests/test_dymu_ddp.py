"""DYMU under 2-process DDP: all four stages, hypernetworks grown at their phases, equal to one process
with the global batch ((r, c) and the Gumbel noise are drawn from (seed, step), the same on every rank)."""

from __future__ import annotations

import pytest
import torch

from framework.run import train
from tests.helpers.dist_workers import FinalWeights, compose
from tests.helpers.distributed import run_workers
from tests.helpers.dymu_workers import TINY, train_dymu

#: GroupNorm (no batch statistics), SGD for the anchor stages, the same sample order at any world size
PARITY = ["model.norm=group", "optim.name=sgd", "optim.lr=0.05", "trainer.precision=fp32", "data.order=global",
          "algorithm.hyper_lr=0.0003", "trainer.max_steps=12"]


@pytest.mark.distributed
def test_two_process_ddp_matches_one_process_with_the_global_batch(data_root, tmp_path):
    hook = FinalWeights()
    train(compose(data_root, *TINY, *PARITY, "data.batch_size=8", f"paths.run_dir={tmp_path / 'one'}"), hooks=[hook])
    results = run_workers(train_dymu, world_size=2, timeout=300,
                          args=(str(data_root), [*PARITY, "strategy=ddp", "data.batch_size=4",
                                                 f"paths.run_dir={tmp_path / 'two'}"]))
    got = {k: torch.as_tensor(v) for k, v in results[0]["weights"].items()}
    assert got.keys() == hook.weights.keys()
    assert any(k.startswith("edge_hyper.") for k in got) and any(k.startswith("weight_hyper.") for k in got)
    assert got["weight_hyper.out.weight"].abs().sum() > 0  # trained away from its zero initialisation
    for k in got:  # Adam in the hypernetwork stages magnifies summation-order noise: a small lr keeps it ~1e-6
        torch.testing.assert_close(got[k], hook.weights[k], rtol=1e-5, atol=1e-5, msg=k)
    assert results[0]["summary"]["world_size"] == 2 and results[0]["summary"]["steps"] == 12
