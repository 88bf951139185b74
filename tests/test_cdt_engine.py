"""The ``cdt`` plugin through the real engine: its configs compose, it trains and evaluates in
the trainer, and under 2-process DDP every rank ends with the same weights."""

import numpy as np
import pytest
import torch

from algorithms._face.episodes import MemoryEpisodes
from benchmarks.cdt_bench import make_config, run_once
from framework.compose import compose
from tests.conftest import SHARED_DATA
from tests.helpers.cdt_workers import engine_worker
from tests.helpers.distributed import run_workers


@pytest.mark.parametrize("arm,mode,use_cdt,triplet", [("cdt", "meta", True, 1.0), ("cdt_meta", "meta", False, 1.0),
                                                       ("face_cosface", "pooled", False, 0.0)])
def test_benchmark_arms_compose_from_one_experiment_file(arm, mode, use_cdt, triplet):
    cfg = compose(["experiment=cdt_faces", f"algorithm={arm}", "data.holdout_domain=yale"])
    a = cfg.algorithm
    assert (a.name, a.mode, a.use_cdt, a.triplet_weight) == ("cdt", mode, use_cdt, triplet)
    assert a.eval_domain == "yale" and a.normalize == "l2_trace"
    assert a.pairs_per_step == 0 and a.second_order  # every domain pair, second order: the same images per step
    assert cfg.data.episodic and cfg.data.holdout_domain == "yale"


def _memory_episodes() -> MemoryEpisodes:
    g = torch.Generator().manual_seed(0)
    train = {}
    for d in range(3):
        labels = torch.arange(4).repeat_interleave(4) + 4 * d
        train[f"dom{d}"] = (torch.rand(len(labels), 1, 8, 8, generator=g) + 0.2 * d, labels)
    test = (torch.rand(12, 1, 8, 8, generator=g), torch.arange(4).repeat_interleave(3) + 100)
    return MemoryEpisodes(train, {"test": test}, num_identities=12, p=2, k=4, seed=0)


@pytest.mark.parametrize("mode,use_cdt", [("meta", True), ("pooled", False)])
def test_trains_and_verifies_through_the_trainer(mode, use_cdt):
    cfg = make_config({"mode": mode, "use_cdt": use_cdt, "alpha": 0.05, "pairs_per_step": 2, "second_order": True,
                       "normalize": "l2_trace", "scale": 8.0, "embedding_dim": 8, "triplet_dim": 4,
                       "flip_test": False},
                      model={"widths": [4, 8], "norm": "group", "stem_stride": 1},
                      trainer={"max_steps": 4, "log_every": 2}, optim={"lr": 0.05}, data_name="memory")
    out = run_once(cfg, _memory_episodes(), after_steps=0)
    assert out["pairs_pos"] == 4 * 3 and out["pairs_neg"] == 66 - 12  # all pairs of the 12 test images
    assert 0.0 <= out["auc"] <= 1.0 and 0.0 <= out["rank1"] <= 1.0
    assert (0.0 <= out["hinge_active"] <= 1.0) if use_cdt else np.isnan(out["hinge_active"])


@pytest.mark.distributed
def test_ddp_ranks_end_with_identical_weights(data_root, tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the face sets are not at {SHARED_DATA}")
    overrides = ["trainer.max_steps=3", "data.limit=100", "data.episode_p=4", "data.episode_k=2",
                 "data.holdout_domain=yale", "model.widths=[4,8]", "algorithm.embedding_dim=16",
                 "algorithm.triplet_dim=8", "logger.progress=off", "logger.tensorboard=false"]
    ranks = run_workers(engine_worker, world_size=2, args=(str(data_root), str(tmp_path / "run"), overrides),
                        timeout=240)
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [3, 3]
    for key, value in ranks[0]["weights"].items():
        np.testing.assert_array_equal(ranks[1]["weights"][key], value, err_msg=key)
    # the ranks drew different episodes, so equality means the gradients were averaged
    assert max(np.abs(ranks[0]["weights"][k] - ranks[0]["initial"][k]).max() for k in ranks[0]["weights"]) > 1e-4
