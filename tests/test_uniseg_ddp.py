"""UniSeg under 2-process DDP: the same run as one process, statistics pass and relations included."""

from __future__ import annotations

import json

import numpy as np
import pytest

import algorithms.uniseg  # noqa: F401 - registers uniseg
from framework.run import train
from tests.helpers.dist_workers import PARITY, FinalWeights, compose
from tests.helpers.distributed import run_workers
from tests.helpers.uniseg_workers import train_global_batches, uneven_void_gradients

pytestmark = pytest.mark.distributed

# the parity settings (GroupNorm, SGD, fp32, clipping) on a small copy of seg_label_shift: 3 steps of
# stage 1, the statistics pass, 1 step of stage 2. Stage 2 steps with SGD here: Adam's first step,
# lr·g/(|g|+eps), turns float-rounding differences of near-zero gradients into differences up to lr.
# data.order=global serves single-split data only: GlobalBatches gives the mixture the same batches.
COMMON = [*(o for o in PARITY if not o.startswith(("data.order", "data.limit", "trainer.max_steps"))),
          "experiment=uniseg_label_shift", "data.limit=64", "trainer.max_steps=4", "algorithm.phase_eval_sets=[]",
          "optim.name=sgd", "optim.lr=0.01", "optim.warmup_steps=0", "algorithm.stage2_optimizer=sgd",
          "algorithm.stage2_lr=0.01", "logger.tensorboard=false"]
GLOBAL_BATCH = 32
ATOL = 1e-5


def test_loss_normalised_by_the_global_labelled_count_makes_ddp_gradients_equal_the_global_batch():
    ranks = run_workers(uneven_void_gradients, world_size=2, timeout=120)
    for r in ranks:
        np.testing.assert_allclose(r["ddp"], r["single"], rtol=1e-5, atol=1e-7)
        assert not np.allclose(r["local_mean"], r["single"], rtol=1e-3)  # per-rank means would not


def test_two_process_ddp_matches_one_process_with_the_same_global_batches(data_root, tmp_path):
    one = FinalWeights()
    summary = train(compose(data_root, *COMMON, f"data.batch_size={GLOBAL_BATCH}", f"paths.run_dir={tmp_path / 'one'}"),
                    hooks=[one])
    results = run_workers(train_global_batches, world_size=2, timeout=300,
                          args=(str(data_root), [*COMMON, "strategy=ddp", f"data.batch_size={GLOBAL_BATCH // 2}",
                                                 f"paths.run_dir={tmp_path / 'two'}"]))
    two = results[0]
    moved = max((one.weights[k] - one.initial[k]).abs().max().item() for k in one.weights)
    assert moved > 1e-3  # both stages trained: the comparison is not between initial weights
    worst = max(float(np.abs(two["weights"][k] - one.weights[k].numpy()).max()) for k in one.weights)
    print(f"max abs weight difference {worst:.3g}")
    assert worst <= ATOL
    # the statistics pass saw every training pixel once across ranks and gave the same relations
    rel_one = json.loads((tmp_path / "one" / "relations.json").read_text())
    rel_two = json.loads((tmp_path / "two" / "relations.json").read_text())
    assert sum(map(sum, rel_two["pixels"])) == sum(map(sum, rel_one["pixels"])) == 3 * 64 * 48 * 48
    assert rel_two["relations"] == rel_one["relations"]
    np.testing.assert_allclose(rel_two["mean_prob"], rel_one["mean_prob"], atol=1e-6)
    for key, value in summary["final_metrics"].items():
        assert two["summary"]["final_metrics"][key] == pytest.approx(value, abs=1e-3), key
    assert two["summary"]["world_size"] == 2 and two["summary"]["steps"] == summary["steps"] == 4
