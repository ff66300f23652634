import json
import re
from pathlib import Path

import nbformat
import pytest
from helpers import write_stage_notebook
from nbformat.v4 import new_code_cell, new_notebook

from opslib.db.models import ExecutionStatus, StageExecution
from opslib.errors import Refused, class_path, recorded_as
from opslib.execution import registry as stages
from opslib.execution.context import ERROR_CLASS_MIME, record_error_classes
from opslib.execution.registry import (
    EXECUTION_ID_PARAM,
    STAGES,
    StageError,
    StageParams,
    StageSpec,
    validate_params,
)
from opslib.execution.runner import run_stage
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import ingest_feedback
from opslib.lifecycle.rollback import RollbackRefused
from opslib.settings import Settings

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CDN = re.compile(r"""<(script|link)[^>]+(src|href)=["']https?://""", re.I)


def _scratch_stage(
    ws: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    params: type[StageParams],
    parameters_source: str,
    *sources: str,
) -> Workspace:
    """Register a throwaway stage ``name`` whose notebook is a tagged parameters cell followed by
    ``sources``; returns a workspace whose settings find it."""
    folder = tmp_path / "notebooks"
    write_stage_notebook(folder / f"{name}.ipynb", parameters_source, *sources)
    monkeypatch.setitem(STAGES, name, StageSpec(name, f"{name}.ipynb", params, name, __name__))
    return Workspace(Settings(**{**ws.settings.model_dump(), "notebooks_dir": folder}))


def _executions(ws: Workspace) -> list[StageExecution]:
    with ws.db.read() as session:
        return list(session.query(StageExecution).order_by(StageExecution.id))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window_dayz": 3}, "window_dayz: unknown parameter"),
        ({"window_days": "3"}, "window_days: Input should be a valid integer"),
        ({"window_days": 0}, "window_days"),
        ({EXECUTION_ID_PARAM: 5}, "ops_execution_id: unknown parameter"),
    ],
)
def test_bad_parameters_fail_before_anything_runs(ws: Workspace, params: dict, message: str) -> None:
    with pytest.raises(StageError, match=message):
        run_stage(ws, "10_feedback_health", params)
    assert _executions(ws) == []
    assert not ws.settings.runs_dir.exists() or not any(ws.settings.runs_dir.rglob("*.ipynb"))


def test_unknown_stage(ws: Workspace) -> None:
    with pytest.raises(StageError, match="unknown; known stages: 10_feedback_health"):
        run_stage(ws, "99_nope", {})


def test_missing_parameter_is_named() -> None:
    class Needs(StageParams):
        run_id: int

    STAGES["_needs"] = StageSpec("_needs", "x.ipynb", Needs, "test", __name__)
    try:
        with pytest.raises(StageError, match="run_id: missing parameter"):
            validate_params("_needs", {})
    finally:
        del STAGES["_needs"]


