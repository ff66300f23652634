"""Alembic migrations are the only way tables are created (``opsbench db upgrade``)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.resources import as_file, files
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from opslib.db.engine import Database


def migrations_dir() -> AbstractContextManager[Path]:
    """The Alembic scripts shipped in the package (``opslib/db/migrations``), as a folder on disk."""
    return as_file(files("opslib.db").joinpath("migrations"))


def alembic_config(db: Database, script_location: Path) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    return cfg


def upgrade(db: Database, revision: str = "head") -> str:
    """Bring the schema to ``revision``; returns the revision now current."""
    with migrations_dir() as location, db.engine.begin() as conn:
        cfg = alembic_config(db, location)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(db) or ""


def downgrade(db: Database, revision: str) -> None:
    with migrations_dir() as location, db.engine.begin() as conn:
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


def require_current(db: Database) -> None:
    """Refuse to work on a schema that is missing or behind the code."""
    current = current_revision(db)
    if current != head_revision():
        raise RuntimeError(
            f"Metadata DB at {db.engine.url.render_as_string(hide_password=True)} is at revision {current!r}, code needs {head_revision()!r}: "
            "run `opsbench db upgrade`"
        )
