"""The notebook runner: validate → execute with Papermill → archive .ipynb + offline HTML → record.

Every execution, failed or not, is archived under ``runs/<YYYYMMDD>/`` and recorded as a
``StageExecution`` row; a failed one records the failing cell and its exception.

Records end. While a stage executes, its process stamps the row's ``heartbeat_at`` every
``settings.heartbeat_interval_s`` (``opslib.infra.heartbeat``). A process killed mid-stage
(kill -9, OOM, machine lost) cannot record how its stage ended; ``abandon_dead_executions`` —
called by every scheduler pass and every worker reconcile — marks a RUNNING row whose heartbeat
(or start, when it never beat) is older than ``settings.run_stall_after_s`` ``ABANDONED``. Every
write that ends a row is guarded on its still being RUNNING, so an ended row never changes again.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, and_, or_, select, update
from sqlalchemy.orm import Session

from opslib.control.outcomes import Verdict
from opslib.db.engine import Database
from opslib.db.models import ExecutionStatus, StageExecution, utcnow
from opslib.errors import Conflict, Refused, class_path, recorded_as
from opslib.execution import run_index
from opslib.execution.context import ERROR_CLASS_MIME
from opslib.execution.registry import EXECUTION_ID_PARAM, check_references, stage_spec, validate_params
from opslib.execution.report import ReportContext, render_report, report_context
from opslib.infra.faults import checkpoint
from opslib.infra.heartbeat import heartbeating
from opslib.infra.logs import current_trace_id, get_logger, trace
from opslib.infra.offline import OFFLINE_ENVIRONMENT
from opslib.infra.vector_store import forget_local_clients
from opslib.infra.workspace import Workspace

log = get_logger(__name__)
_environ_lock = threading.Lock()


@dataclass(frozen=True)
class StageResult:
    execution_id: int
    stage: str
    status: ExecutionStatus
    output_ipynb: Path
    output_html: Path
    error: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.status is ExecutionStatus.SUCCEEDED

    @property
    def refused(self) -> bool:
        """Failed with a ``Refused`` (a guard said no): never retried, shown as REFUSED."""
        return recorded_as(self.error, Refused)


def render_html(ipynb_path: Path, html_path: Path, context: ReportContext | None = None) -> Path:
    """Render an executed notebook to the reviewers' report (``opslib.execution.report``): HTML
    that needs no network (no CDN scripts), no code cells, the verdict banner first. ``context``
    adds the execution's links and failure (``report_context``); without it the page has none."""
    # Deferred: nbformat validates with jsonschema, whose format checkers take seconds to import.
    import nbformat

    body = render_report(nbformat.read(ipynb_path, as_version=4), context)
    tmp = html_path.with_suffix(".html.part")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path


def _failure_banner(error: dict[str, Any] | None) -> tuple[str, str] | None:
    """The header's verdict for a failed execution: REFUSED (a guard said no) or ERROR, and why."""
    if error is None:
        return None
    verdict = Verdict.REFUSED if recorded_as(error, Refused) else Verdict.ERROR
    where = f"failed at cell {error['cell_index']}" if error.get("cell_index") is not None else "failed"
    return verdict.value, f"{where}: {error.get('ename')}: {error.get('evalue')}"


@contextmanager
def _kernel_environment(settings_env: dict[str, str]) -> Iterator[None]:
    """The kernel Papermill starts inherits this process's environment: swap in our OPS_ values.

    Only OPS_ variables change (nothing else in the process reads them: settings are passed as
    objects), plus the offline flags (``opslib.infra.offline``) where this process has none: the
    kernel loads models and must not download. The lock keeps two stage runs in one process from
    interleaving; everything is restored afterwards.
    """
    with _environ_lock:
        saved = {k: v for k, v in os.environ.items() if k.startswith("OPS_")}
        unset_offline = [k for k in OFFLINE_ENVIRONMENT if k not in os.environ]
        for key in saved:
            del os.environ[key]
        os.environ.update(settings_env)
        os.environ.update({k: OFFLINE_ENVIRONMENT[k] for k in unset_offline})
        try:
            yield
        finally:
            for key in [k for k in os.environ if k.startswith("OPS_")] + unset_offline:
                os.environ.pop(key, None)
            os.environ.update(saved)


