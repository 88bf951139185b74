from dataclasses import dataclass

import pytest

from framework import Algorithm, AlgorithmConfig, register_algorithm
from framework.registry import ALGORITHMS, RegistryError


def test_unknown_algorithm_error_lists_registered_names():
    with pytest.raises(RegistryError) as err:
        ALGORITHMS.get("no_such_method")
    msg = str(err.value)
    assert "no_such_method" in msg and "equal_weight" in msg and "single_task" in msg


def test_duplicate_registration_fails_unless_override():
    @dataclass
    class DupConfig(AlgorithmConfig):
        name: str = "equal_weight"

    with pytest.raises(RegistryError, match="duplicate algorithm name 'equal_weight'"):
        register_algorithm("equal_weight", config=DupConfig)(type("Dup", (Algorithm,), {}))
    assert ALGORITHMS.get("equal_weight").source == "algorithms.equal_weight"


def test_registration_requires_a_config_dataclass():
    with pytest.raises(RegistryError, match="config dataclass is required"):
        register_algorithm("no_config")(type("NoConfig", (Algorithm,), {}))


def test_builtin_registration_is_torch_free():
    """Registering every plugin must not import torch: the CLI validates before heavy imports."""
    from tests.conftest import run_cli

    code = ("import sys; from framework.registry import load_plugins, ALGORITHMS; load_plugins(); "
            "assert ALGORITHMS.names(); print('torch' in sys.modules)")
    out = run_cli("-c", code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_medley_list_shows_each_registry():
    from tests.conftest import run_cli

    for what, expected in [("algorithms", "equal_weight"), ("strategies", "single"), ("datasets", "multimnist")]:
        out = run_cli("-m", "framework.cli", "list", what)
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout


def test_readme_support_matrix_matches_the_declared_capabilities():
    from tests.conftest import REPO, run_cli

    out = run_cli("-m", "framework.cli", "list", "matrix")  # a fresh process: no test-only plugins
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in (REPO / "README.md").read_text(), "regenerate with `medley list matrix`"
