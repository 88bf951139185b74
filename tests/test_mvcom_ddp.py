"""Data-parallel MvCoM (the strategies its capabilities declare: single and ddp): 2 ranks × half
batches end with the φ and face-net parameters of 1 rank × the whole batch, in both meta modes
(second-order look-ahead through a rank-summed inner gradient); and through the engine under
2-process DDP every rank ends with the same table and weights."""

import numpy as np
import pytest
import torch

from algorithms.mvcom.method import MvCoM
from tests.helpers.distributed import run_workers
from tests.helpers.mvcom_workers import engine_worker, face_folder, tiny_setup, train_steps
from tests.test_mvcom_train import toy_overrides

STEPS, MODES = 3, ["table", "per_sample_regress"]


def test_capabilities_declare_single_and_ddp_only():
    assert MvCoM.capabilities.strategies == ("single", "ddp") and MvCoM.capabilities.manual_optimization


@pytest.mark.distributed
def test_two_ranks_match_one_rank_and_end_identical_through_the_engine(data_root, tmp_path):
    torch.set_num_threads(1)
    folder = face_folder(tmp_path / "toy")
    overrides = toy_overrides(folder, data_root, tmp_path / "run", steps=4)
    ranks = run_workers(engine_worker, world_size=2, args=(overrides, MODES, STEPS), timeout=300)
    # 2 ranks × half batches == 1 rank × the whole batch
    net, _ = tiny_setup()
    initial = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    for mode in MODES:
        single = train_steps(mode, STEPS)
        assert np.abs(single["phi"]).max() > 1e-3  # the table moved
        assert max(float(np.abs(single[k] - initial[k]).max()) for k in initial) > 1e-3
        for r in ranks:
            for key, value in single.items():
                np.testing.assert_allclose(r["steps"][mode][key], value, atol=1e-5, rtol=1e-4,
                                           err_msg=f"{mode}: {key}")
    # the engine under DDP: the same table and weights on every rank
    a, b = ranks[0]["engine"], ranks[1]["engine"]
    assert [a["world_size"], b["world_size"]] == [2, 2] and [a["steps"], b["steps"]] == [4, 4]
    np.testing.assert_array_equal(a["phi"], b["phi"])
    assert np.abs(a["phi"]).max() > 0  # the ranks drew different meta batches: equality means averaging
    for key, value in a["model"].items():
        np.testing.assert_array_equal(b["model"][key], value, err_msg=key)
