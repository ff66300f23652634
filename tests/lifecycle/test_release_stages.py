"""Release control: transitions and refusals, reindex, dual-write, cutover gate, snapshots, rollback."""

import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import corpus_ready, ready_run
from sqlalchemy import select, update

from opslib.control.messages import new_rollback_request
from opslib.control.release import TRANSITIONS, ReleaseError, apply, current_release
from opslib.control.runs import RunError, get_run
from opslib.corpus.indexing import index_chunks, indexed_chunk_ids, missing_from_index
from opslib.corpus.ingest import ChunkIn, VideoIn, ingest_videos, still_reindexing
from opslib.corpus.search import search
from opslib.db.models import (
    FailureType,
    ModelRelease,
    ReleaseEvent,
    ReleaseStatus,
    RunStage,
    RunStatus,
    ServingState,
    VectorIndexEntry,
    Video,
)
from opslib.errors import IntegrityFailure
from opslib.infra.workspace import Workspace
from opslib.lifecycle.cutover import CutoverRefused, cutover, cutover_or_wait
from opslib.lifecycle.index_snapshot import (
    collection_matches,
    export_index,
    latest_snapshot,
    restore_index,
)
from opslib.lifecycle.reindex import reindex_candidate
from opslib.lifecycle.rollback import (
    RollbackRefused,
    RollbackReport,
    prepare,
    roll_back,
)


def _release(ws: Workspace) -> ModelRelease:
    with ws.db.read() as session:
        return current_release(session)


def _events(ws: Workspace) -> list[str]:
    with ws.db.read() as session:
        return [e.kind for e in session.scalars(select(ReleaseEvent).order_by(ReleaseEvent.id))]


def _video(video_id: str, project: str = "mini-alpha", words: str = "brand new topic zebra crossing") -> VideoIn:
    return VideoIn(
        video_id=video_id,
        user_id="owner",
        project_id=project,
        title=video_id,
        chunks=[ChunkIn(text=f"{words} part {i}", start_ms=i, end_ms=i + 1) for i in range(2)],
    )


@pytest.fixture
def rel(ws: Workspace, tiny_candidate_dir: Path) -> tuple[Workspace, int]:
    corpus_ready(ws)
    return ws, ready_run(ws, tiny_candidate_dir)


def test_every_transition_from_the_wrong_state_is_refused_and_changes_nothing(ws: Workspace) -> None:
    before = _release(ws).row_version
    for kind, move in TRANSITIONS.items():
        if move.source is ReleaseStatus.STABLE:
            continue
        with pytest.raises(ReleaseError, match=f"{kind} needs"), ws.db.transaction() as session:
            apply(session, kind, actor="t", trace_id="t")
    with pytest.raises(ReleaseError, match="unknown"), ws.db.transaction() as session:
        apply(session, "TELEPORT", actor="t", trace_id="t")
    with pytest.raises(ReleaseError, match="row version"), ws.db.transaction() as session:
        apply(session, "PREPARE_ROLLBACK", actor="t", trace_id="t", expected_row_version=before + 7)
    assert _release(ws).row_version == before and _events(ws) == ["BOOTSTRAP"]


def test_a_guard_refusal_rolls_everything_back(ws: Workspace) -> None:
    def refuse(_release: object) -> None:
        raise ReleaseError("guard says no")

    with pytest.raises(ReleaseError, match="guard says no"), ws.db.transaction() as session:
        apply(
            session, "OPEN_CANDIDATE", actor="t", trace_id="t", guard=refuse, changes={"candidate_model_version": "x"}
        )
    release = _release(ws)
    assert release.release_status is ReleaseStatus.STABLE and release.candidate_model_version is None
    assert _events(ws) == ["BOOTSTRAP"]


def test_reindex_builds_the_candidate_and_dual_write_follows_the_state(rel) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    run = get_run(ws.db, run_id)
    report = reindex_candidate(ws, run_id)
    assert not report.resumed and report.embedded == report.chunks > 0
    release = _release(ws)
    assert release.release_status is ReleaseStatus.CANDIDATE_REINDEXING
    assert (release.candidate_model_version, release.candidate_index_name, release.candidate_run_id) == (
        run.candidate_model_version,
        run.candidate_index_name,
        run_id,
    )
    assert release.candidate_ready_at is not None
    assert missing_from_index(ws, run.candidate_index_name) == []
    assert _events(ws)[-2:] == ["OPEN_CANDIDATE", "CANDIDATE_READY"]
    # Dual-write: a video ingested now lands in both indexes.
    ingest_videos(ws, [_video("dual-1")])
    assert {"dual-1#0000", "dual-1#0001"} <= indexed_chunk_ids(ws, run.candidate_index_name)
    assert {"dual-1#0000", "dual-1#0001"} <= indexed_chunk_ids(ws, release.active_index_name)
    # Re-running it resumes: nothing is recomputed.
    again = reindex_candidate(ws, run_id)
    assert again.resumed and again.embedded == 0 and again.unchanged == again.chunks
    # After the cutover dual-write has stopped: only the (new) active index receives chunks.
    cutover(ws, run_id)
    ingest_videos(ws, [_video("after-1")])
    assert "after-1#0000" in indexed_chunk_ids(ws, run.candidate_index_name)  # it is the active now
    assert "after-1#0000" not in indexed_chunk_ids(ws, release.active_index_name)  # the old active, now previous