@pytest.mark.slow
def test_feedback_health_runs_archives_and_records(ws: Workspace) -> None:
    from helpers import feedback_event, feedback_line

    ingest_feedback(ws.objects, [feedback_line(feedback_event()), b"garbage"])
    result = run_stage(ws, "10_feedback_health", {"window_days": 3}, trace_id="trace-xyz")
    assert result.ok, result.error
    assert result.output_ipynb.is_file() and result.output_html.is_file()
    assert result.output_ipynb.parent.parent == ws.settings.runs_dir
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.SUCCEEDED and row.error is None
    assert row.parameters == {"window_days": 3} and row.trace_id == "trace-xyz"
    assert (row.output_ipynb, row.output_html) == (str(result.output_ipynb), str(result.output_html))
    html = result.output_html.read_text()
    assert not CDN.search(html), "reports must render offline"
    assert "data:image/png;base64" in html  # the plots are embedded
    assert "m1" in html and "trace-xyz" in html  # the rating mix names the model; provenance shows the trace
    executed = nbformat.read(result.output_ipynb, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "window_days = 3" in injected[0].source


@pytest.mark.slow
def test_a_failing_notebook_is_archived_with_its_failing_cell(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailParams(StageParams):
        x: int = 1

    scratch = _scratch_stage(
        ws,
        tmp_path,
        monkeypatch,
        "99_fail",
        FailParams,
        "x = 1\nops_execution_id = None",
        "print('before the failure')",
        "raise ValueError(f'boom with x={x}')",
    )
    result = run_stage(scratch, "99_fail", {"x": 4})
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert (result.error["ename"], result.error["evalue"]) == ("ValueError", "boom with x=4")
    assert result.error["cell_index"] == 3  # papermill's injected-parameters cell comes first
    assert result.output_ipynb.is_file() and result.output_html.is_file()
    assert "boom with x=4" in result.output_html.read_text()
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.FAILED and row.error == result.error and row.finished_at


@pytest.mark.slow
def test_a_refusal_in_a_notebook_is_recorded_with_its_class(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel names the class only by ``__name__``; open_stage's hook records its class
    path, so callers decide by class (a REFUSED banner in the report, ``result.refused``)."""

    class RefuseParams(StageParams):
        x: int = 1

    scratch = _scratch_stage(
        ws,
        tmp_path,
        monkeypatch,
        "97_refuse",
        RefuseParams,
        "x = 1\nops_execution_id = None",
        "from opslib.execution.context import record_error_classes\nrecord_error_classes()",
        "from opslib.execution import display\n"
        "from opslib.lifecycle.rollback import RollbackRefused\n"
        "with display.error_banner_on_failure('rollback'):\n"
        "    raise RollbackRefused(f'stale request with x={x}')",
    )
    result = run_stage(scratch, "97_refuse", {"x": 4})
    assert result.status is ExecutionStatus.FAILED and result.error is not None
    assert (result.error["ename"], result.error["evalue"]) == ("RollbackRefused", "stale request with x=4")
    assert result.error["cell_index"] == 3 and result.error["eclass"] == class_path(RollbackRefused)
    assert result.refused
    html = result.output_html.read_text()
    assert "REFUSED</b> — rollback was refused" in html and "stale request with x=4" in html
    assert ERROR_CLASS_MIME not in html
    (row,) = _executions(ws)
    assert row.error == result.error


def test_the_recorded_error_class_is_read_from_the_failed_notebook(tmp_path: Path) -> None:
    from papermill.exceptions import PapermillExecutionError

    from opslib.execution.runner import _error_from

    record = {"output_type": "display_data", "metadata": {}, "data": {ERROR_CLASS_MIME: {"eclass": "m:Other"}}}
    nb = new_notebook(cells=[new_code_cell("raise X")])
    nb.cells[0].outputs = [nbformat.from_dict(record)]
    path = tmp_path / "out.ipynb"
    nbformat.write(nb, path)
    failure = PapermillExecutionError(0, 1, "raise X", "RollbackRefused", "no", [])
    # A record for another class (here "Other") is not this failure's: no class is recorded.
    assert _error_from(failure, path)["eclass"] is None
    nb.cells[0].outputs[0]["data"][ERROR_CLASS_MIME]["eclass"] = class_path(RollbackRefused)
    nbformat.write(nb, path)
    error = _error_from(failure, path)
    assert error["eclass"] == class_path(RollbackRefused) and recorded_as(error, Refused)
    assert _error_from(failure, tmp_path / "missing.ipynb")["eclass"] is None
    # Raised in this process (no notebook involved): the class is known directly.
    assert _error_from(RollbackRefused("no"), path)["eclass"] == class_path(RollbackRefused)


def test_the_error_class_hook_does_nothing_outside_a_kernel() -> None:
    assert record_error_classes() is False


@pytest.mark.slow
def test_a_failed_html_rendering_still_records_the_execution(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opslib.execution.runner as runner

    class OkParams(StageParams):
        pass

    scratch = _scratch_stage(ws, tmp_path, monkeypatch, "98_ok", OkParams, "ops_execution_id = None", "print('fine')")

    def broken(*args: object) -> None:
        raise RuntimeError("template missing")

    monkeypatch.setattr(runner, "render_html", broken)
    result = run_stage(scratch, "98_ok", {})
    assert result.status is ExecutionStatus.SUCCEEDED and result.output_ipynb.is_file()
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.SUCCEEDED and row.finished_at and row.output_html is None


def test_every_stage_notebook_has_a_tagged_parameters_cell_matching_its_schema() -> None:
    for spec in stages.STAGES.values():
        nb = nbformat.read(NOTEBOOKS / spec.notebook, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, spec.name
        assert nb.cells.index(tagged[0]) == next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
        names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, re.M))
        assert names == set(spec.params.model_fields) | {EXECUTION_ID_PARAM}, spec.name


def test_committed_notebooks_have_no_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, path.name


def test_the_kernel_gets_the_offline_flags_and_this_process_keeps_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from opslib.execution.runner import _kernel_environment
    from opslib.infra.offline import OFFLINE_ENVIRONMENT

    for key in OFFLINE_ENVIRONMENT:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # set by the caller: left as it is
    before = dict(os.environ)
    with _kernel_environment({"OPS_WORKSPACE": "/somewhere"}):
        assert os.environ["OPS_WORKSPACE"] == "/somewhere"
        assert (os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"]) == ("1", "1")
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert dict(os.environ) == before


def test_stage_reports_show_table_cells_whole() -> None:
    import pandas as pd

    from opslib.execution import display
    from opslib.execution.context import show_tables_whole

    long = " — ".join(["sha256(seed, project, normalised query) < share; whole queries only"] * 3)
    with pd.option_context("display.max_colwidth", 50, "display.max_columns", 20):
        table = display.facts("split", {"rule": long})
        assert long not in table._repr_html_()  # pandas' default cuts it
        show_tables_whole()
        assert long.replace("<", "&lt;") in table._repr_html_()
