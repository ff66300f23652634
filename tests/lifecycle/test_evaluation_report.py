"""The evaluation report's code version: package metadata, plus the commit in a git checkout."""

import re
import shutil
from pathlib import Path

import pytest

import opslib
from opslib.lifecycle.evaluation import report


def _fake_package(root: Path, project: str) -> None:
    (root / ".git").mkdir(parents=True)
    (root / "pyproject.toml").write_text(f'[project]\nname = "{project}"\n')
    (root / "opslib").mkdir()
    (root / "opslib" / "__init__.py").write_text("")


def test_the_version_is_the_package_metadata() -> None:
    from importlib.metadata import version

    assert opslib.__version__ == version("opslib")


def test_a_checkout_adds_its_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(opslib.__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not running from a git checkout")
    assert re.fullmatch(rf"[0-9a-f]{{12}}(\+dirty)? \(opslib {re.escape(opslib.__version__)}\)", report.code_version())
    monkeypatch.setenv("PATH", "/nonexistent")  # no git: the version alone, never an error
    assert report.code_version() == f"opslib {opslib.__version__}"


@pytest.mark.parametrize(("project", "found"), [("opslib", True), ("something-else", False)])
def test_only_the_repository_of_this_package_counts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, project: str, found: bool
) -> None:
    _fake_package(tmp_path, project)
    monkeypatch.setattr(opslib, "__file__", str(tmp_path / "opslib" / "__init__.py"))
    assert report._source_checkout() == (tmp_path if found else None)


def test_an_installed_package_has_no_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "site-packages" / "opslib").mkdir(parents=True)
    monkeypatch.setattr(opslib, "__file__", str(tmp_path / "site-packages" / "opslib" / "__init__.py"))
    assert report._source_checkout() is None
    assert report.code_version() == f"opslib {opslib.__version__}"
