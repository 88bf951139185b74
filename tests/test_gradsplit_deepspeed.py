"""GradSplit under DeepSpeed: routing lives in one backward, which no ZeRO stage touches, so every
stage keeps forbidden groups at exactly zero and trains like one process. What cannot run there
(the look-ahead relation, the PCGrad baseline) is refused at start-up, saying why."""

from __future__ import annotations

import pytest
import torch

from framework.config import ConfigError
from tests.helpers.dist_workers import FinalWeights, compose
from tests.helpers.distributed import run_workers
from tests.helpers.gradsplit_workers import DS_GLOBAL_BATCH, DS_PARITY, deepspeed_routing

STAGES = [1, 2, 3]
ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> dict:
    """One process, global batch B."""
    from framework.run import train

    hook = FinalWeights()
    run = tmp_path_factory.mktemp("single")
    train(compose(data_root, *DS_PARITY, f"data.batch_size={DS_GLOBAL_BATCH}", f"paths.run_dir={run}",
                  "strategy.device=cpu"), hooks=[hook])
    return {"weights": hook.weights, "initial": hook.initial}


@pytest.fixture(scope="module")
def zero_runs(data_root, tmp_path_factory) -> dict:
    """Two processes, every ZeRO stage in one process group."""
    root = tmp_path_factory.mktemp("zero")
    rank0, rank1 = run_workers(deepspeed_routing, world_size=2, args=(str(data_root), str(root), STAGES),
                               timeout=600)
    return {stage: (r0, r1) for stage, r0, r1 in zip(STAGES, rank0, rank1)}


@pytest.mark.distributed
@pytest.mark.parametrize("stage", STAGES)
def test_forbidden_groups_get_exactly_zero_gradient_under_two_process_zero_stage(zero_runs, stage):
    for rank, result in enumerate(zero_runs[stage]):
        assert result["checked"] > 0, rank
        assert (result["forbidden_unchanged"], result["allowed_moved"]) == (True, True), rank


@pytest.mark.distributed
@pytest.mark.parametrize("stage", STAGES)
def test_gradsplit_under_zero_stage_matches_one_process(reference, zero_runs, stage):
    run = zero_runs[stage][0]
    summary = run["summary"]
    assert (summary["strategy"], summary["world_size"], summary["steps"]) == ("deepspeed", 2, 6)
    got = {k: torch.as_tensor(v) for k, v in run["weights"].items()}
    want = reference["weights"]
    assert got.keys() == want.keys() and "relation" in got
    moved = max((want[k] - reference["initial"][k]).abs().max().item() for k in want)
    assert moved > 1e-3  # the comparison is not between initial weights
    worst = max((got[k].double() - want[k].double()).abs().max().item() for k in want)
    print(f"ZeRO-{stage}: max abs difference {worst:.3g}")
    assert worst <= ATOL, f"ZeRO-{stage}: max abs difference {worst:.3g} > {ATOL}"


def test_lookahead_relation_is_refused_under_deepspeed_saying_why(data_root):
    from framework.run import check_capabilities

    cfg = compose(data_root, "algorithm=gradsplit", "algorithm.relation=lookahead", "strategy=deepspeed")
    with pytest.raises(ConfigError, match=r"relation=lookahead.*strategy=deepspeed.*autograd\.grad"):
        check_capabilities(cfg)
    check_capabilities(compose(data_root, "algorithm=gradsplit", "algorithm.relation=[[1,1],[0,1]]",
                               "strategy=deepspeed"))  # a fixed relation runs


def test_pcgrad_is_refused_under_deepspeed_saying_why(data_root):
    from framework.run import check_capabilities

    cfg = compose(data_root, "algorithm=pcgrad", "strategy=deepspeed")
    with pytest.raises(ConfigError, match=r"'pcgrad'.*'deepspeed'.*whole gradient.*before any reduction"):
        check_capabilities(cfg)
