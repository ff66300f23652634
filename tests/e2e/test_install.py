"""The package works installed, not only from a checkout: build the wheel, install it
non-editable into a fresh virtualenv, and run a stage there from a folder outside the repository.

Reinstalling torch and the rest into the fresh virtualenv would take many minutes, so it borrows
this environment's third-party packages through a ``.pth`` line naming our site-packages. A plain
path line does not run the ``.pth`` files found in that folder, so the editable install's finder
(which maps ``opslib`` to this checkout) stays inactive: the fresh virtualenv sees the wheel's
``opslib`` and nothing else of the repository — the test checks that before running anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from opslib.execution.registry import STAGES
from opslib.infra.offline import OFFLINE_ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]
KERNEL = "opslib-install-test"
STAGE = "10_feedback_health"
# The test kernel's launcher: records who runs the stage, then starts ipykernel as usual.
KERNEL_LAUNCHER = """\
import json, os, sys
from pathlib import Path

import opslib

facts = {"executable": sys.executable, "opslib": opslib.__file__, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE")}
Path(sys.argv.pop(1)).write_text(json.dumps(facts))
from ipykernel import kernelapp

kernelapp.launch_new_instance()
"""


def test_the_package_list_covers_every_folder_of_opslib() -> None:
    """``[tool.setuptools] packages`` is a list (see pyproject.toml): a new subpackage must join it."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = find_namespace_packages(where=str(ROOT), include=["opslib", "opslib.*"])
    assert sorted(listed) == sorted([*found, "opslib.notebooks"])


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """From a copy of what the build reads, so nothing (build/, stale files) lands in or comes from the checkout."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("opslib", "notebooks"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = tmp_path / "wheels"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "-w",
            wheels,
            source,
        ],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("opslib-*.whl")
    return wheel


@pytest.mark.slow
def test_a_non_editable_install_runs_a_stage_outside_the_repository(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    shipped = set(zipfile.ZipFile(wheel).namelist())
    notebooks = sorted(path.name for path in (ROOT / "notebooks").glob("*.ipynb"))
    assert {spec.notebook for spec in STAGES.values()} <= set(notebooks)
    assert {f"opslib/notebooks/{name}" for name in notebooks} <= shipped
    assert {
        "opslib/db/migrations/env.py",
        "opslib/db/migrations/script.py.mako",
        "opslib/execution/templates/offline/conf.json",
        "opslib/execution/templates/offline/index.html.j2",
    } <= shipped
    assert not [name for name in shipped if name.startswith(("notebooks/", "tests/"))]

    # A fresh virtualenv; the wheel goes in before our packages are visible, so pip sees no other opslib.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        cwd=tmp_path,
    )
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_opslib_test_borrowed_packages.pth").write_text("".join(f"{path}\n" for path in ours))

    elsewhere = tmp_path / "elsewhere"  # not the repository: its opslib/ folder must not shadow the wheel
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", *OFFLINE_ENVIRONMENT)}
    probe = (
        "import json, os, importlib.metadata as md, importlib.resources as r; environ = dict(os.environ);"
        "import opslib; from opslib.lifecycle.evaluation.report import code_version;"
        "print(json.dumps({'file': opslib.__file__, 'version': opslib.__version__, 'environ': environ == os.environ,"
        " 'notebooks': str(r.files('opslib.notebooks')), 'code_version': code_version(),"
        " 'metadata': str(md.distribution('opslib').locate_file('opslib'))}))"
    )
    seen = json.loads(_run([python, "-c", probe], cwd=elsewhere, env=env))
    installed = site / "opslib"
    assert Path(seen["file"]) == installed / "__init__.py"
    assert Path(seen["notebooks"]) == installed / "notebooks"
    assert Path(seen["metadata"]) == installed
    assert seen["environ"], "import opslib changed os.environ"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert seen["version"] == version
    assert seen["code_version"] == f"opslib {version}"  # installed: no git checkout to name a commit

    # The stage's kernel: the fresh virtualenv's python, under a kernel name only that virtualenv has.
    kernel_dir = venv / "share" / "jupyter" / "kernels" / KERNEL
    kernel_dir.mkdir(parents=True)
    launcher, kernel_facts = tmp_path / "kernel_launcher.py", tmp_path / "kernel-facts.json"
    launcher.write_text(KERNEL_LAUNCHER)
    argv = [str(python), str(launcher), str(kernel_facts), "-f", "{connection_file}"]
    (kernel_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))

    env |= {
        "OPS_WORKSPACE": str(tmp_path / "workspace"),
        "OPS_RUNS_DIR": str(tmp_path / "runs"),
        "OPS_KERNEL_NAME": KERNEL,
        "OPS_LOG_LEVEL": "WARNING",
        # nbconvert's own templates (our "offline" one extends "lab") are data files of the borrowed
        # environment, not of the fresh one; a real install has them under its own prefix.
        "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"),
    }
    opsbench = venv / "bin" / "opsbench"
    _run([opsbench, "init"], cwd=elsewhere, env=env)
    _run([opsbench, "run", STAGE, "--quiet"], cwd=elsewhere, env=env)

    (html,) = (tmp_path / "runs").glob(f"*/*-{STAGE}.html")
    assert "<html" in html.read_text()[:1000].lower()
    (executed,) = (tmp_path / "runs").glob(f"*/*-{STAGE}.ipynb")
    metadata = json.loads(executed.read_text())["metadata"]["papermill"]
    assert Path(metadata["input_path"]) == installed / "notebooks" / f"{STAGE}.ipynb"
    # The kernel ran the fresh virtualenv's python with the wheel's opslib, and the runner gave it
    # the offline flags (this environment has none: the package sets them, import opslib does not).
    kernel = json.loads(kernel_facts.read_text())
    assert kernel == {"executable": str(python), "opslib": str(installed / "__init__.py"), "HF_HUB_OFFLINE": "1"}
