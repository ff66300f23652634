"""What a stage notebook calls first: settings, validated parameters, trace id, workspace.

Notebooks stay thin — a parameters cell, ``open_stage(...)``, calls into opslib, displays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opslib.db.migrate import require_current
from opslib.db.models import StageExecution
from opslib.logs import bind_trace_id, configure_logging, new_trace_id
from opslib.settings import Settings
from opslib.stages import StageParams, validate_params
from opslib.workspace import Workspace, open_workspace


@dataclass(frozen=True)
class StageContext:
    ws: Workspace
    stage: str
    params: StageParams
    execution_id: int | None
    run_id: int | None
    trace_id: str


def open_stage(stage: str, params: dict[str, Any], execution_id: int | None = None) -> StageContext:
    """Validate ``params`` and open the workspace the runner (or the operator's env) points at."""
    settings = Settings()
    # The report shows results, not log lines: under the runner the kernel's JSON logs go to the
    # archive's .log file beside the report; run by hand, only warnings reach the notebook.
    if settings.log_file is not None:
        configure_logging(settings.log_level, path=settings.log_file)
    else:
        configure_logging("WARNING")
    validated = validate_params(stage, params)
    ws = open_workspace(settings)
    require_current(ws.db)
    run_id, trace_id = None, new_trace_id()
    if execution_id is not None:
        with ws.db.read() as session:
            row = session.get(StageExecution, execution_id)
            if row is None:
                raise LookupError(f"ops_execution_id {execution_id}: no such StageExecution")
            run_id, trace_id = row.run_id, row.trace_id
    bind_trace_id(trace_id)
    return StageContext(ws, stage, validated, execution_id, run_id, trace_id)
