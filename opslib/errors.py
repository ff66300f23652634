"""The one root of opslib's errors, and the markers callers decide on.

Every exception class in opslib subclasses ``OpsError``, and most also one marker saying what
kind of "no" it is. Callers decide by marker class, never by a class's name:

* the CLI maps each marker to its exit code (``opslib.ops.cli.exit_code``);
* the worker never retries a ``Refused`` (``opslib.execution.worker``);
* reports and the dashboard show a ``Refused`` as REFUSED, not as an ERROR.

A class may carry two markers when a subclass narrows its base (``RunNotFound`` is a refused
run transition, ``ReleaseConflict`` a refused release transition): the worker still never retries
it (it is ``Refused``); the CLI reports the narrower marker (``Conflict``, then ``NotFound``).

A failure in a notebook kernel crosses a process boundary as a recorded error dict; its class
travels as ``class_path`` (recorded by ``opslib.execution.context`` in the kernel) and comes back
with ``recorded_class``. This module imports nothing from opslib (``resolve_class`` imports the
named ``opslib`` module on demand).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


class OpsError(Exception):
    """Root of every opslib error. Without a marker: an operation failed (a system error);
    the CLI exits 1 and reports show ERROR."""


class Refused(OpsError):
    """A guard said no; nothing was changed. Never retried (the same request would be refused
    again); shown as a refusal, not as an ERROR. The CLI exits 3."""


class NotFound(OpsError):
    """What the caller named does not exist (a run, an object key). The CLI exits 4."""


class Invalid(OpsError):
    """Bad input: fix the request and try again; retrying it unchanged fails the same way.
    The CLI exits 2, like a usage error."""


class Conflict(OpsError):
    """Lost a race or a compare-and-swap (something changed underneath, or already exists):
    re-read the state before trying again. The CLI exits 5."""


class IntegrityFailure(OpsError):
    """Stored data failed its check on read: an object no longer matches the sha256 recorded when
    it was written, an object the Metadata DB records is gone, or a store's own files (the Metadata
    DB's SQLite file, Chroma's) are damaged. Nothing was used from it; the message names the key
    or the file. Without a marker: a system error (the CLI exits 1, reports show ERROR). Retrying
    reads the same bytes again: the fix is an operator's — restore from a backup, or rebuild what
    can be rebuilt (docs/reliability.md, "Verified reads")."""


def class_path(cls: type[BaseException]) -> str:
    """``module:qualname`` of an exception class: how its class crosses a process boundary."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(path: object) -> type[BaseException] | None:
    """The exception class ``path`` (a ``class_path``) names, or None if it names none.

    Only a module already imported or inside the ``opslib`` package is imported to find it."""
    if not isinstance(path, str) or ":" not in path:
        return None
    module_name, _, qualname = path.partition(":")
    module: Any = sys.modules.get(module_name)
    if module is None:
        if module_name != "opslib" and not module_name.startswith("opslib."):
            return None
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def recorded_class(error: Mapping[str, Any] | None) -> type[BaseException] | None:
    """The class of a recorded failure (a ``StageExecution.error`` dict: its ``eclass``)."""
    return resolve_class(error.get("eclass")) if isinstance(error, Mapping) else None


def recorded_as(error: Mapping[str, Any] | None, marker: type[OpsError]) -> bool:
    """Whether a recorded failure's class is a ``marker`` (e.g. ``Refused``); False if unknown."""
    cls = recorded_class(error)
    return cls is not None and issubclass(cls, marker)
