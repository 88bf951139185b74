from tests.helpers.demo import sum_ranks
from tests.helpers.distributed import run_workers


def test_two_process_gloo_all_reduce_sums_over_ranks():
    assert run_workers(sum_ranks, world_size=2) == [3.0, 3.0]
