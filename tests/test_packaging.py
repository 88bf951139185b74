"""The wheel carries the configs and the entry points: an installed copy composes configs and
finds the built-in algorithms and the ``medley`` command without the checkout."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, declared_entry_points, run_cli


def test_installed_wheel_resolves_configs_outside_the_checkout(tmp_path):
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheel_dir), str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(wheel_dir.glob("medley_ml-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {"PYTHONPATH": str(site)}
    where = run_cli("-c", "import framework.config as c; print(c.CONFIG_DIR)", env=env, cwd=tmp_path)
    assert where.stdout.strip() == str(site / "configs")
    out = run_cli("-m", "launchers.train", "--cfg", "job", "trainer.max_steps=7", env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "max_steps: 7" in out.stdout
    # built-in algorithms come from the wheel's own entry points, as a third party's would
    listed = run_cli("-m", "launchers.cli", "list", "algorithms", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    builtins = declared_entry_points("medley.algorithms")
    assert {line.split()[0] for line in listed.stdout.splitlines() if line.strip()} >= set(builtins)
    entry_points = next(site.glob("medley_ml-*.dist-info")) / "entry_points.txt"
    declared = entry_points.read_text()
    assert "medley = launchers.cli:main" in declared
    assert all(f"{name} = {module}" in declared for name, module in builtins.items())
