from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import JSON, Connection, DateTime, bindparam, inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

from opslib.corpus.search import keyword_search
from opslib.db.engine import Database
from opslib.db.migrate import (
    SchemaNotReady,
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
    "feedback_outbox",
    "serving_endpoints",
    "stage_leases",
    "reindex_shards",
    "chunk_changes",
    "database_identity",
}
# Tables whose rows only the database writes (0012: the identity row, the chunk change log's triggers).
WRITTEN_BY_THE_DATABASE = {"chunk_changes", "database_identity"}


def _run(status: RunStatus) -> MLPipelineRun:
    return MLPipelineRun(status=status, trigger_source=TriggerSource.MANUAL, trace_id="t")


def test_upgrade_creates_every_design_table(empty_ws: Workspace) -> None:
    assert current_revision(empty_ws.db) is None
    with pytest.raises(SchemaNotReady, match="the workspace is not initialised: run `opsbench init`"):
        require_current(empty_ws.db)
    upgrade(empty_ws.db, "0010")
    with pytest.raises(SchemaNotReady, match=r"is at revision '0010', the code needs .*: run `opsbench db upgrade`"):
        require_current(empty_ws.db)
    assert upgrade(empty_ws.db) == head_revision()
    assert set(inspect(empty_ws.db.engine).get_table_names()) >= TABLES
    require_current(empty_ws.db)


