"""Data-parallel CDT: 2 ranks × half batches end with the parameters of 1 rank × the whole batch
(GroupNorm, fp32, global data order), through second-order fast weights and pooled Σ."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from algorithms.cdt.meta import MetaSettings
from framework.config import ConfigError
from framework.run import check_capabilities
from tests.helpers.cdt_workers import ddp_worker, lonely_worker, tiny_net, train_steps
from tests.helpers.distributed import run_workers

STEPS = 3


# second order through all (i, j) pairs with Σ in the graph; first order with one sampled pair
CASES = [(MetaSettings(alpha=0.05, lam=0.5, second_order=True, normalize="l2_trace"), 0),
         (MetaSettings(alpha=0.05, lam=0.5, second_order=False, normalize="l2_trace", detach_cov=True), 1)]


@pytest.mark.distributed
def test_two_ranks_with_half_batches_match_one_rank_with_the_whole_batch():
    torch.set_num_threads(1)
    initial = {k: v.detach().numpy().copy() for k, v in tiny_net().state_dict().items()}
    ranks = run_workers(ddp_worker, world_size=2, args=(CASES, STEPS), timeout=240)
    for case, (settings, pairs_per_step) in enumerate(CASES):
        single = train_steps(tiny_net(), settings, STEPS, pairs_per_step=pairs_per_step)
        moved = max(float(np.abs(single[k] - initial[k]).max()) for k in single)
        assert moved > 1e-3  # the comparison is not between untouched parameters
        for params in (r[case] for r in ranks):
            for key, value in single.items():
                np.testing.assert_allclose(params[key], value, atol=1e-5, rtol=1e-4, err_msg=f"{case}: {key}")


@pytest.mark.distributed
def test_a_rank_whose_slice_forms_no_triplet_still_joins_every_collective():
    ranks = run_workers(lonely_worker, world_size=2, args=(2,), timeout=120)
    for key, value in ranks[0].items():
        np.testing.assert_array_equal(ranks[1][key], value, err_msg=key)  # averaged: identical


def test_deepspeed_is_refused_naming_both_sides():
    cfg = OmegaConf.create({"algorithm": {"name": "cdt"}, "strategy": {"name": "deepspeed"},
                            "trainer": {"precision": "fp32", "accumulate_grad_batches": 1}})
    with pytest.raises(ConfigError, match=r"'cdt'.*'deepspeed'"):
        check_capabilities(cfg)
