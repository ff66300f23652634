"""The ``opsbench`` Papermill engine: Papermill's own API and CLI, with a stage's guarantees —
parameters validated before anything runs, the execution recorded, archived and indexed."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest
from helpers import write_stage_notebook
from papermill.engines import papermill_engines

from opslib.db.models import ExecutionStatus, StageExecution
from opslib.execution.papermill_engine import ENGINE_NAME, OpsbenchEngine, StageFailed
from opslib.execution.registry import STAGES, StageError, StageParams, StageSpec
from opslib.infra.workspace import Workspace
from opslib.settings import Settings

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
FEEDBACK_HEALTH = NOTEBOOKS / "10_feedback_health.ipynb"
PAPERMILL = Path(sys.executable).parent / "papermill"


@pytest.fixture
def ops_env(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """The workspace's settings in this process's environment, where the engine (like `opsbench`)
    reads them."""
    for key, value in ws.settings.as_env().items():
        monkeypatch.setenv(key, value)
    return ws


def _executions(ws: Workspace) -> list[StageExecution]:
    with ws.db.read() as session:
        return list(session.query(StageExecution).order_by(StageExecution.id))


def _execute(input_path: Path, output_path: Path, parameters: dict[str, object]) -> object:
    return papermill.execute_notebook(
        str(input_path), str(output_path), parameters=parameters, engine_name=ENGINE_NAME, progress_bar=False
    )


def test_the_engine_is_registered_under_papermills_entry_point() -> None:
    assert papermill_engines.get_engine(ENGINE_NAME) is OpsbenchEngine


@pytest.mark.parametrize(
    ("parameters", "named"),
    [
        ({"window_dayz": 3}, "window_dayz: unknown parameter"),
        ({"window_days": "3"}, "window_days: Input should be a valid integer"),
    ],
)
def test_bad_parameters_are_refused_before_anything_executes(
    ops_env: Workspace, tmp_path: Path, parameters: dict[str, object], named: str
) -> None:
    output = tmp_path / "out.ipynb"
    with pytest.raises(StageError, match=named) as refused:
        _execute(FEEDBACK_HEALTH, output, parameters)
    assert "window_days" in str(refused.value)  # the field the stage does accept is named
    assert _executions(ops_env) == []
    assert not output.exists()
    assert not any(ops_env.settings.runs_dir.rglob("*.ipynb"))


@pytest.mark.sqlite_only(reason="refused before the Metadata DB is opened; the bad-parameter test runs on both")
def test_a_notebook_that_is_no_stage_is_refused_with_the_stages_listed(ops_env: Workspace, tmp_path: Path) -> None:
    scratch = write_stage_notebook(tmp_path / "scratch.ipynb", "x = 1", "print(x)")
    with pytest.raises(StageError, match="not a stage notebook") as refused:
        _execute(scratch, tmp_path / "out.ipynb", {"x": 2})
    assert all(spec.notebook in str(refused.value) for spec in STAGES.values())
    assert _executions(ops_env) == []


@pytest.mark.sqlite_only(reason="refused before the Metadata DB is opened; the bad-parameter test runs on both")
def test_papermills_cli_exits_non_zero_on_an_unknown_parameter(ops_env: Workspace, tmp_path: Path) -> None:
    output = tmp_path / "out.ipynb"
    done = subprocess.run(
        [str(PAPERMILL), "--engine", ENGINE_NAME, str(FEEDBACK_HEALTH), str(output), "-p", "window_dayz", "3"],
        cwd=tmp_path,
        env=dict(os.environ),  # the OPS_* settings ops_env exported
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0, done.stderr
    assert "window_dayz: unknown parameter" in done.stderr
    assert _executions(ops_env) == []
    assert not output.exists()


@pytest.mark.slow
def test_a_stage_executed_through_papermill_is_recorded_archived_and_indexed(
    ops_env: Workspace, tmp_path: Path
) -> None:
    output = tmp_path / "out" / "feedback.ipynb"
    output.parent.mkdir()
    _execute(FEEDBACK_HEALTH, output, {"window_days": 3})
    (row,) = _executions(ops_env)
    assert row.status is ExecutionStatus.SUCCEEDED and row.error is None
    assert row.stage == "10_feedback_health" and row.parameters == {"window_days": 3} and row.run_id is None
    assert row.output_html and Path(row.output_html).is_file()
    assert row.output_ipynb and Path(row.output_ipynb).parent.parent == ops_env.settings.runs_dir
    index = (ops_env.settings.runs_dir / "index.html").read_text()
    assert Path(row.output_html).name in index  # the run index links the archived report
    written = nbformat.read(output, as_version=4)
    injected = [c for c in written.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "window_days = 3" in injected[0].source
    assert written.metadata["opsbench"]["execution_id"] == row.id


@pytest.mark.slow
def test_a_failed_stage_raises_after_it_is_recorded_and_written(
    ops_env: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailParams(StageParams):
        x: int = 1

    folder = tmp_path / "notebooks"
    notebook = write_stage_notebook(
        folder / "99_fail.ipynb", "x = 1\nops_execution_id = None", "raise RuntimeError('boom')"
    )
    monkeypatch.setitem(STAGES, "99_fail", StageSpec("99_fail", "99_fail.ipynb", FailParams, "fails", __name__))
    monkeypatch.setenv("OPS_NOTEBOOKS_DIR", str(folder))
    assert Settings().resolved_notebooks_dir == folder
    output = tmp_path / "out.ipynb"
    with pytest.raises(StageFailed, match="RuntimeError: boom") as failed:
        _execute(notebook, output, {"x": 2})
    (row,) = _executions(ops_env)
    assert row.status is ExecutionStatus.FAILED and row.parameters == {"x": 2}
    assert failed.value.result is not None and failed.value.result.execution_id == row.id
    assert output.is_file() and "boom" in output.read_text()  # the caller gets the executed notebook
