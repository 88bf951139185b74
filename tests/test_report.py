"""``medley report``: SVG plots from a run directory."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import tests.helpers.toy_phases  # noqa: F401 - registers toy_phases
from framework.plots import heatmap_svg, xy_svg
from framework.run import train
from tests.conftest import run_cli


def test_report_plots_curves_and_the_phase_by_set_matrix(compose, data_root, tmp_path):
    run = tmp_path / "run"
    train(compose("algorithm=toy_phases", f"paths.run_dir={run}", "trainer.log_every=1"))
    out = run_cli("-c", "import tests.helpers.toy_phases, sys; from launchers.cli import main; "
                  f"main(['report', '{run}', 'paths.data_root={data_root}'])")
    assert out.returncode == 0, out.stderr[-2000:]
    names = sorted(p.name for p in (run / "report").iterdir())
    assert "train.svg" in names and "matrix_left_acc.svg" in names and "matrix_right_acc.svg" in names
    for name in names:
        ET.parse(run / "report" / name)  # well-formed SVG
    heat = (run / "report" / "matrix_left_acc.svg").read_text()
    assert heat.count("<rect") == 1 + 9  # background + 3 phases x 3 sets


def test_plots_are_valid_svg_and_skip_missing_values():
    svg = xy_svg({"a": [(0, 1.0), (1, float("nan")), (2, 0.5)]}, "t", "x", "y")
    assert ET.fromstring(svg).tag.endswith("svg") and svg.count("<polyline") == 1
    heat = heatmap_svg(["p1", "p2"], ["s1"], [[0.5], [None]], "m")
    assert ET.fromstring(heat) is not None and 'fill="#eee"' in heat


def test_report_of_a_missing_run_names_it(tmp_path):
    out = run_cli("-m", "launchers.cli", "report", str(tmp_path / "nothing"))
    assert out.returncode != 0 and "nothing" in out.stderr
