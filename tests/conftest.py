"""Shared fixtures: a session data root, and configs composed exactly as the CLI does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """One prepared-data cache per test session (``MEDLEY_TEST_DATA`` reuses one across sessions)."""
    root = os.environ.get("MEDLEY_TEST_DATA")
    return Path(root) if root else tmp_path_factory.mktemp("data")


@pytest.fixture
def compose(data_root, tmp_path):
    """``compose(*overrides)`` → validated config (``framework.compose``, the CLI's path) with a
    small, fast default setting."""
    from framework.compose import compose as compose_config

    def _compose(*overrides: str, small: bool = True):
        base = [f"paths.data_root={data_root}", f"paths.run_root={tmp_path / 'runs'}", "logger.progress=off",
                "logger.tensorboard=false"]
        if small:
            base += ["data.limit=512", "data.batch_size=32", "data.eval_batch_size=128",
                     "model.widths=[8,16]", "trainer.max_steps=8", "trainer.log_every=2"]
        return compose_config(base + list(overrides))

    return _compose


def declared_entry_points(group: str) -> dict[str, str]:
    """``name -> value`` of one entry-point group in pyproject.toml (tomllib needs Python 3.11)."""
    header = f'[project.entry-points."{group}"]'
    lines = (REPO / "pyproject.toml").read_text().splitlines()
    assert header in lines, f"pyproject.toml has no {header} section"
    out = {}
    for line in lines[lines.index(header) + 1:]:
        if line.startswith("["):
            break
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = (part.strip() for part in line.split("=", 1))
            out[name] = value.strip('"')
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path = REPO):
    import subprocess
    import sys

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
