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
        out = run_cli("-m", "launchers.cli", "list", what)
        assert out.returncode == 0, out.stderr
        assert expected in out.stdout


def test_readme_support_matrix_matches_the_declared_capabilities():
    from tests.conftest import REPO, run_cli

    out = run_cli("-m", "launchers.cli", "list", "matrix")  # a fresh process: no test-only plugins
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in (REPO / "README.md").read_text(), "regenerate with `medley list matrix`"


def test_algorithms_register_only_through_entry_points():
    """The engine names no plugin: with the ``medley.algorithms`` entry points hidden no algorithm
    is registered, and asking for one says where registration comes from."""
    from tests.conftest import run_cli

    code = ("import framework.registry as r\n"
            "real = r.entry_points\n"
            "r.entry_points = lambda group: [] if group == 'medley.algorithms' else real(group=group)\n"
            "print(r.ALGORITHMS.names())\n"
            "try:\n    r.ALGORITHMS.get('equal_weight')\nexcept r.RegistryError as exc:\n    print(exc)\n")
    out = run_cli("-c", code)
    assert out.returncode == 0, out.stderr
    names, message = out.stdout.strip().splitlines()
    assert names == "[]"
    assert "unknown algorithm 'equal_weight'" in message
    assert "medley.algorithms" in message and "pip install -e" in message


def test_every_builtin_algorithm_is_declared_and_installed_as_an_entry_point():
    from importlib.metadata import entry_points

    from tests.conftest import REPO, declared_entry_points

    declared = declared_entry_points("medley.algorithms")
    packages = {p.parent.name for p in (REPO / "algorithms").glob("*/__init__.py")
                if "register_algorithm(" in p.read_text()}
    assert declared == {name: f"algorithms.{name}" for name in sorted(packages)}, (
        "each package under algorithms/ that registers an algorithm needs `name = \"algorithms.name\"` in "
        "pyproject.toml [project.entry-points.\"medley.algorithms\"]")
    installed = {ep.name: ep.value for ep in entry_points(group="medley.algorithms")
                 if ep.value.startswith("algorithms.")}
    assert installed == declared, "the installed entry points are stale: run `pip install --no-deps -e .`"
    for name, module in declared.items():
        assert ALGORITHMS.get(name).source == module
