"""Video state control: both transition tables exact, bulk moves set-based and all-or-nothing."""

import pytest
from sqlalchemy import event, select

from opslib.control.serving import (
    SERVING_TRANSITIONS,
    STATUS_TRANSITIONS,
    VideoStateConflict,
    VideoStateError,
    check_serving_transition,
    check_status_transition,
    exclude_for_rollback,
    make_servable_again,
    mark_failed,
    mark_ready,
    move_serving_state,
    move_status,
    new_video,
)
from opslib.db.models import ServingState, Video, VideoStatus
from opslib.errors import Conflict, Refused
from opslib.infra.workspace import Workspace

SERVING_ALLOWED = {
    (None, ServingState.SERVABLE),
    (ServingState.SERVABLE, ServingState.ROLLBACK_EXCLUDED),
    (ServingState.ROLLBACK_EXCLUDED, ServingState.SERVABLE),
}
STATUS_ALLOWED = {
    (None, VideoStatus.PROCESSING),
    (VideoStatus.PROCESSING, VideoStatus.READY),
    (VideoStatus.PROCESSING, VideoStatus.FAILED),
}
SERVING_PAIRS = [(a, b) for a in [None, *ServingState] for b in ServingState]
STATUS_PAIRS = [(a, b) for a in [None, *VideoStatus] for b in VideoStatus]


def _add(ws: Workspace, rows: dict[str, tuple[VideoStatus, ServingState]]) -> None:
    with ws.db.transaction() as session:
        for vid, (status, serving) in rows.items():
            session.add(
                Video(id=vid, user_id="u", project_id="p", title="t", status=status, search_serving_state=serving)
            )


def _states(ws: Workspace) -> dict[str, tuple[VideoStatus, ServingState]]:
    with ws.db.read() as session:
        return {
            vid: (status, serving)
            for vid, status, serving in session.execute(
                select(Video.id, Video.status, Video.search_serving_state).order_by(Video.id)
            )
        }


def _name(state: object) -> str:
    return "—" if state is None else state.value  # type: ignore[attr-defined]


# --- the tables -----------------------------------------------------------------------------


def test_a_move_outside_the_table_is_a_refusal_not_a_conflict() -> None:
    with pytest.raises(Refused) as refused:
        check_status_transition(VideoStatus.READY, VideoStatus.PROCESSING)
    assert not isinstance(refused.value, Conflict)


def test_tables_are_exactly_the_documented_moves() -> None:
    assert set(SERVING_TRANSITIONS) == SERVING_ALLOWED
    assert set(STATUS_TRANSITIONS) == STATUS_ALLOWED
    assert (
        SERVING_TRANSITIONS[(ServingState.SERVABLE, ServingState.ROLLBACK_EXCLUDED)]
        == "rollback: a chunk is missing from the snapshot index"
    )
    assert (
        SERVING_TRANSITIONS[(ServingState.ROLLBACK_EXCLUDED, ServingState.SERVABLE)]
        == "re-embedded with the restored model"
    )
    assert all(SERVING_TRANSITIONS.values()) and all(STATUS_TRANSITIONS.values())


@pytest.mark.parametrize("source,target", SERVING_PAIRS, ids=lambda s: _name(s))
def test_serving_check_allows_only_the_table(source: ServingState | None, target: ServingState) -> None:
    if (source, target) in SERVING_ALLOWED:
        assert check_serving_transition(source, target) == SERVING_TRANSITIONS[(source, target)]
    else:
        with pytest.raises(VideoStateError, match=f"serving-state transition {_name(source)} → {target.value} "):
            check_serving_transition(source, target)


@pytest.mark.parametrize("source,target", STATUS_PAIRS, ids=lambda s: _name(s))
def test_status_check_allows_only_the_table(source: VideoStatus | None, target: VideoStatus) -> None:
    if (source, target) in STATUS_ALLOWED:
        assert check_status_transition(source, target) == STATUS_TRANSITIONS[(source, target)]
    else:
        with pytest.raises(VideoStateError, match=f"status transition {_name(source)} → {target.value} "):
            check_status_transition(source, target)