def test_the_dual_write_guard_stops_the_moment_the_state_changes(rel) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    reindex_candidate(ws, run_id)
    index = get_run(ws.db, run_id).candidate_index_name
    ingest_videos(ws, [_video("late-1")])
    with ws.db.transaction() as session:  # remove what dual-write wrote, as if not written yet
        session.execute(
            VectorIndexEntry.__table__.delete().where(
                VectorIndexEntry.index_name == index, VectorIndexEntry.chunk_id.like("late-1%")
            )
        )
    from opslib.lifecycle.reindex import abort_candidate

    abort_candidate(ws, run_id, "operator stopped it", actor="t")
    from opslib.infra.embedding import Purpose

    report = index_chunks(
        ws,
        ["late-1#0000"],
        index_name=index,
        model_version=get_run(ws.db, run_id).candidate_model_version,
        purpose=Purpose.REINDEX,
        guard=still_reindexing(index),
    )
    assert report.refused == 1 and "late-1#0000" not in indexed_chunk_ids(ws, index)


def test_reindex_refusals(rel, tiny_candidate_dir: Path) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    with ws.db.transaction() as session:
        session.execute(update(ModelRelease).values(active_model_version="someone-else"))
    with pytest.raises(ReleaseError, match="judged against tiny-base"):
        reindex_candidate(ws, run_id)
    with ws.db.transaction() as session:
        session.execute(update(ModelRelease).values(active_model_version="tiny-base"))
    with pytest.raises(RunError, match="no such run"):
        reindex_candidate(ws, 999)
    assert _release(ws).release_status is ReleaseStatus.STABLE


