"""The wheel carries the configs: an installed copy composes configs without the checkout."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO, run_cli


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
