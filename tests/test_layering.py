"""The engine never depends on user code: nothing in ``framework/`` imports ``algorithms`` or
``launchers`` — not by an import statement, not through ``import_module``/``__import__``, and not
by naming a module in a string (``"algorithms.x"``, ``"algorithms.x.method:Cls"``) that something
imports later. Built-in plugins reach the engine through entry points like any third party."""

from __future__ import annotations

import ast
import re

import pytest

from tests.conftest import REPO

FORBIDDEN = ("algorithms", "launchers")
#: a string that names a forbidden module: "algorithms", "launchers.train", "algorithms.cdt.method:CDT",
#: or the constant head of an f-string such as f"algorithms.{name}"
_MODULE_STRING = re.compile(rf"^({'|'.join(FORBIDDEN)})(\.[\w.]*)?(:\w*)?$")
_IMPORTERS = {"import_module", "__import__"}


def _top(module: str | None) -> str:
    return (module or "").split(".")[0]


def layering_violations(source: str, filename: str = "<string>") -> list[str]:
    """``file:line what`` for every reference to a forbidden top-level package in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if _top(a.name) in FORBIDDEN]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _top(node.module) in FORBIDDEN:
            found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0] if node.args else None
            if (name in _IMPORTERS and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    and _top(arg.value) in FORBIDDEN):
                found.append(f"{where} {name}({arg.value!r})")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _MODULE_STRING.match(node.value):
            found.append(f"{where} module string {node.value!r}")
    return found


@pytest.mark.parametrize("source", [
    "import algorithms.cdt",
    "import launchers",
    "from launchers import train",
    "from algorithms.equal_weight.method import task_losses",
    "def f():\n    from launchers.ray_job import compose",
    "importlib.import_module('algorithms.gradsplit.pairwise')",
    "import_module('launchers.cli')",
    "__import__('algorithms')",
    "for m in ('framework.strategies', 'algorithms'):\n    importlib.import_module(m)",
    "IMPL = 'algorithms.cdt.method:CDT'",
    "mod = f'algorithms.{name}'",
])
def test_checker_catches_every_form_of_reference(source):
    assert layering_violations(source), source


@pytest.mark.parametrize("source", [
    "import framework.registry",
    "from .registry import ALGORITHMS",
    "GROUP = 'medley.algorithms'",
    "msg = 'medley list algorithms'",
    "hint = 'see launchers/accelerate/cpu_2proc.yaml'",
    "importlib.import_module(module)",
])
def test_checker_accepts_engine_code(source):
    assert layering_violations(source) == []


def test_framework_references_neither_algorithms_nor_launchers():
    files = sorted((REPO / "framework").rglob("*.py"))
    assert len(files) > 20, "framework/ sources not found"
    found = [v for f in files for v in layering_violations(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, ("framework/ must not depend on plugins or launchers (register plugins through entry "
                       "points; put commands in launchers/):\n" + "\n".join(found))
