"""2-process DDP and ZeRO-1/2/3 end with the same parameters as one process (20 steps, real gloo).

Both sides see the same global batches (``data.order=global``), GroupNorm (no batch
statistics), SGD, fp32 and the same gradient clipping, so the only difference left is where
gradients are averaged. One process uses batch B; two processes use B/2 each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers.dist_workers import PARITY, FinalWeights, compose, train_many
from tests.helpers.distributed import run_workers

GLOBAL_BATCH = 32
ATOL = 1e-5

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> dict:
    """One process, global batch B."""
    from framework.run import train

    run = tmp_path_factory.mktemp("single")
    hook = FinalWeights()
    summary = train(compose(data_root, *PARITY, f"data.batch_size={GLOBAL_BATCH}", f"paths.run_dir={run}",
                            "strategy.device=cpu"), hooks=[hook])
    norms = [r["train/grad_norm"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if "train/grad_norm" in r]
    return {"weights": hook.weights, "initial": hook.initial, "summary": summary, "grad_norms": norms}


def assert_same_weights(got: dict, want: dict) -> None:
    got = {k: torch.as_tensor(v) for k, v in got.items()}
    assert got.keys() == want.keys()
    worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
    print(f"max abs difference {worst:.3g}")
    assert worst <= ATOL, f"max abs difference {worst:.3g} > {ATOL}"


def test_global_order_gives_every_world_size_the_same_global_batches(data_root):
    from framework.config import plugin_config
    from framework.data.module import DataModule
    from framework.registry import DATASETS

    cfg = compose(data_root, *PARITY, f"data.batch_size={GLOBAL_BATCH}")

    def ids(world: int, rank: int, batch: int) -> list[list[int]]:
        data_cfg = plugin_config(cfg.data, DATASETS)
        data_cfg.batch_size = batch
        stream = DataModule(data_cfg, data_root, cfg.trainer.seed, rank, world).epoch_batches()
        return [sorted(next(stream)["id"].tolist()) for _ in range(20)]

    one = ids(1, 0, GLOBAL_BATCH)
    two = [ids(2, r, GLOBAL_BATCH // 2) for r in range(2)]
    for k in range(20):  # crosses an epoch boundary (16 global batches per epoch)
        assert sorted(two[0][k] + two[1][k]) == one[k], f"global batch {k} differs"
        assert not set(two[0][k]) & set(two[1][k])


def test_reference_run_trains_and_clips(reference):
    changed = max((reference["weights"][k] - reference["initial"][k]).abs().max().item() for k in reference["weights"])
    assert changed > 1e-3  # the parameters moved: the comparison below is not between initial weights
    assert reference["summary"]["steps"] == 20
    assert max(reference["grad_norms"]) > 1.0  # grad_clip=1.0 was active on some steps


ACCUMULATE = ["trainer.accumulate_grad_batches=2", "trainer.max_steps=8"]


@pytest.fixture(scope="module")
def two_processes(data_root, tmp_path_factory) -> dict:
    """All 2-process runs in one process group: DDP (with and without accumulation), ZeRO-1/2/3."""
    root = tmp_path_factory.mktemp("two")
    half = [*PARITY, f"data.batch_size={GLOBAL_BATCH // 2}"]
    runs = {
        "ddp": [*half, "strategy=ddp"],
        "ddp_accumulate": [*half, *ACCUMULATE, "strategy=ddp"],
        **{f"zero{k}": [*half, "strategy=deepspeed", f"strategy.zero_stage={k}"] for k in (1, 2, 3)},
    }
    runs = {name: [*o, f"paths.run_dir={root / name}"] for name, o in runs.items()}
    rank0, _ = run_workers(train_many, world_size=2, args=(str(data_root), list(runs.values())), timeout=600)
    return dict(zip(runs, rank0))


def test_two_process_ddp_matches_one_process_after_20_steps(reference, two_processes):
    summary = two_processes["ddp"]["summary"]
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("ddp", 2, 20)
    assert_same_weights(two_processes["ddp"]["weights"], reference["weights"])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stage_matches_one_process_after_20_steps(reference, two_processes, stage):
    run = two_processes[f"zero{stage}"]
    summary = run["summary"]
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("deepspeed", 2, 20)
    assert Path(summary["run_dir"]).name == f"zero{stage}"
    assert_same_weights(run["weights"], reference["weights"])


def test_two_process_ddp_with_accumulation_matches_one_process(data_root, two_processes, tmp_path):
    """Micro-batches that do not end a step skip DDP's all-reduce (no_sync) and still add up to the
    same step as one process accumulating the same global batches."""
    from framework.run import train

    hook = FinalWeights()
    train(compose(data_root, *PARITY, *ACCUMULATE, f"data.batch_size={GLOBAL_BATCH}", f"paths.run_dir={tmp_path}",
                  "strategy.device=cpu"), hooks=[hook])
    assert two_processes["ddp_accumulate"]["summary"]["steps"] == 8
    assert_same_weights(two_processes["ddp_accumulate"]["weights"], hook.weights)
