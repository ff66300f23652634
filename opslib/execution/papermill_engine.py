"""``opsbench``: a Papermill engine that executes a stage exactly like ``opsbench run``.

Registered under the ``papermill.engine`` entry point (pyproject.toml), so
``papermill --engine opsbench notebooks/10_feedback_health.ipynb out.ipynb -p window_days 3`` and
``papermill.execute_notebook(..., engine_name="opsbench")`` get the runner's guarantees:

1. The stage is the one whose registered notebook has the input notebook's file name; any other
   input is refused (``StageError``, listing the stage notebooks).
2. The caller's parameters — Papermill records them in the notebook's ``papermill.parameters``
   metadata before it hands the notebook to an engine — are validated with the stage's schema
   before anything runs: an unknown, missing or mistyped one is a ``StageError`` naming the field.
3. ``run_stage`` does the rest, as for ``opsbench run`` without ``--run-id``: checks the ids the
   parameters name, records the ``StageExecution``, executes the workspace's registered notebook
   with Papermill's default engine (never this one: no recursion) and the workspace's kernel and
   timeout, archives the .ipynb and offline HTML under ``runs/`` and rebuilds the run index.
4. The archived executed notebook is what Papermill writes to the caller's output path. A failed
   stage writes it there too, then raises ``StageFailed`` (``StageRefused`` when a guard said no),
   so ``papermill`` exits non-zero and an Airflow task fails.

The workspace comes from the ``OPS_*`` environment (``OPS_CONFIG_FILE`` included), as for
``opsbench``. The execution belongs to no run (a run's stages are the worker's to drive); a
``run_id`` parameter is the stage's own, checked against the Metadata DB like any other.

Papermill imports every registered engine whenever it is imported (also inside ``run_stage``),
so this module imports nothing heavy until an execution starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opslib.errors import OpsError, Refused

if TYPE_CHECKING:
    from opslib.execution.runner import StageResult

# The name callers pass as Papermill's engine (``--engine`` / ``engine_name``).
ENGINE_NAME = "opsbench"


class StageFailed(OpsError):
    """The stage executed and failed; its execution is recorded and archived (``result``)."""

    def __init__(self, message: str, result: StageResult | None = None) -> None:
        super().__init__(message)  # ``result`` optional: the error still pickles (one arg)
        self.result = result


class StageRefused(StageFailed, Refused):
    """The stage executed and a guard refused (``opslib.errors.Refused``): never retried."""


def stage_of_notebook(input_path: object) -> str:
    """The stage whose registered notebook has ``input_path``'s file name."""
    from opslib.execution.registry import STAGES, StageError

    name = input_path.replace("\\", "/").rpartition("/")[2] if isinstance(input_path, str) else None
    for spec in STAGES.values():
        if spec.notebook == name:
            return spec.name
    known = ", ".join(sorted(spec.notebook for spec in STAGES.values()))
    raise StageError(
        f"input notebook {input_path if isinstance(input_path, str) else type(input_path).__name__!r}: "
        f"not a stage notebook; the {ENGINE_NAME} engine executes only these: {known}"
    )


def papermill_parameters(nb: Any) -> dict[str, Any]:
    """The parameters the caller gave Papermill ({} when none: Papermill records only given ones)."""
    recorded = nb.metadata.get("papermill", {}).get("parameters")
    return dict(recorded) if isinstance(recorded, Mapping) else {}


def _warn_if_not_the_registered_notebook(input_path: str, registered: Path) -> None:
    """The registered notebook is what runs (as for ``opsbench run``): say so if the input differs."""
    from opslib.infra.logs import get_logger

    given = Path(input_path)
    if given.is_file() and registered.is_file() and given.read_bytes() != registered.read_bytes():
        get_logger(__name__).warning(
            "the input notebook differs from the stage's registered notebook: the registered one is executed",
            extra={"input_notebook": str(given), "executed_notebook": str(registered)},
        )


def execute_stage(nb: Any, input_path: object, progress: bool) -> tuple[Any, StageResult]:
    """Validate, then run the stage ``input_path`` names with the parameters recorded in ``nb``;
    the executed notebook (as archived) and the runner's result."""
    import nbformat

    from opslib.db.migrate import require_current
    from opslib.execution.registry import stage_spec, validate_params
    from opslib.execution.runner import run_stage
    from opslib.infra.workspace import open_workspace

    stage = stage_of_notebook(input_path)
    parameters = papermill_parameters(nb)
    validate_params(stage, parameters)  # before the workspace is even opened
    ws = open_workspace()  # the OPS_* environment, as for `opsbench`
    require_current(ws.db)
    registered = ws.settings.resolved_notebooks_dir / stage_spec(stage).notebook
    _warn_if_not_the_registered_notebook(str(input_path), registered)  # a path: it named the stage
    result = run_stage(ws, stage, parameters, progress=progress)
    executed = nbformat.read(result.output_ipynb, as_version=4) if result.output_ipynb.is_file() else nb
    executed.metadata["opsbench"] = {
        "execution_id": result.execution_id,
        "status": result.status.value,
        "archived_ipynb": str(result.output_ipynb),
        "archived_html": str(result.output_html),
    }
    return executed, result


def _failure_message(result: StageResult) -> str:
    error = result.error or {}
    return (
        f"{result.stage} {result.status.value} (execution {result.execution_id}) at cell {error.get('cell_index')}: "
        f"{error.get('ename')}: {error.get('evalue')}; report: {result.output_html}"
    )


class OpsbenchEngine:
    """Papermill's engine interface (what ``papermill.engines.Engine`` offers callers), backed by
    the stage runner instead of a per-cell executor. Not a subclass: importing Papermill's engines
    module from here would re-enter it while it is loading its entry points."""

    @classmethod
    def execute_notebook(cls, nb: Any, kernel_name: str | None, **kwargs: Any) -> Any:
        """Papermill's call; ``kernel_name``, ``cwd`` and timeouts are the workspace's (as for
        ``opsbench run``), so the caller's are not used."""
        from papermill.iorw import write_ipynb

        executed, result = execute_stage(nb, kwargs.get("input_path"), progress=bool(kwargs.get("progress_bar")))
        if result.ok:
            return executed  # Papermill writes it to the output path
        # Papermill's own output_path argument is None without save-on-cell; the metadata has it.
        output_path = nb.metadata.get("papermill", {}).get("output_path")
        if output_path:
            write_ipynb(executed, output_path)
        raise (StageRefused if result.refused else StageFailed)(_failure_message(result), result)

    @classmethod
    def nb_kernel_name(cls, nb: Any, name: str | None = None) -> str:
        from papermill.utils import nb_kernel_name

        return str(nb_kernel_name(nb, name))

    @classmethod
    def nb_language(cls, nb: Any, language: str | None = None) -> str:
        from papermill.utils import nb_language

        return str(nb_language(nb, language))
