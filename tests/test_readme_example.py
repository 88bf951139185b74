"""The plugin example in the README is complete and trains as written."""

from __future__ import annotations

import importlib.util
import re

import pytest

from framework.registry import ALGORITHMS
from framework.run import train
from tests.conftest import REPO


def _example_source() -> str:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- plugin-example:start -->\s*```python\n(.*?)```\s*<!-- plugin-example:end -->", text, re.S)
    assert block, "README lost its plugin example markers"
    return block.group(1)


def test_readme_plugin_example_registers_and_trains(compose, tmp_path):
    path = tmp_path / "weighted_sum_example.py"
    path.write_text(_example_source())
    spec = importlib.util.spec_from_file_location("weighted_sum_example", path)
    module = importlib.util.module_from_spec(spec)
    ALGORITHMS.unregister("weighted_sum")
    spec.loader.exec_module(module)
    from framework.config import register_schema

    register_schema()
    summary = train(compose("algorithm=weighted_sum", "algorithm.right_weight=0.3", "trainer.max_steps=3"))
    assert summary["algorithm"] == "weighted_sum" and summary["steps"] == 3
    with pytest.raises(Exception, match="right_weight"):
        compose("algorithm=weighted_sum", "algorithm.right_weight=abc")
