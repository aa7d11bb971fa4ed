"""The layers of DESIGN.md, as package rules: who may import whom.

``search`` is pure; ``core`` stands on ``search`` only; ``service`` (the API)
and ``workers`` stand on ``core`` and ``search`` and never on each other;
``cli`` sits on top and may import everything. The rules are read off the
packages themselves, so a new module is covered the day it is added.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("search", "core", "service", "workers", "cli")
# What each package may import of the project's packages.
ALLOWED = {
    "search": {"search"},
    "core": {"core", "search"},
    "service": {"service", "core", "search"},
    "workers": {"workers", "core", "search"},
    "cli": set(PROJECT),
}
# Third-party roots a package may not load at all.
HEAVY = {"torch", "torch_pruning", "torchvision", "timm"}
FORBIDDEN = {"search": HEAVY | {"redis", "rq", "sqlalchemy", "fastapi"}, "core": HEAVY}
SEARCH_THIRD_PARTY = {"numpy", "optuna"}


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (relative ones stay inside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def _files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package}/ has no Python files"
    return files


@pytest.mark.parametrize("package", PROJECT)
def test_no_import_runs_from_a_lower_layer_to_a_higher_one(package: str) -> None:
    offenders = {}
    for path in _files(package):
        roots = _imported_roots(path)
        bad = (roots & set(PROJECT) - ALLOWED[package]) | (roots & FORBIDDEN.get(package, set()))
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_search_imports_only_stdlib_numpy_optuna_and_itself() -> None:
    allowed = set(sys.stdlib_module_names) | SEARCH_THIRD_PARTY | {"search"}
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) - allowed)
        for path in _files("search")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_rules_see_an_offence(tmp_path: Path) -> None:
    """The checker itself: upward imports, plain or lazy, are caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json\nfrom workers import tasks\n\ndef f():\n    import service.api\n")
    assert _imported_roots(probe) & set(PROJECT) - ALLOWED["core"] == {"workers", "service"}


def test_api_app_is_created_without_torch_or_workers() -> None:
    """Imports at run time too (lazy ones included): the API process never loads torch."""
    code = (
        "import sys; from service.api.app import create_app; "
        "from core.settings import Settings; "
        "create_app(Settings(database_url='sqlite://')); "
        "bad = [m for m in ('torch', 'torch_pruning', 'workers', 'cli') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