def test_migrations_match_the_models(empty_ws: Workspace) -> None:
    upgrade(empty_ws.db)

    def include(obj: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
        return not (kind == "table" and name == "alembic_version")

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


# Upgrading a populated database ---------------------------------------------------------------
T0 = datetime(2026, 11, 30, 9, 15, 30, 123456, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# Rows written at revision 0001 with raw SQL, in foreign-key order: every column 0001 has is set
# in at least one row, so "preserved" covers each of them. Integer keys are left to the database:
# it is fresh, so the n-th row of a table gets id n (checked), which the references below use.
ROWS_0001: dict[str, list[dict[str, Any]]] = {
    "videos": [
        {
            "id": "v-old",
            "user_id": "u1",
            "project_id": "p1",
            "title": "an old video",
            "category": "howto",
            "status": "READY",
            "search_serving_state": "ROLLBACK_EXCLUDED",
            "failed_stage": "INDEXING",
            "created_at": _at(0),
            "updated_at": _at(1),
        }
    ],
    "chunks": [
        {
            "id": "v-old#0000",
            "video_id": "v-old",
            "start_ms": 0,
            "end_ms": 30000,
            "text": "migrations keep the rows",
            "enriched_text": "an old video: migrations keep the rows",
            "chunking_version": "fixed-30s-v1",
            "embedding_model_version": "base-1",
            "created_at": _at(2),
        }
    ],
    "vector_index_entries": [
        {
            "index_name": "idx-base-1",
            "chunk_id": "v-old#0000",
            "embedding_model_version": "base-1",
            "content_hash": "ab" * 32,
            "created_at": _at(3),
        }
    ],
    "search_response_snapshots": [
        {
            "req_id": "req-1",
            "user_id": "u1",
            "project_id": "p1",
            "query_text": "keep rows",
            "topk_ids": ["v-old#0000"],
            "used_ids": [],
            "active_model_version": "base-1",
            "active_index_name": "idx-base-1",
            "created_at": _at(4),
            "expires_at": _at(4) + timedelta(days=30),
        }
    ],
    "ml_pipeline_runs": [
        {  # id 1: the RUNNING run (the partial unique index must still hold it alone)
            "status": "RUNNING",
            "dataset_version": "20261130-aaaaaaaaaaaa",
            "baseline_model_version": "base-1",
            "candidate_model_version": "cand-1",
            "candidate_index_name": "idx-cand-1",
            "trigger_source": "schedule",
            "trace_id": "trace-run-1",
            "heartbeat_at": _at(5),
            "created_at": _at(5),
            "updated_at": _at(6),
        },
        {  # id 2: a failed run superseded by run 1 (a self-reference through the table rebuild)
            "status": "FAILED",
            "failed_stage": "EVALUATION",
            "failure_type": "FAIL",
            "failure_reason": "recall_at_5 0.4 < 0.5",
            "evaluation_id": 1,
            "cutover_time": _at(7),
            "superseded_by_run_id": 1,
            "trigger_source": "manual",
            "trace_id": "trace-run-2",
            "created_at": _at(7),
            "updated_at": _at(8),
        },
        {  # id 3: a second FAILED run: only RUNNING and PENDING are unique
            "status": "FAILED",
            "trigger_source": "manual",
            "trace_id": "trace-run-3",
            "created_at": _at(8),
            "updated_at": _at(8),
        },
    ],
    "stage_executions": [
        {
            "run_id": 2,
            "stage": "40_evaluate_candidate",
            "notebook": "40_evaluate_candidate.ipynb",
            "parameters": {"run_id": 2, "bootstrap_samples": 1000},
            "output_ipynb": "runs/20261130/x.ipynb",
            "output_html": "runs/20261130/x.html",
            "status": "FAILED",
            "error": {"cell_index": 3, "ename": "ValueError", "evalue": "boom"},
            "started_at": _at(9),
            "finished_at": _at(10),
            "trace_id": "trace-run-2",
        }
    ],
    "training_datasets": [
        {
            "dataset_version": "20261130-aaaaaaaaaaaa",
            "storage_path": "datasets/20261130-aaaaaaaaaaaa",
            "generation_rule_version": "retrieval-group-v1",
            "source_window_start": _at(0) - timedelta(days=30),
            "source_window_end": _at(0),
            "counts": {"trainable_groups": 12, "negatives": 30},
            "eligible": True,
            "ineligible_reasons": ["none really"],
            "created_at": _at(11),
        }
    ],
    "evaluation_datasets": [
        {
            "evaluation_dataset_ref": "eval-0123456789abcdef",
            "storage_path": "evaluation/eval-0123456789abcdef.jsonl",
            "sample_count": 40,
            "source": "corpus mini: reserved queries",
            "created_at": _at(12),
        }
    ],
    "model_versions": [
        {
            "model_version": "cand-1",
            "artifact_path": "models/cand-1",
            "base_model_version": "base-1",
            "run_id": 1,
            "sha256": "cd" * 32,
            "created_at": _at(13),
        }
    ],
    "model_evaluations": [
        {
            "run_id": 2,
            "candidate_model_version": "cand-2",
            "baseline_model_version": "base-1",
            "evaluation_dataset_ref": "eval-0123456789abcdef",
            "sample_count": 40,
            "quality_metrics": {"candidate": {"recall_at_5": 0.4}},
            "pass_criteria": {"recall_at_5": ">= baseline"},
            "overall_decision": "FAIL",
            "fail_reason": "recall_at_5 0.4 < 0.5",
            "detail_artifact_path": "evaluation/details/1.json",
            "created_at": _at(14),
        }
    ],
    "model_releases": [
        {
            "serving_key": "default",
            "release_status": "CANDIDATE_REINDEXING",
            "active_model_version": "base-1",
            "active_index_name": "idx-base-1",
            "previous_model_version": "base-0",
            "previous_index_name": "idx-base-0",
            "candidate_model_version": "cand-1",
            "candidate_index_name": "idx-cand-1",
            "candidate_run_id": 1,
            "rollback_snapshot_active_model_version": "base-0",
            "rollback_snapshot_active_index_name": "idx-base-0",
            "rollback_snapshot_captured_at": _at(15),
            "candidate_ready_at": _at(16),
            "switched_at": _at(17),
            "row_version": 7,
        }
    ],
    "release_events": [
        {
            "release_id": 1,
            "kind": "CANDIDATE_OPENED",
            "before": {"release_status": "STABLE"},
            "after": {"release_status": "CANDIDATE_REINDEXING"},
            "actor": "worker",
            "trace_id": "trace-run-1",
            "at": _at(18),
        }
    ],
    "ops_messages": [
        {
            "message_type": "TRAINING_REQUEST",
            "payload": {"payload_version": "v1", "reason": "weekly"},
            "trace_id": "trace-msg-1",
            "attempt": 2,
            "issued_at": _at(19),
            "visible_at": _at(20),
            "claimed_by": "worker-a",
            "acked_at": _at(21),
            "outcome": "REFUSED",
            "outcome_reason": "no eligible dataset",
        }
    ],
    "audit_log": [
        {
            "operator": "ana",
            "role": "admin",
            "action": "retrigger-training",
            "target": "20261130-aaaaaaaaaaaa",
            "reason": "new feedback",
            "result": "queued TRAINING_REQUEST message 1",
            "trace_id": "trace-msg-1",
            "at": _at(22),
        }
    ],
    "corpus_imports": [
        {
            "name": "mini",
            "source": "tests",
            "project_count": 1,
            "video_count": 1,
            "chunk_count": 1,
            "traffic_query_count": 3,
            "reserved_query_count": 1,
            "traffic_queries_key": "corpora/mini/traffic.jsonl",
            "reserved_queries_key": "corpora/mini/reserved.jsonl",
            "created_at": _at(23),
        }
    ],
}
# Tables created after 0001: their rows are written at the revision that creates them.
ROWS_LATER: dict[str, dict[str, list[dict[str, Any]]]] = {
    "0003": {
        "schedule_ticks": [
            {  # claimed, never finished: 0005 backfills heartbeat_at = started_at
                "schedule": "dataset",
                "due_at": _at(30),
                "attempt": 1,
                "status": "STARTED",
                "started_at": _at(31),
                "trace_id": "trace-tick-1",
            },
            {
                "schedule": "training",
                "due_at": _at(40),
                "attempt": 2,
                "status": "DONE",
                "started_at": _at(41),
                "finished_at": _at(42),
                "outcome": "queued TRAINING_REQUEST message 1",
                "trace_id": "trace-tick-2",
            },
        ]
    },
    "0009": {
        "feedback_outbox": [
            {"event_id": "5b1c0f3e-0000-5000-8000-000000000001", "event": {"rating": "LIKE"}, "received_at": _at(50)}
        ],
        "serving_endpoints": [
            {
                "endpoint_id": "host-a:8000",
                "address": "http://10.0.0.1:8000",
                "loaded_versions": ["base"],
                "serving_model_version": "base",
                "serving_index_name": "idx-base",
                "ready": True,
                "ready_reason": None,
                "started_at": _at(51),
                "heartbeat_at": _at(52),
                "stopped_at": None,
            }
        ],
    },
    "0010": {
        "stage_leases": [
            {
                "name": "release",
                "token": 3,
                "holder": "worker-a",
                "purpose": "release run 1",
                "acquired_at": _at(60),
                "heartbeat_at": _at(61),
                "released_at": None,
            }
        ]
    },
    "0011": {
        "reindex_shards": [
            {
                "index_name": "idx-cand",
                "model_version": "cand",
                "shard_no": 0,
                "chunk_ids": ["v-old#0000"],
                "token": 1,
                "claimed_by": None,
                "heartbeat_at": None,
                "attempts": 1,
                "done_at": _at(70),
                "done_by": "worker-a",
                "embedded": 1,
                "reused": 0,
                "seconds": 0.5,
                "created_at": _at(69),
            }
        ]
    },
}
# Columns later revisions add to tables that already have rows, and the value each old row gets.
ADDED_LATER: dict[str, dict[str, Callable[[dict[str, Any]], Any]]] = {
    "ml_pipeline_runs": {  # 0002, 0004: nothing to backfill
        "request_message_id": lambda row: None,
        "promoted_at": lambda row: None,
        "promoted_by": lambda row: None,
        "release_hold": lambda row: None,  # 0008: older READY runs were never held
    },
    "schedule_ticks": {"heartbeat_at": lambda row: row["started_at"]},  # 0005: last seen when it started
    "stage_executions": {"outputs": lambda row: None, "heartbeat_at": lambda row: None},  # 0006, 0010
    "model_versions": {  # 0007: every older model encoded in fp32; 0013: none was delivered
        "encode_precision": lambda row: "fp32",
        "source": lambda row: None,
        "delivered_by": lambda row: None,
        "delivery_reason": lambda row: None,
    },
    "vector_index_entries": {"encode_precision": lambda row: "fp32"},
    "evaluation_datasets": {"role": lambda row: "evaluation"},  # 0008: every older set judged candidates
    "search_response_snapshots": {"trace_id": lambda row: None},  # 0009: older searches recorded no trace
    # 0010: older executions had no heartbeat; no older dataset was found unusable
    "training_datasets": {"unusable_reason": lambda row: None, "unusable_at": lambda row: None},
}


def _insert_raw(conn: Connection, table: str, row: dict[str, Any]) -> None:
    """INSERT with plain SQL (the ORM models describe head, not this revision); JSON and
    datetime parameters get their SQL types so each backend stores them as it would."""
    columns = ", ".join(f'"{c}"' for c in row)
    statement = text(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(':' + c for c in row)})")
    typed = [
        bindparam(c, type_=JSON if isinstance(v, dict | list) else DateTime(timezone=True))
        for c, v in row.items()
        if isinstance(v, dict | list | datetime)
    ]
    conn.execute(statement.bindparams(*typed), row)


def _tables(db: Database) -> set[str]:
    ours = {t for t in inspect(db.engine).get_table_names() if t != "alembic_version"}
    return {t for t in ours if not t.startswith("chunk_fts")}  # SQLite's FTS5 tables of chunks


def test_upgrade_from_0001_keeps_every_row_and_backfills_new_columns(empty_ws: Workspace) -> None:
    db = empty_ws.db
    assert upgrade(db, "0001") == "0001"
    assert _tables(db) == set(ROWS_0001)  # a row for every table 0001 has
    with db.engine.begin() as conn:
        for table, rows in ROWS_0001.items():
            for row in rows:
                _insert_raw(conn, table, row)
    revisions = ["0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010", "0011", "0012", "0013"]
    for revision in revisions:
        assert upgrade(db, revision) == revision
        with db.engine.begin() as conn:
            for table, rows in ROWS_LATER.get(revision, {}).items():
                for row in rows:
                    _insert_raw(conn, table, row)
    assert revisions[-1] == head_revision(), "a new migration: add its rows and backfills to this test"
    written = {**ROWS_0001, **ROWS_LATER["0003"], **ROWS_LATER["0009"], **ROWS_LATER["0010"], **ROWS_LATER["0011"]}
    assert set(written) | WRITTEN_BY_THE_DATABASE == TABLES == _tables(db)
    with db.engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM database_identity")) == 1
        assert conn.scalar(text("SELECT count(*) FROM chunk_changes")) == 0  # older chunks: the index reads them

    models = {mapper.local_table.name: mapper.class_ for mapper in Base.registry.mappers}
    with db.read() as session:
        for table, rows in written.items():
            model = models[table]
            (pk,) = model.__table__.primary_key.columns
            written_columns = {c for row in rows for c in row}
            added = ADDED_LATER.get(table, {})
            # Each column at head is the key, written above, or one a later revision added.
            assert {c.key for c in model.__table__.columns} == written_columns | {pk.key} | set(added), table
            stored = session.scalars(select(model).order_by(pk)).all()
            assert len(stored) == len(rows), table
            for position, (row, obj) in enumerate(zip(rows, stored, strict=True), start=1):
                if pk.key not in row:
                    assert getattr(obj, pk.key) == position, table
                for column in written_columns:
                    assert getattr(obj, column) == row.get(column), f"{table}.{column} of row {position}"
                for column, value_for in added.items():
                    assert getattr(obj, column) == value_for(row), f"{table}.{column} of row {position}"
        # The rebuilt ml_pipeline_runs kept its partial unique indexes (SQLite rebuilds it in 0002/0004).
        assert session.scalars(select(MLPipelineRun.id).where(MLPipelineRun.status == RunStatus.RUNNING)).all() == [1]
        assert keyword_search(session, "migrations", "p1") == ["v-old#0000"]  # the keyword index followed
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(_run(RunStatus.RUNNING))
    with pytest.raises(IntegrityError), db.engine.begin() as conn:  # foreign keys are enforced again
        _insert_raw(conn, "chunks", {**ROWS_0001["chunks"][0], "id": "orphan#0000", "video_id": "no-such-video"})
    with db.transaction() as session:  # new rows get fresh ids after the old ones
        session.add(new_run := _run(RunStatus.FAILED))
    assert new_run.id > 3  # (PostgreSQL's sequence also spent one on the refused insert)

    downgrade(db, "0001")  # and back: the rows of 0001's tables survive the rebuilds again
    with db.engine.connect() as conn:
        for table, rows in ROWS_0001.items():
            assert conn.scalar(text(f"SELECT count(*) FROM {table}")) == len(rows) + (table == "ml_pipeline_runs")
        assert conn.scalar(text("SELECT superseded_by_run_id FROM ml_pipeline_runs WHERE id = 2")) == 1
