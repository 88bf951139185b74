"""The face benchmark's protocol: rotating test/validation domains, arms on one budget, and
the paired statistics it reports."""

import numpy as np
import pytest
from scipy import stats

from benchmarks.cdt_bench import paired
from benchmarks.cdt_faces import ARMS, DOMAINS, SCRATCH_ONLY, fold, plan


def test_each_domain_is_tested_once_and_validated_once_and_neither_is_trained_on():
    folds = [fold(d) for d in DOMAINS]
    assert sorted(f["test"] for f in folds) == sorted(DOMAINS) == sorted(f["val"] for f in folds)
    for f in folds:
        assert f["val"] != f["test"] and f["test"] not in f["train"] and f["val"] not in f["train"]
        assert sorted([f["test"], f["val"], *f["train"]]) == sorted(DOMAINS)


def test_every_arm_gets_the_same_steps_and_finetune_starts_after_its_pooled_cosface_run():
    class Args:
        seeds, test, arms, overrides = [0, 1], list(DOMAINS), list(ARMS), []
        steps, ft_steps, ft_lr, finetune, run_root = 30, 10, 0.01, True, "runs"

    tasks = plan(Args)
    scratch = [t for t in tasks if t["protocol"] == "scratch"]
    finetune = [t for t in tasks if t["protocol"] == "finetune"]
    assert {t["steps"] for t in scratch} == {30} and {t["steps"] for t in finetune} == {10}
    assert len(scratch) == 4 * 2 * len(ARMS) and len(finetune) == 4 * 2 * (len(ARMS) - len(SCRATCH_ONLY))
    for seed in Args.seeds:  # each seed's fine-tune runs come after its pooled-CosFace scratch runs
        mine = [i for i, t in enumerate(tasks) if t["seed"] == seed]
        starts = [i for i in mine if tasks[i]["protocol"] == "scratch" and tasks[i]["arm"] == "cosface"]
        assert starts == mine[:len(starts)] and len(starts) == 4
        assert max(starts) < min(i for i in mine if tasks[i]["protocol"] == "finetune")
    # the meta arms differ from each other only in the keys that define them
    assert ARMS["cdt_alpha0"] == ["algorithm=cdt", "algorithm.alpha=0"]


def test_paired_statistics_match_scipy_and_count_wins():
    d = np.array([0.012, -0.004, 0.020, 0.007, 0.001, -0.002])
    st = paired(list(d))
    ref = stats.ttest_rel(d, np.zeros_like(d))
    assert st["t"] == pytest.approx(ref.statistic) and st["p"] == pytest.approx(ref.pvalue)
    assert st["mean"] == pytest.approx(d.mean()) and st["std"] == pytest.approx(d.std(ddof=1))
    assert (st["wins"], st["n"]) == (4, 6)
