"""Shared fixtures: a tiny model, a Metadata DB on SQLite (and PostgreSQL when
``OPS_TEST_POSTGRES_URL`` is set), and bootstrapped workspaces."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).parent))

from tiny_model import build_tiny_model

from opslib.db.engine import forget_database
from opslib.infra.workspace import Workspace
from opslib.ops.bootstrap import init_workspace
from opslib.settings import Settings

POSTGRES_URL = os.environ.get("OPS_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])

pytest_plugins = ["backend_coverage", "chroma_server", "s3_server", "pytester"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos", action="store_true", help="run only the chaos run (tests marked chaos)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--chaos`` selects the chaos run, which is left out otherwise (CI runs it as its own step).

    ``@pytest.mark.sqlite_only(reason=...)``: a test whose point is not the database backend runs
    on SQLite only; the reason, written next to the marker, says where its DB side is covered on
    PostgreSQL. Tests parametrised onto PostgreSQL get the ``on_postgresql`` marker (counted by
    ``backend_coverage``)."""
    keep, dropped = [], []
    chaos = config.getoption("--chaos")
    for item in items:
        if (item.get_closest_marker("chaos") is not None) != chaos:
            dropped.append(item)
            continue
        marker = item.get_closest_marker("sqlite_only")
        if marker is not None and not marker.kwargs.get("reason"):
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.sqlite_only needs reason='why not PostgreSQL'")
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("db_url") == "postgresql"
        if on_postgres:
            item.add_marker("on_postgresql")
        (dropped if on_postgres and marker is not None else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(autouse=True)
def _no_ops_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their Settings explicitly; stray OPS_* variables must not leak in."""
    for key in list(os.environ):
        if key.startswith("OPS_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_candidate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (other seed): a candidate whose vectors differ from the base's."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-candidate", seed=1)


def _reset_postgres(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_url(worker_id: str) -> str:
    """``OPS_TEST_POSTGRES_URL``, or under pytest-xdist a database of this worker's own beside
    it (``<db>_gw0``, …), created on first use: workers must not reset each other's schema."""
    assert POSTGRES_URL
    if worker_id == "master":
        return POSTGRES_URL
    base = make_url(POSTGRES_URL)
    name = f"{base.database}_{worker_id}"
    admin = create_engine(base.set(drivername="postgresql+psycopg"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        forget_database(url)
        _reset_postgres(url)
        yield url
        forget_database(url)
    else:
        url = f"sqlite:///{tmp_path / 'metadata.db'}"
        yield url
        forget_database(url)


@pytest.fixture
def settings(tmp_path: Path, db_url: str, tiny_model_dir: Path) -> Settings:
    return Settings(
        workspace=tmp_path / "ws",
        runs_dir=tmp_path / "runs",
        db_url=db_url,
        base_model_path=tiny_model_dir,
        base_model_version="tiny-base",
        log_level="WARNING",
    )


@pytest.fixture
def empty_ws(settings: Settings) -> Workspace:
    """A workspace whose stores exist but with no schema yet."""
    return Workspace(settings)


@pytest.fixture
def ws(settings: Settings) -> Workspace:
    """A bootstrapped workspace: schema at head, tiny base model active, its (empty) index built."""
    workspace = Workspace(settings)
    init_workspace(workspace)
    return workspace
