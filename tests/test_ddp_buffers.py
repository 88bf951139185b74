"""Under 2-process DDP with BatchNorm, every rank evaluates and checkpoints rank 0's buffers, so the
run's final metrics are exactly what ``medley eval`` computes from the last checkpoint."""

from __future__ import annotations

import pytest

import json

from tests.conftest import run_cli
from tests.helpers.dist_workers import train_many
from tests.helpers.distributed import run_workers

pytestmark = pytest.mark.distributed

RUN = ["strategy=ddp", "model.norm=batch", "model.widths=[8,16]", "trainer.max_steps=30", "data.batch_size=32",
       "data.limit=1024", "data.eval_batch_size=128", "logger.progress=off", "logger.tensorboard=false",
       "optim.lr=0.2"]


@pytest.mark.parametrize("algorithm", ["equal_weight", "pcgrad"])  # automatic and manual optimization
def test_final_metrics_equal_medley_eval_of_the_last_checkpoint(algorithm, data_root, tmp_path):
    run = tmp_path / "run"
    results = run_workers(train_many, world_size=2, timeout=300,
                          args=(str(data_root), [[*RUN, f"algorithm={algorithm}", f"paths.run_dir={run}"]]))
    final = results[0][0]["summary"]["final_metrics"]
    out = run_cli("-m", "launchers.cli", "eval", str(run), "--split", "val", "--split", "test",
                  f"paths.data_root={data_root}")  # the user's command, in a process of its own
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads((run / "eval.json").read_text())["metrics"]
    assert {k: final[k] for k in again} == again
