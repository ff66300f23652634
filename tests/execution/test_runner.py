import json
import re
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import pytest
from helpers import write_stage_notebook
from nbformat.v4 import new_code_cell, new_notebook

from opslib.db.models import ExecutionStatus, StageExecution, utcnow
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
from opslib.execution.run_index import collect_run_index
from opslib.execution.runner import (
    STAGE_EXECUTING,
    abandon_dead_executions,
    beat_execution,
    reconcile_executions,
    run_stage,
)
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import ingest_feedback
from opslib.lifecycle.rollback import RollbackRefused
from opslib.ops.cli import main
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
    page = result.output_html.read_text()
    assert "boom with x=4" in page
    # The report opens with the failure: no banner was shown, so the header says ERROR and where.
    header = page.split('<header class="ops-report">', 1)[1].split("</header>", 1)[0]
    assert "<b>ERROR</b> — failed at cell 3: ValueError: boom with x=4" in header
    assert f"<title>99_fail — execution {result.execution_id} — ERROR</title>" in page
    assert 'class="jp-CodeMirrorEditor' not in page and "before the failure" in page  # outputs, no code cells
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
    tall = pd.DataFrame({"id": [f"row-{i}" for i in range(80)], "ids": [list(range(120))] * 80})
    with pd.option_context(
        "display.max_colwidth", 50, "display.max_columns", 20, "display.max_rows", 60, "display.max_seq_items", 100
    ):
        table = display.facts("split", {"rule": long})
        assert long not in table._repr_html_()  # pandas' defaults cut it
        assert "row-40" not in tall._repr_html_()
        show_tables_whole()
        assert long.replace("<", "&lt;") in table._repr_html_()
        whole = tall._repr_html_()
        assert "row-40" in whole and "119]" in whole  # every row, every list item