def recorded_error_class(output_ipynb: Path, ename: str) -> str | None:
    """The ``class_path`` a failed notebook's kernel published for the OpsError ``ename`` that
    ended it (``opslib.execution.context.record_error_classes``), or None."""
    try:
        cells = json.loads(output_ipynb.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    found = None
    for cell in cells:
        for output in cell.get("outputs", ()) if isinstance(cell, dict) else ():
            record = output.get("data", {}).get(ERROR_CLASS_MIME) if isinstance(output, dict) else None
            eclass = record.get("eclass") if isinstance(record, dict) else None
            if isinstance(eclass, str) and eclass.rpartition(".")[2].rpartition(":")[2] == ename:
                found = eclass
    return found


def _error_from(exc: BaseException, output_ipynb: Path) -> dict[str, Any]:
    """The recorded error: failing cell, class name and message, and ``eclass``, the class's
    ``class_path`` when known (what callers decide on: ``opslib.errors.recorded_as``)."""
    from papermill.exceptions import PapermillExecutionError  # deferred: papermill takes seconds

    if isinstance(exc, PapermillExecutionError):
        return {
            "cell_index": exc.cell_index,
            "execution_count": exc.exec_count,
            "ename": exc.ename,
            "evalue": exc.evalue,
            "eclass": recorded_error_class(output_ipynb, exc.ename),
        }
    return {
        "cell_index": None,
        "execution_count": None,
        "ename": type(exc).__name__,
        "evalue": str(exc),
        "eclass": class_path(type(exc)),
    }


def _rebuild_run_index(ws: Workspace) -> None:
    """Refresh ``runs/index.html``; a failure is logged and never fails the stage."""
    try:
        run_index.build_run_index(ws)
    except Exception:
        log.exception("run index not rebuilt (`opsbench report` rebuilds it)")


# Liveness and the end of a record ---------------------------------------------------------
# The fault point at which a test kills the process executing a stage (``opslib.infra.faults``):
# after its RUNNING row and first heartbeat exist, before the notebook starts.
STAGE_EXECUTING = "stage.executing"
ABANDONED_ENAME = "ExecutionAbandoned"  # the ``ename`` recorded on an ABANDONED row's ``error``


def _still_running(execution_id: int) -> Any:
    return and_(StageExecution.id == execution_id, StageExecution.status == ExecutionStatus.RUNNING)


def beat_execution(db: Database, execution_id: int, now: datetime | None = None) -> bool:
    """Stamp a RUNNING execution's ``heartbeat_at``; False once the row has ended (its beat stops)."""
    with db.transaction() as session:
        changed = cast(  # DML: Session.execute is typed Result, returns a CursorResult
            CursorResult[Any],
            session.execute(
                update(StageExecution).where(_still_running(execution_id)).values(heartbeat_at=now or utcnow())
            ),
        ).rowcount
    return bool(changed)


def abandon_dead_executions(db: Database, *, stall_after_s: float, now: datetime | None = None) -> list[int]:
    """Mark ``ABANDONED`` every RUNNING ``StageExecution`` whose process died: no heartbeat (or,
    never stamped, no start) within ``stall_after_s`` of ``now``. One transaction; each row is
    changed only if it is still RUNNING and still stale (a beat that lands first keeps it alive).
    ``finished_at`` = ``now``; ``error`` says since when nothing was heard. Returns the ids ended."""
    if stall_after_s <= 0:
        raise ValueError(f"stall_after_s {stall_after_s}: must be > 0")
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stall_after_s)
    stale = or_(
        and_(StageExecution.heartbeat_at.is_not(None), StageExecution.heartbeat_at < cutoff),
        and_(StageExecution.heartbeat_at.is_(None), StageExecution.started_at < cutoff),
    )
    ended = []
    with db.transaction() as session:
        candidates = session.execute(
            select(StageExecution.id, StageExecution.stage, StageExecution.heartbeat_at, StageExecution.started_at)
            .where(StageExecution.status == ExecutionStatus.RUNNING, stale)
            .order_by(StageExecution.id)
        ).all()
        for execution_id, stage, heartbeat_at, started_at in candidates:
            since = (
                f"no heartbeat since {heartbeat_at.isoformat()}"
                if heartbeat_at
                else (f"no heartbeat since it started at {started_at.isoformat()}")
            )
            error = {
                "cell_index": None,
                "execution_count": None,
                "ename": ABANDONED_ENAME,
                "evalue": f"{since} (stall limit {stall_after_s:g} s): the process running it died",
                "eclass": None,
            }
            changed = cast(
                CursorResult[Any],
                session.execute(
                    update(StageExecution)
                    .where(_still_running(execution_id), stale)
                    .values(status=ExecutionStatus.ABANDONED, finished_at=now, error=error)
                ),
            ).rowcount
            if changed:
                ended.append(execution_id)
                log.warning(
                    "stage execution abandoned: its process died",
                    extra={"execution_id": execution_id, "stage": stage, "reason": error["evalue"]},
                )
    return ended


