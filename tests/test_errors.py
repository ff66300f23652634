"""One error root (``opslib.errors.OpsError``) and the markers callers decide on."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import opslib
from opslib.control.messages import MessageRefused, new_rollback_request
from opslib.control.queue import publish, receive
from opslib.control.release import ReleaseConflict, ReleaseError
from opslib.control.runs import RunError, RunNotFound
from opslib.corpus.loader import CorpusError
from opslib.db.models import ExecutionStatus, MessageOutcome, OpsMessage
from opslib.errors import (
    Conflict,
    Invalid,
    NotFound,
    OpsError,
    Refused,
    class_path,
    recorded_as,
    recorded_class,
    resolve_class,
)
from opslib.execution import worker as worker_module
from opslib.execution.registry import StageError
from opslib.execution.runner import StageResult
from opslib.execution.worker import Worker, WorkerReport
from opslib.infra.storage import InvalidKeyError, ObjectExistsError, ObjectNotFoundError, StorageError
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import CutoverRefused
from opslib.lifecycle.dataset.builder import DatasetError
from opslib.lifecycle.feedback.events import InvalidEvent
from opslib.lifecycle.rollback import RollbackRefused
from opslib.ops.actions import ActionRefused
from opslib.ops.cli import CliError

MARKERS = (Refused, NotFound, Invalid, Conflict)


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined at module level anywhere in opslib (walking the package)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(opslib.__path__, "opslib."):
        if ".migrations" in info.name:  # Alembic scripts run only inside Alembic
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{name}"] = value
    return found


def test_every_opslib_exception_has_the_one_root() -> None:
    classes = _exception_classes()
    assert len(classes) >= 30, sorted(classes)  # the walk found them (it is not a hand list)
    # Private control-flow exceptions never escape their module (see the comment on each).
    public = {name: cls for name, cls in classes.items() if not cls.__name__.startswith("_")}
    strays = sorted(name for name, cls in public.items() if not issubclass(cls, OpsError))
    assert strays == [], f"not an OpsError: {strays}"


def test_the_markers_are_ops_errors_and_errors_keep_their_builtin_bases() -> None:
    assert all(issubclass(marker, OpsError) for marker in MARKERS)
    # Code and tests that catch ValueError still catch these.
    for cls in (MessageRefused, InvalidKeyError, StageError, CorpusError, DatasetError, InvalidEvent):
        assert issubclass(cls, ValueError) and issubclass(cls, OpsError), cls


@pytest.mark.parametrize(
    ("cls", "marker"),
    [
        (ActionRefused, Refused),
        (MessageRefused, Refused),
        (ReleaseError, Refused),
        (CutoverRefused, Refused),
        (RollbackRefused, Refused),
        (RunError, Refused),
        (RunNotFound, NotFound),
        (ReleaseConflict, Conflict),
        (ObjectExistsError, Conflict),
        (ObjectNotFoundError, NotFound),
        (InvalidKeyError, Invalid),
        (CliError, Invalid),
    ],
)
def test_markers_say_what_an_error_means(cls: type[OpsError], marker: type[OpsError]) -> None:
    assert issubclass(cls, marker)


def test_a_plain_storage_error_has_no_marker() -> None:
    assert not any(issubclass(StorageError, marker) for marker in MARKERS)


def test_a_class_path_resolves_back_to_its_class() -> None:
    assert class_path(RollbackRefused) == "opslib.lifecycle.rollback:RollbackRefused"
    assert resolve_class(class_path(RollbackRefused)) is RollbackRefused
    assert resolve_class(class_path(ValueError)) is ValueError
    assert recorded_class({"ename": "RollbackRefused", "eclass": class_path(RollbackRefused)}) is RollbackRefused
    assert recorded_as({"eclass": class_path(CutoverRefused)}, Refused)
    # Unknown, malformed, not an exception, or outside opslib and not imported: no class.
    for path in (None, 7, "", "RollbackRefused", "opslib.nope:X", "opslib.errors:nope", "opslib.errors:class_path"):
        assert resolve_class(path) is None
    assert resolve_class("some_module_nobody_imported:Boom") is None
    assert recorded_class(None) is None and not recorded_as({"ename": "RollbackRefused"}, Refused)


# The worker decides by class: a Refused during a rollback is refused, never retried -----------
class BrandNewRefusal(Refused):
    """A refusal no code has ever named."""


class RollbackHiccup(OpsError):
    """Not a refusal; named nothing like one."""


def _failed_rollback(ename: str, cls: type[BaseException] | None) -> Any:
    """A stand-in for ``run_stage``: 70_rollback failed the way the runner records it."""

    def fake_run_stage(ws: Workspace, name: str, params: dict[str, Any], **kwargs: Any) -> StageResult:
        assert name == "70_rollback"
        error = {"cell_index": 3, "execution_count": 2, "ename": ename, "evalue": "no"}
        if cls is not None:
            error["eclass"] = class_path(cls)
        return StageResult(
            1, name, ExecutionStatus.FAILED, ws.settings.runs_dir / "x.ipynb", ws.settings.runs_dir / "x.html", error
        )

    return fake_run_stage


def _roll_back_once(ws: Workspace) -> tuple[str, OpsMessage]:
    message_id = publish(ws.db, new_rollback_request("tiny-base"))
    received = receive(ws.db, "test-worker", visibility_timeout_s=60)
    assert received is not None
    delivery, message = received
    report = WorkerReport()
    Worker(ws, name="test-worker").roll_back(delivery, message, report)
    ((reported_id, outcome),) = report.rollbacks
    assert reported_id == message_id
    with ws.db.read() as session:
        return outcome, session.get(OpsMessage, message_id)


@pytest.mark.parametrize(
    ("ename", "cls"),
    [
        ("RollbackRefused", RollbackRefused),  # the real refusals, as before
        ("MessageRefused", MessageRefused),
        ("ReleaseError", ReleaseError),
        ("BrandNewRefusal", BrandNewRefusal),  # a name nobody listed: refused by its class
    ],
)
def test_a_refused_rollback_is_refused_never_retried(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, ename: str, cls: type[BaseException]
) -> None:
    monkeypatch.setattr(worker_module, "run_stage", _failed_rollback(ename, cls))
    outcome, row = _roll_back_once(ws)
    assert outcome.startswith("refused: ")
    assert row.outcome is MessageOutcome.REFUSED and row.outcome_reason.startswith(f"{ename}: ")


@pytest.mark.parametrize(
    ("ename", "cls"),
    [
        ("RollbackRefused", RollbackHiccup),  # the old name, but not a Refused: the class decides
        ("RollbackRefused", None),  # no class recorded: not known to be a refusal
        ("OSError", OSError),
    ],
)
def test_any_other_rollback_failure_is_retried(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, ename: str, cls: type[BaseException] | None
) -> None:
    monkeypatch.setattr(worker_module, "run_stage", _failed_rollback(ename, cls))
    outcome, row = _roll_back_once(ws)
    assert outcome.startswith("will retry: ") and ws.settings.queue_max_deliveries["ROLLBACK_REQUEST"] > 1
    assert row.outcome is None  # left unacked: redelivered after the visibility timeout
