"""``medley eval`` re-evaluates a run's checkpoint and reproduces the trainer's final metrics."""

import json

from framework.run import train
from tests.conftest import run_cli


def test_medley_eval_prints_a_table_and_writes_json(compose, data_root, tmp_path):
    summary = train(compose("trainer.max_steps=4", f"paths.run_dir={tmp_path / 'run'}"))
    out = run_cli("-m", "launchers.cli", "eval", str(tmp_path / "run"), env={"MEDLEY_DATA": str(data_root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test/left/acc" in out.stdout
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["step"] == 4
    for key in ("test/left/acc", "test/right/acc"):
        assert result["metrics"][key] == summary["final_metrics"][key]


def test_medley_eval_missing_target_names_it(tmp_path):
    out = run_cli("-m", "launchers.cli", "eval", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "nothing" in out.stderr
