"""Alembic migrations are the only way tables are created (``opsbench db upgrade``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.resources import as_file, files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, make_url

from opslib.db.engine import Database, sqlite_file
from opslib.errors import Invalid


class SchemaNotReady(Invalid, RuntimeError):
    """The Metadata DB is missing, has no schema, or one other than the code's; the message says
    which command fixes it (``schema_hint``). Nothing was changed."""


def migrations_dir() -> AbstractContextManager[Path]:
    """The Alembic scripts shipped in the package (``opslib/db/migrations``), as a folder on disk."""
    return as_file(files("opslib.db").joinpath("migrations"))


def alembic_config(db: Database, script_location: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


@contextmanager
def _migration_transaction(db: Database) -> Iterator[Connection]:
    """One transaction for a migration. On SQLite, foreign keys are not enforced during it:
    ``batch_alter_table`` rebuilds a table (copy, DROP the old, rename the copy), and with
    enforcement on, DROP TABLE fails when other rows reference the table (a stage execution of a
    run) — or, with ON DELETE CASCADE, deletes them. ``PRAGMA foreign_keys`` is a no-op inside a
    transaction, so it is switched before BEGIN, on the driver's connection; the result is
    checked with ``PRAGMA foreign_key_check`` before the commit, and enforcement is back on
    before the connection returns to the pool."""
    with db.engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # the pysqlite connection is in autocommit mode (opslib.db.engine), no BEGIN yet
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left rows with broken foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def upgrade(db: Database, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the revision now current."""
    with migrations_dir() as location, _migration_transaction(db) as conn:
        cfg = alembic_config(db, location)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(db) or ""


def downgrade(db: Database, revision: str) -> None:
    with migrations_dir() as location, _migration_transaction(db) as conn:
        cfg = alembic_config(db, location)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    cfg = Config()
    with migrations_dir() as location:
        cfg.set_main_option("script_location", str(location))
        head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def schema_hint(current: str | None, head: str) -> str:
    """What to do about a schema at ``current`` when the code needs ``head``: every command and
    ``opsbench status`` say it in these words."""
    if current is None:
        return "the workspace is not initialised: run `opsbench init`"
    return f"the Metadata DB's schema is at revision {current!r}, the code needs {head!r}: run `opsbench db upgrade`"


def require_existing(url: str) -> None:
    """Refuse, with the hint, when ``url`` names a SQLite file that does not exist: connecting
    would create it, and a command that finds no workspace must leave no file behind."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        shown = make_url(url).render_as_string(hide_password=True)
        raise SchemaNotReady(f"Metadata DB at {shown}: no such file; {schema_hint(None, head_revision())}")


def require_current(db: Database) -> None:
    """Refuse to work on a schema that is missing or other than the code's."""
    current, head = current_revision(db), head_revision()
    if current != head:
        shown = db.engine.url.render_as_string(hide_password=True)
        raise SchemaNotReady(f"Metadata DB at {shown}: {schema_hint(current, head)}")
