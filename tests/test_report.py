"""``medley report``: PNG plots and a comparison table from run directories."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

import tests.helpers.toy_phases  # noqa: F401 - registers toy_phases
from framework import report as report_mod
from framework.plots import heatmap_svg, xy_svg
from framework.run import train
from tests.conftest import run_cli

PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; the file must be a complete PNG (IEND last)."""
    data = path.read_bytes()
    assert data[:8] == PNG, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path.name} is truncated"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def phase_run(tmp_path_factory, data_root):
    from framework.compose import compose

    run = tmp_path_factory.mktemp("report") / "run"
    cfg = compose([f"paths.data_root={data_root}", f"paths.run_dir={run}", "logger.progress=off",
                   "logger.tensorboard=false", "data.limit=512", "data.batch_size=32", "data.eval_batch_size=128",
                   "model.widths=[8,16]", "trainer.max_steps=8", "trainer.log_every=1", "trainer.eval_every=4",
                   "algorithm=toy_phases"])
    train(cfg)
    return run


def test_report_writes_png_curves_the_phase_by_set_matrix_and_a_table(phase_run, data_root):
    out = run_cli("-c", "import tests.helpers.toy_phases, sys; from launchers.cli import main; "
                  f"main(['report', '{phase_run}', 'paths.data_root={data_root}'])")
    assert out.returncode == 0, out.stderr[-2000:]
    names = sorted(p.name for p in (phase_run / "report").iterdir())
    assert "train_loss.png" in names and "matrix_left_acc.png" in names and "matrix_right_acc.png" in names
    assert any(n.startswith("tasks_val_") for n in names), names  # left and right on one figure
    for name in names:
        if name.endswith(".png"):
            w, h = _png_size(phase_run / "report" / name)
            assert w > 100 and h > 100
    table = (phase_run / "report" / "report.md").read_text()
    final = json.loads((phase_run / "summary.json").read_text())["final_metrics"]
    assert "test/left/acc" in table and f"{final['test/left/acc']:.4f}" in table


def test_plotted_curves_are_the_values_in_metrics_jsonl(phase_run, tmp_path, monkeypatch):
    drawn = {}
    real = report_mod.xy_png

    def record(series, path, *args, **kwargs):
        drawn[path.name] = {k: list(v) for k, v in series.items()}
        return real(series, path, *args, **kwargs)

    monkeypatch.setattr(report_mod, "xy_png", record)
    report_mod.write_reports([str(phase_run)], tmp_path, algorithm_figures=False)
    rows = [json.loads(line) for line in (phase_run / "metrics.jsonl").read_text().splitlines()]
    loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert len(loss) >= 8 and drawn["train_loss.png"] == {"train/loss": loss}
    left = [(r["step"], r["val/left/acc"]) for r in rows if "val/left/acc" in r]
    assert len(left) >= 2 and drawn["tasks_val_acc.png"]["left"] == left
    _png_size(tmp_path / "train_loss.png")


def test_comparing_runs_gives_delta_m_against_the_baseline(tmp_path):
    runs = []
    for name, acc in (("base", 0.5), ("better", 0.6)):
        run = tmp_path / name / "2026"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1.0 / s}) + "\n"
                                                   for s in (1, 2, 3)))
        (run / "summary.json").write_text(json.dumps({"algorithm": name, "steps": 3, "wall_s": 1.0, "final_metrics": {
            "test/left/acc": acc, "test/right/acc": 0.5, "test/left/loss": 1.0, "test/right/loss": 1.0}}))
        runs.append(str(run))
    written = report_mod.write_reports(runs, tmp_path / "cmp", algorithm_figures=False)
    table = (tmp_path / "cmp" / "report.md").read_text()
    # +20 % on one of four entries: Δm = 5 %
    assert "+5.00" in table and "+0.00" in table
    assert {p.name for p in written} >= {"compare_train_loss.png", "delta_m.png", "report.md"}
    _png_size(tmp_path / "cmp" / "delta_m.png")


def test_roc_json_of_a_run_is_plotted(tmp_path):
    run = tmp_path / "faces"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    (run / "roc_test.json").write_text(json.dumps({"far": [0.0, 0.001, 0.01, 1.0], "tar": [0.0, 0.2, 0.5, 1.0]}))
    written = report_mod.write_reports([str(run)], None, algorithm_figures=False)
    assert run / "report" / "roc.png" in written
    _png_size(run / "report" / "roc.png")


def test_svg_plots_for_algorithm_figures_stay_valid_and_skip_missing_values():
    svg = xy_svg({"a": [(0, 1.0), (1, float("nan")), (2, 0.5)]}, "t", "x", "y")
    assert ET.fromstring(svg).tag.endswith("svg") and svg.count("<polyline") == 1
    heat = heatmap_svg(["p1", "p2"], ["s1"], [[0.5], [None]], "m")
    assert ET.fromstring(heat) is not None and 'fill="#eee"' in heat


def test_report_of_a_missing_run_names_it(tmp_path):
    out = run_cli("-m", "launchers.cli", "report", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "nothing" in out.stderr