def test_a_new_video_starts_processing_and_servable(ws: Workspace) -> None:
    with ws.db.transaction() as session:
        session.add(new_video(id="v1", user_id="u", project_id="p", title="t", category="c"))
    assert _states(ws) == {"v1": (VideoStatus.PROCESSING, ServingState.SERVABLE)}


# --- bulk moves on the database (SQLite and PostgreSQL) -----------------------------------------


def test_every_allowed_serving_move_works_in_bulk(ws: Workspace) -> None:
    P = VideoStatus.READY
    _add(ws, {"a": (P, ServingState.SERVABLE), "b": (P, ServingState.SERVABLE), "c": (P, ServingState.SERVABLE)})
    with ws.db.transaction() as session:
        assert move_serving_state(session, ["a", "b"], ServingState.SERVABLE, ServingState.ROLLBACK_EXCLUDED) == 2
    assert {v: s for v, (_, s) in _states(ws).items()} == {
        "a": ServingState.ROLLBACK_EXCLUDED,
        "b": ServingState.ROLLBACK_EXCLUDED,
        "c": ServingState.SERVABLE,
    }
    with ws.db.transaction() as session:
        assert move_serving_state(session, ["a", "b", "a"], ServingState.ROLLBACK_EXCLUDED, ServingState.SERVABLE) == 2
    assert {s for _, s in _states(ws).values()} == {ServingState.SERVABLE}


@pytest.mark.parametrize("target", [VideoStatus.READY, VideoStatus.FAILED])
def test_every_allowed_status_move_works_in_bulk(ws: Workspace, target: VideoStatus) -> None:
    S = ServingState.SERVABLE
    _add(ws, {"a": (VideoStatus.PROCESSING, S), "b": (VideoStatus.PROCESSING, S), "c": (VideoStatus.PROCESSING, S)})
    stage = "INDEXING" if target is VideoStatus.FAILED else None
    with ws.db.transaction() as session:
        assert move_status(session, ["a", "b"], VideoStatus.PROCESSING, target, failed_stage=stage) == 2
    states = _states(ws)
    assert states["a"][0] is target and states["b"][0] is target and states["c"][0] is VideoStatus.PROCESSING
    with ws.db.read() as session:
        assert session.get(Video, "a").failed_stage == stage  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "source,target", [p for p in SERVING_PAIRS if p[0] is not None and p not in SERVING_ALLOWED], ids=_name
)
def test_a_serving_move_outside_the_table_is_refused_before_any_sql(
    ws: Workspace, source: ServingState, target: ServingState
) -> None:
    _add(ws, {"a": (VideoStatus.READY, source)})
    refused = pytest.raises(VideoStateError, match=f"{source.value} → {target.value} is not allowed")
    with refused, ws.db.transaction() as session:
        move_serving_state(session, ["a"], source, target, only_in_source=True)
    assert _states(ws) == {"a": (VideoStatus.READY, source)}


@pytest.mark.parametrize(
    "source,target", [p for p in STATUS_PAIRS if p[0] is not None and p not in STATUS_ALLOWED], ids=_name
)
def test_a_status_move_outside_the_table_is_refused_before_any_sql(
    ws: Workspace, source: VideoStatus, target: VideoStatus
) -> None:
    _add(ws, {"a": (source, ServingState.SERVABLE)})
    refused = pytest.raises(VideoStateError, match=f"{source.value} → {target.value} is not allowed")
    with refused, ws.db.transaction() as session:
        move_status(session, ["a"], source, target, only_in_source=True)
    assert _states(ws) == {"a": (source, ServingState.SERVABLE)}