def reconcile_executions(ws: Workspace, now: datetime | None = None) -> list[int]:
    """``abandon_dead_executions`` with the workspace's ``run_stall_after_s``; the ids ended.

    Papermill saves the executed notebook cell by cell, so an abandoned execution's partial
    ``.ipynb`` (where it was when its process died) is linked from its row when it exists; the run
    index is rebuilt, so ``runs/index.html`` shows the row ABANDONED."""
    ended = abandon_dead_executions(ws.db, stall_after_s=ws.settings.run_stall_after_s, now=now)
    if not ended:
        return ended
    with ws.db.transaction() as session:
        for row in session.scalars(select(StageExecution).where(StageExecution.id.in_(ended))):
            partial_ipynb = _archive_paths(ws.settings.runs_dir, row.started_at, row.id, row.stage)[0]
            if row.output_ipynb is None and partial_ipynb.is_file():
                row.output_ipynb = str(partial_ipynb)
    _rebuild_run_index(ws)
    return ended


def _archive_paths(runs_dir: Path, started: datetime, execution_id: int, name: str) -> tuple[Path, Path, Path]:
    """Where an execution is archived: ``runs/<YYYYMMDD>/<HHMMSS>-<id>-<stage>`` .ipynb, .html and
    .log (the kernel's JSON log lines)."""
    stem = runs_dir / started.strftime("%Y%m%d") / f"{started.strftime('%H%M%S')}-{execution_id:06d}-{name}"
    return stem.with_name(stem.name + ".ipynb"), stem.with_name(stem.name + ".html"), stem.with_name(stem.name + ".log")


def kernel_log_path(runs_dir: Path, execution: StageExecution) -> Path:
    """Where the kernel of ``execution`` writes its JSON log lines while it runs (beside its archive)."""
    return _archive_paths(runs_dir, execution.started_at, execution.id, execution.stage)[2]


