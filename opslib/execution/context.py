"""What a stage notebook calls first: settings, validated parameters, trace id, workspace.

Notebooks stay thin — a parameters cell, ``open_stage(...)``, calls into opslib, displays.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from opslib.db.migrate import require_current
from opslib.db.models import ExecutionStatus, StageExecution
from opslib.errors import Invalid, OpsError, class_path
from opslib.execution.registry import StageParams, validate_params
from opslib.infra.logs import bind_trace_id, configure_logging, new_trace_id
from opslib.infra.workspace import Workspace, open_workspace
from opslib.settings import Settings


@dataclass(frozen=True)
class StageContext:
    ws: Workspace
    stage: str
    params: StageParams
    execution_id: int | None
    run_id: int | None
    trace_id: str

    def record_outputs(self, **outputs: Any) -> bool:
        """Record what this execution produced on its ``StageExecution`` row (merged into what
        is there). False when the notebook runs by hand, outside the runner: there is no row."""
        if self.execution_id is None:
            return False
        return record_outputs(self.ws, self.execution_id, outputs)


class OutputsError(Invalid, ValueError):
    pass


def record_outputs(ws: Workspace, execution_id: int, outputs: dict[str, Any]) -> bool:
    """Merge ``outputs`` (JSON values) into a RUNNING execution's ``outputs``; a finished one is
    the archive's record and is refused."""
    for key, value in outputs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise OutputsError(f"output {key!r}: not a JSON value ({exc})") from None
    with ws.db.transaction() as session:
        row = session.get(StageExecution, execution_id, with_for_update=True)
        if row is None:
            raise OutputsError(f"execution {execution_id}: no such StageExecution")
        if row.status is not ExecutionStatus.RUNNING:
            raise OutputsError(f"execution {execution_id}: {row.status.value}, its record is closed")
        row.outputs = {**(row.outputs or {}), **outputs}  # a new dict: JSON columns track reassignment
    return True


def recorded_outputs(ws: Workspace, execution_id: int) -> dict[str, Any]:
    """What an execution recorded with ``record_outputs`` ({} if nothing, or no such row)."""
    with ws.db.read() as session:
        row = session.get(StageExecution, execution_id)
        return dict(row.outputs or {}) if row is not None else {}


# The display output a stage kernel adds when an OpsError ends a cell: {"eclass": class_path}.
ERROR_CLASS_MIME = "application/vnd.opslib.error-class+json"


def record_error_classes() -> bool:
    """In a notebook kernel: every ``OpsError`` that ends a cell also publishes its class
    (``ERROR_CLASS_MIME``), which the runner records as the error's ``eclass`` — the kernel's own
    error output names only ``__name__``, and callers decide by class (``opslib.errors``). The
    traceback shows as always. False (nothing done) outside IPython."""
    try:
        from IPython import get_ipython  # deferred: only a notebook kernel needs IPython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False

    def handler(shell: Any, etype: type[BaseException], value: BaseException, tb: Any, tb_offset: Any = None) -> None:
        with contextlib.suppress(Exception):  # a missing record only loses the class, never the error
            from IPython.display import publish_display_data  # deferred: as above

            eclass = class_path(etype)
            # Shown as an HTML comment: invisible in Jupyter and in the archived report.
            publish_display_data({ERROR_CLASS_MIME: {"eclass": eclass}, "text/html": f"<!-- {eclass} -->"})
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)  # the error output, as always

    shell.set_custom_exc((OpsError,), handler)
    return True


def show_tables_whole() -> None:
    """Reports show evidence whole: no cell of a table cut to pandas' 50 characters, no row,
    column or list item elided (a stage's tables are small; what is large is summarised before it
    is shown). The report's CSS wraps what is long instead (``templates/offline``)."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_columns", None)
    pd.set_option("display.max_rows", None)
    pd.set_option("display.max_seq_items", None)


def open_stage(stage: str, params: dict[str, Any], execution_id: int | None = None) -> StageContext:
    """Validate ``params`` and open the workspace the runner (or the operator's env) points at."""
    record_error_classes()
    settings = Settings()
    # The report shows results, not log lines: under the runner the kernel's JSON logs go to the
    # archive's .log file beside the report; run by hand, only warnings reach the notebook.
    if settings.log_file is not None:
        configure_logging(settings.log_level, path=settings.log_file)
    else:
        configure_logging("WARNING")
    validated = validate_params(stage, params)
    show_tables_whole()
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