def test_a_reindex_failure_aborts_the_candidate_and_fails_the_run(rel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    run = get_run(ws.db, run_id)
    original = ws.embeddings.embed

    def flaky(texts, model_version, purpose, **kw):  # type: ignore[no-untyped-def]
        if model_version == run.candidate_model_version and purpose == "reindex":
            raise RuntimeError("embedding endpoint lost")
        return original(texts, model_version, purpose, **kw)

    monkeypatch.setattr(ws.embeddings, "embed", flaky)
    with pytest.raises(RuntimeError, match="endpoint lost"):
        reindex_candidate(ws, run_id)
    release = _release(ws)
    assert release.release_status is ReleaseStatus.STABLE and release.candidate_model_version is None
    assert release.active_model_version == "tiny-base"  # serving untouched
    assert _events(ws)[-2:] == ["OPEN_CANDIDATE", "ABORT_CANDIDATE"]
    run = get_run(ws.db, run_id)
    assert (run.status, run.failed_stage, run.failure_type) == (RunStatus.FAILED, RunStage.REINDEX, FailureType.ERROR)
    assert not ws.vectors.exists(run.candidate_index_name) and not indexed_chunk_ids(ws, run.candidate_index_name)


def test_cutover_gate_snapshot_and_switch(rel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    run = get_run(ws.db, run_id)
    report, waiting = cutover_or_wait(ws, run_id)
    assert report is None and "CANDIDATE_REINDEXING" in waiting
    reindex_candidate(ws, run_id)
    # A READY chunk the candidate index lacks (it slipped past the build and dual-write).
    with ws.db.transaction() as session:
        session.execute(
            VectorIndexEntry.__table__.delete().where(
                VectorIndexEntry.index_name == run.candidate_index_name, VectorIndexEntry.chunk_id == "mini:q000-a0"
            )
        )
    import opslib.lifecycle.cutover as cutover_module

    monkeypatch.setattr(cutover_module, "index_chunks", lambda *a, **k: None)  # catch-up cannot help
    with pytest.raises(CutoverRefused, match="1 chunks READY before cutover_time are not in the candidate index"):
        cutover(ws, run_id)
    assert _release(ws).release_status is ReleaseStatus.CANDIDATE_REINDEXING  # nothing switched
    monkeypatch.undo()
    old = _release(ws)
    report = cutover(ws, run_id)
    assert (report.missing_before_catch_up, report.missing) == (1, 0)
    new = _release(ws)
    assert new.release_status is ReleaseStatus.STABLE
    assert (new.active_model_version, new.active_index_name) == (run.candidate_model_version, run.candidate_index_name)
    assert (new.previous_model_version, new.previous_index_name) == (old.active_model_version, old.active_index_name)
    assert (new.rollback_snapshot_active_model_version, new.rollback_snapshot_active_index_name) == (
        old.active_model_version,
        old.active_index_name,
    )
    assert new.candidate_model_version is None and new.candidate_run_id is None and new.switched_at is not None
    assert get_run(ws.db, run_id).cutover_time == report.cutover_time
    manifest = latest_snapshot(ws, old.active_index_name)
    assert manifest is not None and manifest.count == len(indexed_chunk_ids(ws, old.active_index_name))
    assert collection_matches(ws, manifest)
    with pytest.raises(ReleaseError, match="already cut over"):
        cutover(ws, run_id)  # a re-delivered hand-off changes nothing
    with pytest.raises(ReleaseError, match="already cut over"):
        reindex_candidate(ws, run_id)


def test_search_sees_old_or_new_never_a_mix_never_the_candidate(rel) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    run = get_run(ws.db, run_id)
    old = (_release(ws).active_model_version, _release(ws).active_index_name)
    new = (run.candidate_model_version, run.candidate_index_name)
    # A searcher in the background, ordered against the switch by events rather than by timing:
    # its first search ends before the reindex starts, it keeps searching while the candidate is
    # built and the release switches, and it searches `after_switch` more times once cutover returned.
    after_switch = 3
    first_search_done, cutover_returned = threading.Event(), threading.Event()
    # (model, index, cutover had returned, release switched before the search, switched after it)
    seen: list[tuple[str, str, bool, bool, bool]] = []
    errors: list[str] = []

    def switched() -> bool:
        with ws.db.read() as session:
            return current_release(session).switched_at is not None

    def searching() -> None:
        searched_after_switch = 0
        try:
            while searched_after_switch < after_switch:
                returned, before = cutover_returned.is_set(), switched()
                r = search(ws, "how do I go about sorting lists", project_id="mini-alpha", user_id="watcher")
                seen.append((r.active_model_version, r.active_index_name, returned, before, switched()))
                first_search_done.set()
                searched_after_switch += returned
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            first_search_done.set()  # never leave the test waiting on a searcher that stopped

    thread = threading.Thread(target=searching, daemon=True)
    thread.start()
    try:
        assert first_search_done.wait(120), "the searcher never finished a search"
        reindex_candidate(ws, run_id)
        cutover(ws, run_id)
        cutover_returned.set()
        for _ in range(5):
            search(ws, "warm", project_id="mini-alpha", user_id="u")
    finally:
        cutover_returned.set()  # on a failure too: the searcher finishes its last searches and stops
        thread.join(120)
    assert not thread.is_alive() and errors == []
    assert seen[0][:2] == old  # searched before the reindex started
    assert [(m, i) for m, i, returned, _, _ in seen if returned] == [new] * after_switch  # searched after it
    for m, i, _, switched_before, switched_after in seen:
        assert (m, i) in {old, new}  # never a mix
        assert (m, i) == new or not switched_before, "old served after the switch was committed"
        assert (m, i) == old or switched_after, "the candidate served before the switch was committed"
    first_new = next(n for n, (m, i, *_) in enumerate(seen) if (m, i) == new)
    assert all((m, i) == new for m, i, *_ in seen[first_new:])  # once switched, never back
    with ws.db.read() as session:
        from opslib.db.models import SearchResponseSnapshot

        snaps = {(s.active_model_version, s.active_index_name) for s in session.scalars(select(SearchResponseSnapshot))}
    assert snaps <= {old, new}


def test_snapshot_export_and_restore(rel) -> None:  # type: ignore[no-untyped-def]
    ws, _run_id = rel
    index = _release(ws).active_index_name
    manifest = export_index(ws, index, "tiny-base", tag="manual")
    assert export_index(ws, index, "tiny-base", tag="manual") == manifest  # idempotent per tag
    ids = sorted(indexed_chunk_ids(ws, index))
    before = ws.vectors.get_embeddings(index, ids)
    ws.vectors.drop(index)
    assert not collection_matches(ws, manifest)
    assert restore_index(ws, manifest) == len(ids)
    after = ws.vectors.get_embeddings(index, ids)
    assert all(np.allclose(before[i], after[i]) for i in ids) and collection_matches(ws, manifest)
    ws.objects.local_path(manifest.key).write_bytes(b"corrupt")
    with pytest.raises(IntegrityFailure, match=rf"key '{manifest.key}': content fails its recorded sha256"):
        restore_index(ws, manifest)  # a verified read: never restored from (tests/lifecycle/test_verified_reads.py)


def test_rollback_excludes_restores_and_re_includes(rel) -> None:  # type: ignore[no-untyped-def]
    from opslib.control.leases import holding_release

    ws, run_id = rel
    reindex_candidate(ws, run_id)
    cutover(ws, run_id)
    problem = _release(ws)
    ingest_videos(ws, [_video("new-after-cutover", words="xylophone quartet rehearsal")])  # only in the new active
    with pytest.raises(RollbackRefused, match="stale request"):
        roll_back(ws, new_rollback_request("tiny-base"))
    request = new_rollback_request(problem.active_model_version, trace_id="rb-1", reason="quality regression")

    report = RollbackReport(trace_id="rb-1", outcome="rolled back")
    with holding_release(ws.db, ws.settings, "test: prepare only") as lease:
        assert prepare(ws, request, report, lease)
    assert report.excluded_videos == 1 and _release(ws).release_status is ReleaseStatus.ROLLBACK_PREPARING
    with ws.db.read() as session:
        assert session.get(Video, "new-after-cutover").search_serving_state is ServingState.ROLLBACK_EXCLUDED
    hits = search(ws, "xylophone quartet rehearsal", project_id="mini-alpha", user_id="u").refs
    assert not any(h.startswith("new-after-cutover") for h in hits)  # hidden at once
    assert hits  # the others are still served
    ws.vectors.drop(problem.previous_index_name)  # the snapshot collection is gone: rebuild from the file

    report = roll_back(ws, request)  # resumes the prepared rollback
    assert report.outcome == "rolled back" and report.restored_from_file and report.reembedded_chunks == 2
    assert report.servable_again == 1
    release = _release(ws)
    assert release.release_status is ReleaseStatus.STABLE
    assert (release.active_model_version, release.active_index_name) == (
        problem.previous_model_version,
        problem.previous_index_name,
    )
    assert release.previous_model_version == problem.active_model_version  # not restored from the snapshot
    assert release.rollback_snapshot_active_model_version is None and release.candidate_model_version is None
    with ws.db.read() as session:
        assert session.get(Video, "new-after-cutover").search_serving_state is ServingState.SERVABLE
    hits = search(ws, "xylophone quartet rehearsal", project_id="mini-alpha", user_id="u")
    assert hits.active_model_version == "tiny-base" and any(h.startswith("new-after-cutover") for h in hits.refs)
    assert missing_from_index(ws, release.active_index_name) == []
    # Re-delivered: a no-op.
    again = roll_back(ws, request)
    assert again.outcome == "already rolled back" and _release(ws).row_version == release.row_version
    # A second rollback has no snapshot left.
    with pytest.raises(RollbackRefused, match="no rollback snapshot"):
        roll_back(ws, new_rollback_request(release.active_model_version))
    assert _events(ws)[-3:] == ["CUTOVER", "PREPARE_ROLLBACK", "COMPLETE_ROLLBACK"]


def test_a_video_ingested_between_export_and_switch_survives_a_rollback_from_the_file(rel, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Dual-written into the outgoing active index after its snapshot file was made: the intact
    collection is kept as it is; rebuilt from the file, the video is hidden, re-embedded, back."""
    import opslib.lifecycle.cutover as cutover_module

    ws, run_id = rel
    reindex_candidate(ws, run_id)
    real_export = cutover_module.export_index

    def export_then_ingest(*args, **kwargs):  # type: ignore[no-untyped-def]
        manifest = real_export(*args, **kwargs)
        ingest_videos(ws, [_video("late-video", words="harpsichord tuning lesson")])  # still dual-writing
        return manifest

    monkeypatch.setattr(cutover_module, "export_index", export_then_ingest)
    cutover(ws, run_id)
    problem = _release(ws)
    snapshot_index = problem.previous_index_name
    assert any(c.startswith("late-video") for c in indexed_chunk_ids(ws, snapshot_index))
    manifest = latest_snapshot(ws, snapshot_index)
    assert collection_matches(ws, manifest)  # more vectors than the file: still intact

    ws.vectors.drop(snapshot_index)  # gone: the rollback rebuilds it from the file, without late-video
    report = roll_back(ws, new_rollback_request(problem.active_model_version, reason="regression"))
    assert report.restored_from_file and report.excluded_videos == 1 and report.servable_again == 1
    with ws.db.read() as session:
        assert session.get(Video, "late-video").search_serving_state is ServingState.SERVABLE
    assert missing_from_index(ws, _release(ws).active_index_name) == []
    hits = search(ws, "harpsichord tuning lesson", project_id="mini-alpha", user_id="u").refs
    assert any(h.startswith("late-video") for h in hits)


def test_rollback_is_refused_unless_stable(rel) -> None:  # type: ignore[no-untyped-def]
    ws, run_id = rel
    reindex_candidate(ws, run_id)
    with pytest.raises(ReleaseError, match="PREPARE_ROLLBACK needs STABLE"):
        roll_back(ws, new_rollback_request("tiny-base"))
    assert _release(ws).release_status is ReleaseStatus.CANDIDATE_REINDEXING