# Records that end (a killed stage's row is ABANDONED) ----------------------------------------------
def _kill_while_executing(ws: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    """``opsbench run <args>`` in a process SIGKILLed once its stage's row is RUNNING (fault point
    ``stage.executing``: the row and its first heartbeat exist, the notebook has not finished)."""
    env = {
        **ws.settings.as_env(),
        "OPS_FAULT_POINT": STAGE_EXECUTING,
        "PATH": "/usr/bin:/bin",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "opslib.ops.cli", "run", *args, "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_killed_stage_stays_running_until_the_reconciler_abandons_it_and_the_index_and_status_say_so(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    done = _kill_while_executing(ws, "10_feedback_health")
    assert done.returncode == -signal.SIGKILL, done.stderr
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.RUNNING and row.finished_at is None
    assert row.heartbeat_at is not None  # the process beat before it died

    stall = ws.settings.run_stall_after_s
    assert abandon_dead_executions(ws.db, stall_after_s=stall) == []  # the heartbeat is still fresh
    later = row.heartbeat_at + timedelta(seconds=stall + 1)
    rows, _ = collect_run_index(ws, now=later)  # before the reconcile: flagged, not shown as live
    assert rows[0].verdict == "STALLED" and "no heartbeat since" in rows[0].headline[0]

    assert reconcile_executions(ws, now=later) == [row.id]
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.ABANDONED and row.finished_at == later
    assert row.error is not None and row.error["ename"] == "ExecutionAbandoned"
    assert row.error["evalue"].startswith(f"no heartbeat since {row.heartbeat_at.isoformat()}")
    assert row.error["evalue"].endswith("the process running it died")
    assert not recorded_as(row.error, Refused)
    assert abandon_dead_executions(ws.db, stall_after_s=stall, now=later) == []  # ended once, for good
    assert not beat_execution(ws.db, row.id)  # a beat never revives it

    page = (ws.settings.runs_dir / "index.html").read_text()  # rebuilt by the reconcile
    entry = page[page.index(f'id="execution-{row.id}"') :].split("</tr>")[0]
    assert 'class="s-ABANDONED">ABANDONED' in entry and 'class="v v-abandoned">ABANDONED' in entry
    assert "the process running it died" in entry and "RUNNING" not in entry
    assert "ABANDONED 1" in page  # the summary's counts by status

    for key, value in ws.settings.as_env().items():
        monkeypatch.setenv(key, value)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "10_feedback_health" in line)
    assert "ABANDONED" in line and "the process running it died" in out


def test_a_row_ends_only_when_its_heartbeat_or_start_is_stale(ws: Workspace) -> None:
    now = utcnow()
    stall = 60.0
    old, fresh = now - timedelta(seconds=stall + 5), now - timedelta(seconds=stall - 5)

    def add(status: ExecutionStatus, started_at: datetime, heartbeat_at: datetime | None) -> int:
        with ws.db.transaction() as session:
            row = StageExecution(
                stage="10_feedback_health",
                notebook="10_feedback_health.ipynb",
                parameters={},
                status=status,
                started_at=started_at,
                heartbeat_at=heartbeat_at,
                trace_id="t",
            )
            session.add(row)
            session.flush()
            return row.id

    dead = add(ExecutionStatus.RUNNING, old - timedelta(hours=1), old)
    never_beat = add(ExecutionStatus.RUNNING, old, None)  # from before heartbeats: judged by its start
    alive = add(ExecutionStatus.RUNNING, old - timedelta(hours=1), fresh)  # a long stage, still beating
    young = add(ExecutionStatus.RUNNING, fresh, None)
    finished = add(ExecutionStatus.SUCCEEDED, old - timedelta(hours=1), old)
    assert abandon_dead_executions(ws.db, stall_after_s=stall, now=now) == [dead, never_beat]
    by_id = {row.id: row for row in _executions(ws)}
    assert [by_id[i].status for i in (dead, never_beat, alive, young, finished)] == [
        ExecutionStatus.ABANDONED,
        ExecutionStatus.ABANDONED,
        ExecutionStatus.RUNNING,
        ExecutionStatus.RUNNING,
        ExecutionStatus.SUCCEEDED,
    ]
    assert "no heartbeat since it started at" in by_id[never_beat].error["evalue"]
    assert by_id[finished].error is None and by_id[finished].finished_at is None  # untouched
    assert beat_execution(ws.db, alive) and not beat_execution(ws.db, dead)
    with pytest.raises(ValueError, match="stall_after_s"):
        abandon_dead_executions(ws.db, stall_after_s=0)


@pytest.mark.slow
def test_the_heartbeat_runs_with_the_notebook_and_an_abandoned_row_is_never_reopened(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process beats while its notebook runs; when the reconciler ends the row meanwhile (the
    process was only paused past the stall limit), the beat stops and the row stays ABANDONED."""

    class SleepParams(StageParams):
        pass

    ws = Workspace(ws.settings.model_copy(update={"heartbeat_interval_s": 0.2}))
    scratch = _scratch_stage(
        ws,
        tmp_path,
        monkeypatch,
        "96_sleep",
        SleepParams,
        "ops_execution_id = None",
        "import time\ntime.sleep(1.5)",
        "from datetime import timedelta\n"
        "from opslib.db.models import utcnow\n"
        "from opslib.execution.runner import reconcile_executions\n"
        "from opslib.infra.workspace import open_workspace\n"
        "from opslib.db.models import StageExecution\n"
        "ws = open_workspace()\n"
        "ended = reconcile_executions(ws, now=utcnow() + timedelta(hours=1))\n"
        "assert ended == [ops_execution_id], ended\n"
        "with ws.db.read() as session:  # the partial notebook Papermill saved so far is linked\n"
        "    assert session.get(StageExecution, ops_execution_id).output_ipynb.endswith('-96_sleep.ipynb')",
        "time.sleep(1)",
    )
    result = run_stage(scratch, "96_sleep", {})
    assert result.status is ExecutionStatus.SUCCEEDED, result.error  # what this process saw
    (row,) = _executions(ws)
    assert row.status is ExecutionStatus.ABANDONED  # the record ended once and stays so
    assert row.heartbeat_at - row.started_at >= timedelta(seconds=1)  # it beat during the sleep
    assert row.finished_at - row.heartbeat_at > timedelta(minutes=50)  # and stopped once ended
    assert row.output_html == str(result.output_html)  # the archive is still linked
    assert row.output_ipynb == str(result.output_ipynb)
    page = (ws.settings.runs_dir / "index.html").read_text()
    assert 'class="s-ABANDONED">ABANDONED' in page and "the process running it died" in page


# Parameters: real ranges, ids that exist ----------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("20_build_dataset", {"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ("30_train_candidate", {"run_id": 1, "seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        (
            "20_build_dataset",
            {"as_of": "2099-01-01"},
            "as_of: Value error, 2099-01-01T00:00:00\\+00:00 is in the future",
        ),
    ],
)
def test_parameters_out_of_their_real_range_are_refused_before_anything_runs(
    ws: Workspace, name: str, params: dict, message: str
) -> None:
    with pytest.raises(StageError, match=message):
        run_stage(ws, name, params)
    assert _executions(ws) == []


def test_ids_the_metadata_db_does_not_have_are_refused_before_anything_runs(ws: Workspace) -> None:
    from opslib.control.messages import new_training_request
    from opslib.control.queue import publish

    cases = [
        ("30_train_candidate", {"run_id": 99999}, {}, "run_id 99999: no such run"),
        (
            "50_reindex_candidate",
            {"run_id": 99999},
            {"run_id": 99999},
            "invalid parameters: run_id 99999: no such run$",
        ),
        (
            "10_feedback_health",
            {},
            {"run_id": 99999},
            "the execution's run_id 99999: no such run",
        ),  # not IntegrityError
        ("70_rollback", {"message_id": 99999}, {}, "message_id 99999: no such message"),
        (
            "40_evaluate_candidate",
            {"run_id": 99999, "evaluation_dataset_ref": "eval-0123456789abcdef"},
            {},
            "run_id 99999: no such run; evaluation_dataset_ref eval-0123456789abcdef: no such evaluation set",
        ),
    ]
    for name, params, kwargs, message in cases:
        with pytest.raises(StageError, match=message):
            run_stage(ws, name, params, **kwargs)
    training = publish(ws.db, new_training_request(trigger_source="manual", requested_by="t", reason="r"))
    with pytest.raises(StageError, match=f"message_id {training}: is a TRAINING_REQUEST, not a ROLLBACK_REQUEST"):
        run_stage(ws, "70_rollback", {"message_id": training})
    assert _executions(ws) == []
    assert not ws.settings.runs_dir.exists() or not any(ws.settings.runs_dir.rglob("*.ipynb"))
