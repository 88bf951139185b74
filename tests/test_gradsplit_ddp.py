"""GradSplit routing composes with DDP: exact zeros survive the gradient all-reduce."""

from __future__ import annotations

import pytest

from tests.helpers.distributed import run_workers
from tests.helpers.gradsplit_workers import ddp_zero_gradients


@pytest.mark.distributed
def test_forbidden_groups_get_exactly_zero_gradient_under_two_process_ddp_with_accumulation():
    for rank, result in enumerate(run_workers(ddp_zero_gradients, world_size=2)):
        assert result == {
            "forbidden_zero": True,
            "allowed_nonzero": True,
            "absent_task_group_zero": True,
            "ranks_agree": True,
        }, rank
