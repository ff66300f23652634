"""The import contracts in pyproject.toml ([tool.importlinter], run by `make lint`) can fail.

`lint-imports` runs on a throwaway copy of ``opslib`` with one deliberate bad import added. The
copy comes first on sys.path (lint-imports puts its working directory there, and PYTHONPATH names
it too), so grimp analyses it and not the editable-installed original: the fixture checks that."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = "opslib layers: a module imports only from its own layer or below"  # the contracts' names
ACYCLIC = "no import cycles between siblings in any opslib package"


def _env(copy_root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(copy_root), os.environ.get("PYTHONPATH")) if p)}


def _lint_imports(copy_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
        cwd=copy_root,
        env=_env(copy_root),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def copy_root(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "opslib", tmp_path / "opslib", ignore=shutil.ignore_patterns("__pycache__"))
    # What grimp will analyse, found as lint-imports finds it: the copy (find_spec runs no package code).
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('opslib').origin)"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == tmp_path / "opslib" / "__init__.py"
    assert importlib.util.find_spec("opslib").origin != found  # this process sees the original
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_untouched_copy_keeps_the_contracts(copy_root: Path) -> None:
    result = _lint_imports(copy_root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{LAYERS} KEPT" in result.stdout and f"{ACYCLIC} KEPT" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(copy_root: Path) -> None:
    _append(copy_root / "opslib" / "db" / "engine.py", "import opslib.ops.cli  # upward")
    result = _lint_imports(copy_root)
    assert result.returncode != 0
    assert f"{LAYERS} BROKEN" in result.stdout, result.stdout
    assert "opslib.db is not allowed to import opslib.ops" in result.stdout
    assert "opslib.db.engine -> opslib.ops.cli" in result.stdout  # the offending import, named


def test_a_cycle_between_sibling_packages_breaks_the_acyclic_contract(copy_root: Path) -> None:
    # dataset imports feedback already; feedback importing dataset closes a cycle inside one layer.
    _append(copy_root / "opslib" / "lifecycle" / "feedback" / "health.py", "import opslib.lifecycle.dataset.builder")
    result = _lint_imports(copy_root)
    assert result.returncode != 0
    assert f"{ACYCLIC} BROKEN" in result.stdout, result.stdout
    assert "No cycles are allowed in opslib.lifecycle" in result.stdout
    assert f"{LAYERS} KEPT" in result.stdout  # one layer: the layers contract alone would miss it
