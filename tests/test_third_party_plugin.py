"""A plugin in a separate package, found only through its entry points, runs via the CLI: an
algorithm (``medley.algorithms``) and a command of its own (``medley.commands``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

HELLO = "def main(argv):\n    print('hello from a plugin', argv)\n"


def _site(tmp_path: Path, commands: str) -> Path:
    """A temporary site dir: the package, a command module and a ``.dist-info`` declaring both."""
    site = tmp_path / "site"
    shutil.copytree(REPO / "tests" / "plugins" / "medley_scaled", site / "medley_scaled")
    (site / "medley_hello.py").write_text(HELLO)
    info = site / "medley_scaled-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: medley-scaled\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[medley.algorithms]\nscaled_sum = medley_scaled\n\n[medley.commands]\n{commands}\n")
    return site


@pytest.fixture
def plugin_path(tmp_path) -> Path:
    return _site(tmp_path, "hello = medley_hello:main")


def _env(site: Path, data_root: Path) -> dict:
    import os

    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "MEDLEY_DATA": str(data_root)}


def test_entry_point_plugin_trains_with_its_own_key(plugin_path, data_root, tmp_path):
    out = run_cli("-m", "launchers.cli", "train", "algorithm=scaled_sum", "algorithm.scale=0.5",
                  "data.limit=512", "data.batch_size=32", "model.widths=[8,16]", "trainer.max_steps=3",
                  "logger.progress=off", f"paths.run_dir={tmp_path / 'run'}", env=_env(plugin_path, data_root))
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == "scaled_sum" and summary["steps"] == 3
    assert "scale: 0.5" in (tmp_path / "run" / "config.yaml").read_text()


def test_entry_point_plugin_key_typo_fails_naming_it(plugin_path, data_root, tmp_path):
    out = run_cli("-m", "launchers.cli", "train", "algorithm=scaled_sum", "algorithm.scael=0.5",
                  env=_env(plugin_path, data_root))
    assert out.returncode != 0
    assert "algorithm.scael" in out.stderr


def test_plugin_is_not_visible_without_its_entry_point(data_root):
    out = run_cli("-m", "launchers.cli", "list", "algorithms")
    assert "scaled_sum" not in out.stdout


def test_plugin_command_runs_and_is_listed_in_help(plugin_path, data_root):
    env = _env(plugin_path, data_root)
    out = run_cli("-m", "launchers.cli", "hello", "a", "b", env=env)
    assert out.returncode == 0, out.stderr
    assert "hello from a plugin ['a', 'b']" in out.stdout
    listed = run_cli("-m", "launchers.cli", "--help", env=env)
    assert listed.returncode == 0 and "plugin commands:" in listed.stdout
    assert "hello" in listed.stdout and "gradsplit-relations" in listed.stdout  # third party and built-in


def test_unknown_command_lists_every_command(plugin_path, data_root):
    out = run_cli("-m", "launchers.cli", "helo", env=_env(plugin_path, data_root))
    assert out.returncode != 0
    assert "unknown command 'helo'" in out.stderr
    assert "commands: train, prepare, list, eval, report, gradsplit-relations, hello" in out.stderr


def test_plugin_command_may_not_shadow_a_builtin(tmp_path, data_root):
    site = _site(tmp_path, "train = medley_hello:main")
    out = run_cli("-m", "launchers.cli", "train", env=_env(site, data_root))
    assert out.returncode != 0 and "hello from a plugin" not in out.stdout
    assert "'train = medley_hello:main'" in out.stderr
    assert "shadows the built-in command 'train'" in out.stderr


def test_builtin_plugin_command_comes_from_its_entry_point():
    out = run_cli("-m", "launchers.cli", "gradsplit-relations", "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: medley gradsplit-relations" in out.stdout and "--steps" in out.stdout
