from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from opslib.db.migrate import (
    current_revision,
    downgrade,
    head_revision,
    require_current,
    upgrade,
)
from opslib.db.models import (
    Base,
    MLPipelineRun,
    ModelRelease,
    ReleaseStatus,
    RunStatus,
    TriggerSource,
    Video,
    VideoStatus,
)
from opslib.infra.workspace import Workspace

TABLES = {
    "videos",
    "chunks",
    "vector_index_entries",
    "search_response_snapshots",
    "ml_pipeline_runs",
    "stage_executions",
    "training_datasets",
    "evaluation_datasets",
    "model_versions",
    "model_evaluations",
    "model_releases",
    "release_events",
    "ops_messages",
    "audit_log",
    "corpus_imports",
    "schedule_ticks",
}


def _run(status: RunStatus) -> MLPipelineRun:
    return MLPipelineRun(status=status, trigger_source=TriggerSource.MANUAL, trace_id="t")


def test_upgrade_creates_every_design_table(empty_ws: Workspace) -> None:
    assert current_revision(empty_ws.db) is None
    with pytest.raises(RuntimeError, match="opsbench db upgrade"):
        require_current(empty_ws.db)
    assert upgrade(empty_ws.db) == head_revision()
    assert set(inspect(empty_ws.db.engine).get_table_names()) >= TABLES
    require_current(empty_ws.db)


def test_migrations_match_the_models(empty_ws: Workspace) -> None:
    upgrade(empty_ws.db)

    def include(obj: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
        # Keyword-search objects live outside the ORM: FTS5 shadow tables, the tsvector column.
        if kind == "table" and name and (name.startswith("chunk_fts") or name == "alembic_version"):
            return False
        if kind == "column" and name == "enriched_tsv":
            return False
        if kind == "index" and name and name.startswith("ix_chunks_enriched"):  # noqa: SIM103 (a guard per kind)
            return False
        return True

    with empty_ws.db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include, "compare_type": False})
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_removes_everything(empty_ws: Workspace) -> None:
    upgrade(empty_ws.db)
    downgrade(empty_ws.db, "base")
    assert not TABLES & set(inspect(empty_ws.db.engine).get_table_names())
    upgrade(empty_ws.db)  # and it comes back
    assert set(inspect(empty_ws.db.engine).get_table_names()) >= TABLES


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.PENDING])
def test_database_allows_only_one_running_and_one_pending_run(empty_ws: Workspace, status: RunStatus) -> None:
    upgrade(empty_ws.db)
    with empty_ws.db.transaction() as session:
        session.add(_run(status))
    with pytest.raises(IntegrityError), empty_ws.db.transaction() as session:
        session.add(_run(status))
    with empty_ws.db.transaction() as session:  # other statuses are not limited
        session.add_all([_run(RunStatus.FAILED), _run(RunStatus.FAILED), _run(RunStatus.SUPERSEDED)])
        session.add(_run(RunStatus.PENDING if status is RunStatus.RUNNING else RunStatus.RUNNING))
    with empty_ws.db.read() as session:
        assert session.query(MLPipelineRun).count() == 5


def test_release_row_updates_are_compare_and_swap(empty_ws: Workspace) -> None:
    upgrade(empty_ws.db)
    with empty_ws.db.transaction() as session:
        session.add(
            ModelRelease(release_status=ReleaseStatus.STABLE, active_model_version="a", active_index_name="idx-a")
        )
    first, second = empty_ws.db._writer(), empty_ws.db._writer()
    mine = first.query(ModelRelease).one()
    first.commit()  # release the SQLite write lock so the second writer can read
    theirs = second.query(ModelRelease).one()
    theirs.active_model_version = "b"
    second.commit()
    mine.active_model_version = "c"
    with pytest.raises(StaleDataError):
        first.commit()
    first.close()
    second.close()
    with empty_ws.db.read() as session:
        row = session.query(ModelRelease).one()
        assert (row.active_model_version, row.row_version) == ("b", 2)


def test_naive_datetimes_are_refused_and_aware_ones_come_back_utc(empty_ws: Workspace) -> None:
    upgrade(empty_ws.db)
    with pytest.raises(Exception, match="naive datetime"), empty_ws.db.transaction() as session:
        session.add(
            Video(
                id="v1",
                user_id="u",
                project_id="p",
                title="t",
                status=VideoStatus.READY,
                created_at=datetime(2026, 1, 1),
            )
        )
    with empty_ws.db.transaction() as session:
        session.add(
            Video(
                id="v1",
                user_id="u",
                project_id="p",
                title="t",
                status=VideoStatus.READY,
                created_at=datetime(2026, 1, 1, 9, tzinfo=UTC),
            )
        )
    with empty_ws.db.read() as session:
        created = session.get(Video, "v1").created_at
    assert created == datetime(2026, 1, 1, 9, tzinfo=UTC) and created.tzinfo is not None


def test_enum_columns_refuse_unknown_states(empty_ws: Workspace) -> None:
    from sqlalchemy.exc import StatementError

    upgrade(empty_ws.db)
    with pytest.raises(StatementError, match="DONE"), empty_ws.db.transaction() as session:
        session.add(Video(id="v1", user_id="u", project_id="p", title="t", status="DONE"))  # type: ignore[arg-type]
