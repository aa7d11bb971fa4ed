"""The import rules of DESIGN.md: the API never loads torch or the workers; search is pure."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SEARCH_ALLOWED = {"numpy", "optuna", "search"}
# What the API process is made of; none of it may import the heavy worker side.
API_SIDE = [
    ROOT / "service" / "api",
    ROOT / "service" / "db",
    ROOT / "service" / "queue.py",
    ROOT / "service" / "quotas.py",
    ROOT / "service" / "ratelimit.py",
    ROOT / "service" / "uploads.py",
    ROOT / "service" / "safetensors_header.py",
    ROOT / "service" / "archives.py",
    ROOT / "service" / "datasets.py",
    ROOT / "service" / "modelcheck.py",
]
API_FORBIDDEN = {"torch", "torch_pruning", "torchvision", "workers"}


def _python_files(*paths: Path) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files.extend([path] if path.is_file() else sorted(path.rglob("*.py")))
    return files


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


def test_api_app_is_created_without_torch_or_workers() -> None:
    code = (
        "import sys; from service.api.app import create_app; "
        "from service.settings import Settings; "
        "create_app(Settings(database_url='sqlite://')); "
        "bad = [m for m in ('torch', 'torch_pruning', 'workers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("path", _python_files(*API_SIDE), ids=lambda p: str(p.relative_to(ROOT)))
def test_api_side_modules_do_not_import_the_worker_side(path: Path) -> None:
    assert not _imported_roots(path) & API_FORBIDDEN


def test_search_imports_only_stdlib_numpy_optuna_and_itself() -> None:
    files = _python_files(ROOT / "search")
    assert files, "search/ has no Python files"
    allowed = set(sys.stdlib_module_names) | SEARCH_ALLOWED
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imported_roots(path) - allowed) for path in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}
