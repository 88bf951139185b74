"""A plugin in a separate package, found only through its entry point, runs via the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli


@pytest.fixture
def plugin_path(tmp_path) -> Path:
    """A temporary site dir: the package plus a ``.dist-info`` declaring the entry point."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "tests" / "plugins" / "medley_scaled", site / "medley_scaled")
    info = site / "medley_scaled-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medley-scaled\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[medley.algorithms]\nscaled_sum = medley_scaled\n")
    return site


def _env(site: Path, data_root: Path) -> dict:
    import os

    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "MEDLEY_DATA": str(data_root)}


def test_entry_point_plugin_trains_with_its_own_key(plugin_path, data_root, tmp_path):
    out = run_cli("-m", "framework.cli", "train", "algorithm=scaled_sum", "algorithm.scale=0.5",
                  "data.limit=512", "data.batch_size=32", "model.widths=[8,16]", "trainer.max_steps=3",
                  "logger.progress=off", f"paths.run_dir={tmp_path / 'run'}", env=_env(plugin_path, data_root))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == "scaled_sum" and summary["steps"] == 3
    assert "scale: 0.5" in (tmp_path / "run" / "config.yaml").read_text()


def test_entry_point_plugin_key_typo_fails_naming_it(plugin_path, data_root, tmp_path):
    out = run_cli("-m", "framework.cli", "train", "algorithm=scaled_sum", "algorithm.scael=0.5",
                  env=_env(plugin_path, data_root))
    assert out.returncode != 0
    assert "algorithm.scael" in out.stderr


def test_plugin_is_not_visible_without_its_entry_point(data_root):
    out = run_cli("-m", "framework.cli", "list", "algorithms")
    assert "scaled_sum" not in out.stdout