def run_stage(
    ws: Workspace,
    name: str,
    params: dict[str, Any] | None = None,
    *,
    run_id: int | None = None,
    trace_id: str | None = None,
    progress: bool = False,
    on_created: Callable[[Session, StageExecution], None] | None = None,
) -> StageResult:
    """Execute stage ``name``; bad parameters raise ``StageError`` before anything starts: out of
    range, or naming a run, message or evaluation set the Metadata DB does not have (and so does a
    ``run_id`` for the execution that names no run).

    ``on_created`` runs inside the transaction that records the ``StageExecution`` (an operator
    action writes its audit row there, so the two exist together or not at all)."""
    spec = stage_spec(name)
    validated = validate_params(name, dict(params or {}))
    check_references(ws.db, name, validated, run_id=run_id)
    notebook = ws.settings.resolved_notebooks_dir / spec.notebook
    if not notebook.is_file():
        raise FileNotFoundError(f"stage {name}: notebook {notebook} is missing")
    with trace(trace_id or current_trace_id()) as tid:
        parameters = validated.model_dump(mode="json")
        started = utcnow()
        with ws.db.transaction() as session:
            execution = StageExecution(
                run_id=run_id,
                stage=name,
                notebook=spec.notebook,
                parameters=parameters,
                status=ExecutionStatus.RUNNING,
                started_at=started,
                heartbeat_at=started,
                trace_id=tid,
            )
            session.add(execution)
            session.flush()
            execution_id = execution.id
            if on_created is not None:
                on_created(session, execution)
        output_ipynb, output_html, output_log = _archive_paths(ws.settings.runs_dir, started, execution_id, name)
        output_ipynb.parent.mkdir(parents=True, exist_ok=True)
        log.info("stage started", extra={"stage": name, "execution_id": execution_id, "run_id": run_id})

        error: dict[str, Any] | None = None
        # This process proves it is alive until the row is final (rendering and the failure
        # handler included); a killed process stops beating and the reconciler ends the row.
        with heartbeating(
            partial(beat_execution, ws.db, execution_id),
            ws.settings.heartbeat_interval_s,
            name=f"heartbeat-execution-{execution_id}",
            context={"stage": name, "execution_id": execution_id},
        ):
            checkpoint(ws.settings, STAGE_EXECUTING)
            try:
                import papermill  # deferred: it loads nbformat and nbclient (seconds)

                with _kernel_environment({**ws.settings.as_env(), "OPS_LOG_FILE": str(output_log)}):
                    papermill.execute_notebook(
                        str(notebook),
                        str(output_ipynb),
                        parameters={**parameters, EXECUTION_ID_PARAM: execution_id},
                        kernel_name=ws.settings.kernel_name,
                        cwd=str(notebook.parent),
                        progress_bar=progress,
                        execution_timeout=ws.settings.stage_timeout_s,
                        # The kernel's own log: errors only (it warns about loopback TCP on every start).
                        extra_arguments=["--log-level=ERROR"],
                    )
            except Exception as exc:  # the notebook's failure is recorded, not raised
                error = _error_from(exc, output_ipynb)
                log.error("stage failed", extra={"stage": name, "execution_id": execution_id, **error})
            # The kernel may have written the embedded vector store: re-read it from disk next time.
            forget_local_clients()
            if output_ipynb.is_file():
                try:
                    context = report_context(
                        ws,
                        execution_id,
                        output_html,
                        log_path=output_log,
                        ipynb_path=output_ipynb,
                        failure=_failure_banner(error),
                    )
                    render_html(output_ipynb, output_html, context)
                except Exception:  # the execution still gets recorded; its row shows no HTML
                    log.exception("HTML rendering failed", extra={"stage": name, "execution_id": execution_id})
            status = ExecutionStatus.FAILED if error else ExecutionStatus.SUCCEEDED
            # A lost race (a Conflict, e.g. another worker holds the release lease) settles nothing
            # about the run: only other failures go to the run's failure handler.
            if error and run_id is not None and spec.on_failure is not None and not recorded_as(error, Conflict):
                reason = f"{name} failed at cell {error['cell_index']}: {error['ename']}: {error['evalue']}"
                spec.on_failure(ws, run_id, reason, validated)
            _finish(ws, execution_id, status, error, output_ipynb, output_html)
        log.info("stage finished", extra={"stage": name, "execution_id": execution_id, "status": status.value})
        _rebuild_run_index(ws)
        return StageResult(execution_id, name, status, output_ipynb, output_html, error)


def _finish(
    ws: Workspace,
    execution_id: int,
    status: ExecutionStatus,
    error: dict[str, Any] | None,
    output_ipynb: Path,
    output_html: Path,
) -> None:
    """Record how the execution ended — only on a row still RUNNING. One the reconciler already
    marked ABANDONED (this process was paused past the stall limit, then went on) stays ABANDONED:
    an ended record never changes; its archive paths are still filled in and the outcome logged."""
    archive = {
        "output_ipynb": str(output_ipynb) if output_ipynb.is_file() else None,
        "output_html": str(output_html) if output_html.is_file() else None,
    }
    with ws.db.transaction() as session:
        changed = cast(
            CursorResult[Any],
            session.execute(
                update(StageExecution)
                .where(_still_running(execution_id))
                .values(status=status, error=error, finished_at=utcnow(), **archive)
            ),
        ).rowcount
        if not changed:
            row = session.get(StageExecution, execution_id)
            assert row is not None
            row.output_ipynb = row.output_ipynb or archive["output_ipynb"]
            row.output_html = row.output_html or archive["output_html"]
            log.warning(
                "stage execution ended after its row was closed: the row keeps its status",
                extra={"execution_id": execution_id, "row_status": row.status.value, "outcome": status.value},
            )