def test_lenient_moves_touch_only_the_rows_in_the_source_state(ws: Workspace) -> None:
    _add(
        ws,
        {
            "p1": (VideoStatus.PROCESSING, ServingState.SERVABLE),
            "r1": (VideoStatus.READY, ServingState.SERVABLE),
            "r2": (VideoStatus.READY, ServingState.ROLLBACK_EXCLUDED),
            "f1": (VideoStatus.FAILED, ServingState.SERVABLE),
        },
    )
    everyone = ["p1", "r1", "r2", "f1", "gone"]
    with ws.db.transaction() as session:
        assert mark_failed(session, everyone, stage="INDEXING") == 1
        assert exclude_for_rollback(session, ["r1", "r2", "gone"]) == 1
    assert _states(ws) == {
        "f1": (VideoStatus.FAILED, ServingState.SERVABLE),
        "p1": (VideoStatus.FAILED, ServingState.SERVABLE),
        "r1": (VideoStatus.READY, ServingState.ROLLBACK_EXCLUDED),
        "r2": (VideoStatus.READY, ServingState.ROLLBACK_EXCLUDED),
    }
    with ws.db.read() as session:
        assert session.get(Video, "f1").failed_stage is None  # type: ignore[union-attr]  # untouched
    with ws.db.transaction() as session:
        assert exclude_for_rollback(session, ["r1", "r2"]) == 0  # safe to repeat
        assert make_servable_again(session, ["r1", "p1"]) == 1
        assert make_servable_again(session, []) == 0
    states = _states(ws)
    assert states["r1"][1] is ServingState.SERVABLE and states["r2"][1] is ServingState.ROLLBACK_EXCLUDED


def test_a_strict_move_refuses_naming_the_videos_and_changes_nothing(ws: Workspace) -> None:
    _add(
        ws,
        {
            "p1": (VideoStatus.PROCESSING, ServingState.SERVABLE),
            "p2": (VideoStatus.PROCESSING, ServingState.SERVABLE),
            "f1": (VideoStatus.FAILED, ServingState.SERVABLE),
        },
    )
    before = _states(ws)
    with ws.db.transaction() as session:
        loaded = session.get(Video, "p1")
        with pytest.raises(VideoStateConflict) as refused:
            mark_ready(session, ["p1", "f1", "p2", "gone"])
        # Still usable, and still as it was, inside the caller's transaction.
        assert session.scalar(select(Video.status).where(Video.id == "p1")) is VideoStatus.PROCESSING
        assert loaded.status is VideoStatus.PROCESSING  # type: ignore[union-attr]
    assert isinstance(refused.value, Refused) and isinstance(refused.value, Conflict)
    message = str(refused.value)
    assert "status transition PROCESSING → READY refused for 2 of 4" in message
    assert "'f1' is FAILED" in message and "'gone' does not exist" in message
    assert "'p1'" not in message and "'p2'" not in message
    assert _states(ws) == before


def test_a_move_commits_with_the_callers_transaction(ws: Workspace) -> None:
    _add(ws, {"p1": (VideoStatus.PROCESSING, ServingState.SERVABLE)})
    with pytest.raises(RuntimeError), ws.db.transaction() as session:
        assert mark_ready(session, ["p1"]) == 1
        raise RuntimeError("the caller's other write failed")
    assert _states(ws)["p1"][0] is VideoStatus.PROCESSING


def test_one_update_statement_for_many_videos(ws: Workspace) -> None:
    ids = [f"v{i:03d}" for i in range(50)]
    _add(ws, {vid: (VideoStatus.PROCESSING, ServingState.SERVABLE) for vid in ids})
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0].upper())

    event.listen(ws.db.engine, "before_cursor_execute", record)
    try:
        with ws.db.transaction() as session:
            assert exclude_for_rollback(session, ids) == 50
            assert mark_ready(session, ids) == 50
    finally:
        event.remove(ws.db.engine, "before_cursor_execute", record)
    assert statements.count("UPDATE") == 2 and "SELECT" not in statements
