import itertools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from event_strategies import accepted_times, any_times, event_lines, intake_accepts
from helpers import feedback_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from opslib.control.runs import latest_eligible_dataset
from opslib.corpus.ingest import ChunkIn, VideoIn, ingest_videos
from opslib.db.models import Chunk, TrainingDataset, Video, VideoStatus
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import (
    CONFIDENCE,
    MAX_MALFORMED_SHARE,
    DatasetError,
    build_dataset,
    random_negative_count,
    read_groups,
    source_window,
)
from opslib.lifecycle.dataset.quality import RULES, frames_from_groups, run_suite
from opslib.lifecycle.feedback.events import (
    RAW_PREFIX,
    event_line,
    feedback_event_id,
    ingest_feedback,
    log_key,
    make_event,
)
from opslib.lifecycle.feedback.health import feedback_health
from opslib.settings import Settings

AS_OF = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def corpus(ws: Workspace, projects: dict[str, int] | None = None) -> None:
    videos = []
    for project, n in (projects or {"p1": 12, "p2": 4}).items():
        videos.append(
            VideoIn(
                video_id=f"{project}-v",
                user_id="owner",
                project_id=project,
                title=project,
                chunks=[
                    ChunkIn(text=f"{project} chunk {i} text", start_ms=i, end_ms=i + 1, chunk_id=f"{project}-c{i}")
                    for i in range(n)
                ],
            )
        )
    ingest_videos(ws, videos)


def event(
    req: str,
    rating: str = "LIKE",
    topk: list[str] | None = None,
    used: list[str] | None = None,
    project: str = "p1",
    created: datetime | None = None,
    user: str = "u1",
    query: str | None = None,
):  # type: ignore[no-untyped-def]
    topk = topk if topk is not None else [f"{project}-c{i}" for i in range(5)]
    return make_event(
        user_id=user,
        project_id=project,
        req_id=req,
        query_text=query or f"query for {req}",
        rating=rating,
        topk_ids=topk,
        used_ids=used if used is not None else topk[:1],
        active_model_version="m",
        active_index_name="idx-m",
        created_at=created or AS_OF - timedelta(days=1),
        trace_id="t",
    )


def write_log(ws: Workspace, events: list, at: datetime) -> str:  # type: ignore[type-arg]
    key = log_key(RAW_PREFIX, at)
    ws.objects.put_bytes(key, b"".join(event_line(e) for e in events))
    return key


def groups(ws: Workspace, version: str) -> list[dict]:  # type: ignore[type-arg]
    return list(read_groups(ws, version))


@pytest.mark.parametrize(("exposed", "expected"), [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (40, 3)])
def test_random_negative_count_clamp_rule(exposed: int, expected: int) -> None:
    assert random_negative_count(exposed) == expected


def test_random_negative_count_refuses_negative() -> None:
    with pytest.raises(DatasetError):
        random_negative_count(-1)


def test_group_shape_sources_and_confidences(ws: Workspace) -> None:
    corpus(ws)
    write_log(ws, [event("r1", topk=["p1-c0", "p1-c1", "p1-c2", "p1-c3"], used=["p1-c0"])], AS_OF - timedelta(hours=5))
    build = build_dataset(ws, as_of=AS_OF, seed=1)
    (group,) = groups(ws, build.dataset_version)
    assert group["query_text"] == "query for r1" and group["project_id"] == "p1"
    assert [(p["chunk_id"], p["source"], p["confidence"], p["text"]) for p in group["positives"]] == [
        ("p1-c0", "liked_response_used_chunk", 0.8, "p1 chunk 0 text")
    ]
    exposed = [n for n in group["negatives"] if n["source"] == "exposed_unused"]
    randoms = [n for n in group["negatives"] if n["source"] == "random_same_project"]
    assert [n["chunk_id"] for n in exposed] == ["p1-c1", "p1-c2", "p1-c3"]
    assert all(n["confidence"] == 0.4 for n in exposed) and all(n["confidence"] == 0.2 for n in randoms)
    assert len(randoms) == 2  # round(0.5 * 3) = 2
    assert all(n["chunk_id"].startswith("p1-") for n in randoms)
    assert not {n["chunk_id"] for n in randoms} & {"p1-c0", "p1-c1", "p1-c2", "p1-c3"}
    assert group["source_event_ids"] == [event("r1").event_id]
    assert group["generation_rule_version"] == "retrieval-group-v2"
    assert CONFIDENCE == {
        "liked_response_used_chunk": 0.8,
        "disliked_response_used_chunk": 0.6,
        "exposed_unused": 0.4,
        "random_same_project": 0.2,
    }


def test_v1_and_v2_agree_without_dislikes_except_for_the_rule_and_random_draw(ws: Workspace) -> None:
    corpus(ws)
    write_log(ws, [event("r1", used=["p1-c0"]), event("r2", used=["p1-c2"])], AS_OF - timedelta(hours=5))
    v1 = groups(ws, build_dataset(ws, as_of=AS_OF, rule="retrieval-group-v1").dataset_version)
    v2 = groups(ws, build_dataset(ws, as_of=AS_OF).dataset_version)

    def shape(group: dict) -> tuple:  # type: ignore[type-arg]
        exposed = [n["chunk_id"] for n in group["negatives"] if n["source"] == "exposed_unused"]
        randoms = len([n for n in group["negatives"] if n["source"] == "random_same_project"])
        return group["query_text"], [p["chunk_id"] for p in group["positives"]], exposed, randoms

    assert [shape(g) for g in v1] == [shape(g) for g in v2]
    assert {g["generation_rule_version"] for g in v1} == {"retrieval-group-v1"}


def test_v2_dislikes_vote_per_question(ws: Workspace) -> None:
    """A chunk disliked more often than liked for a question is no positive of it and becomes an
    explicit negative; a chunk liked at least as often as disliked stays a positive."""
    corpus(ws)
    q = "How do I reset my password?"
    shown = ["p1-c0", "p1-c1", "p1-c2", "p1-c3", "p1-c4"]
    events = [
        # c0: 2 likes, 1 dislike (a noisy dislike) → stays a positive
        event("r1", used=["p1-c0"], topk=shown, query=q, user="u1"),
        event("r2", used=["p1-c0"], topk=shown, query=q.upper() + "  ", user="u2"),  # same question
        event("r3", rating="DISLIKE", used=["p1-c0"], topk=shown, query=q, user="u3"),
        # c1: 1 like (a mistaken one), 2 dislikes → contested
        event("r4", used=["p1-c1"], topk=shown, query=q, user="u4"),
        event("r5", rating="DISLIKE", used=["p1-c1", "p1-c2"], topk=shown, query=q, user="u5"),
        event("r6", rating="DISLIKE", used=["p1-c1"], topk=shown, query=q, user="u6"),
        # another question: its dislikes do not count here
        event("r7", rating="DISLIKE", used=["p1-c0"], topk=shown, query="other question", user="u7"),
        event("r8", rating="DISLIKE", used=["p1-c0"], topk=shown, query="other question", user="u8"),
    ]
    write_log(ws, events, AS_OF - timedelta(hours=5))
    build = build_dataset(ws, as_of=AS_OF)
    by_event = {g["source_event_ids"][0]: g for g in groups(ws, build.dataset_version)}
    assert set(by_event) == {events[0].event_id, events[1].event_id}  # r4 lost its only positive
    for group in by_event.values():
        assert [p["chunk_id"] for p in group["positives"]] == ["p1-c0"]
        disliked = [n for n in group["negatives"] if n["source"] == "disliked_response_used_chunk"]
        # c1 (2 dislikes) before c2 (1 dislike, no like); each listed once, not again as exposed
        assert [n["chunk_id"] for n in disliked] == ["p1-c1", "p1-c2"]
        assert all(n["confidence"] == 0.6 for n in disliked)
        exposed = [n["chunk_id"] for n in group["negatives"] if n["source"] == "exposed_unused"]
        assert exposed == ["p1-c3", "p1-c4"]
        randoms = {n["chunk_id"] for n in group["negatives"] if n["source"] == "random_same_project"}
        assert not randoms & set(shown)
    counts = build.counts
    assert counts["contested_positives"] == 1 and counts["contested_groups"] == 1
    assert counts["negatives_by_source"]["disliked_response_used_chunk"] == 4
    assert build.manifest["data_quality"]["success"] and build.manifest["data_quality"]["suite"] == "retrieval-group-v2"
    # v1 over the same logs: dislikes are ignored, r4's mistaken like makes a group
    v1 = build_dataset(ws, as_of=AS_OF, rule="retrieval-group-v1")
    assert v1.counts["trainable_groups"] == 3 and v1.counts["contested_groups"] == 0


def test_v2_caps_disliked_negatives(ws: Workspace) -> None:
    corpus(ws)
    events = [event("r1", used=["p1-c0"], query="q")] + [
        event(f"d{i}", rating="DISLIKE", topk=[f"p1-c{i}"], used=[f"p1-c{i}"], query="q", user=f"u{i}")
        for i in range(1, 6)
    ]
    write_log(ws, events, AS_OF - timedelta(hours=5))
    (group,) = groups(ws, build_dataset(ws, as_of=AS_OF).dataset_version)
    disliked = [n for n in group["negatives"] if n["source"] == "disliked_response_used_chunk"]
    assert len(disliked) == 3  # MAX_DISLIKED


def test_unknown_rule_is_refused(ws: Workspace) -> None:
    with pytest.raises(DatasetError, match="generation_rule_version 'retrieval-group-v9'"):
        build_dataset(ws, as_of=AS_OF, rule="retrieval-group-v9")


def test_no_random_negative_when_the_project_has_none_left(ws: Workspace) -> None:
    corpus(ws, {"p1": 12, "p2": 4})
    write_log(
        ws,
        [event("r1", project="p2", topk=["p2-c0", "p2-c1", "p2-c2", "p2-c3"], used=["p2-c0"])],
        AS_OF - timedelta(hours=1),
    )
    (group,) = groups(ws, build_dataset(ws, as_of=AS_OF).dataset_version)
    assert [n["source"] for n in group["negatives"]] == ["exposed_unused"] * 3


def test_dedupe_keeps_latest_created_at_and_dislikes_make_no_groups(ws: Workspace) -> None:
    corpus(ws)
    older = event("r1", used=["p1-c0"], created=AS_OF - timedelta(days=2))
    newer = event("r1", used=["p1-c1"], created=AS_OF - timedelta(days=1))
    write_log(ws, [newer, event("r2", rating="DISLIKE")], AS_OF - timedelta(days=3))
    write_log(ws, [older], AS_OF - timedelta(days=1))  # written later, but created earlier
    build = build_dataset(ws, as_of=AS_OF)
    (group,) = groups(ws, build.dataset_version)
    assert [p["chunk_id"] for p in group["positives"]] == ["p1-c1"]
    c = build.counts
    assert (c["input_events"], c["deduplicated_events"], c["duplicate_events"]) == (3, 2, 1)
    assert (c["like_events"], c["dislike_events"], c["trainable_groups"]) == (1, 1, 1)


def test_dedupe_tie_keeps_the_copy_written_last(ws: Workspace) -> None:
    corpus(ws)
    same_time = AS_OF - timedelta(days=1)
    write_log(ws, [event("r1", used=["p1-c0"], created=same_time)], AS_OF - timedelta(days=2))
    write_log(ws, [event("r1", used=["p1-c2"], created=same_time)], AS_OF - timedelta(days=1))
    (group,) = groups(ws, build_dataset(ws, as_of=AS_OF).dataset_version)
    assert [p["chunk_id"] for p in group["positives"]] == ["p1-c2"]


def test_window_edges_are_by_file_timestamp(ws: Workspace) -> None:
    corpus(ws)
    start, end = source_window(AS_OF, 30)
    write_log(ws, [event("at-start")], start)  # included: [start, end)
    write_log(ws, [event("before")], start - timedelta(microseconds=1))
    write_log(ws, [event("at-end")], end)  # excluded
    write_log(ws, [event("inside")], end - timedelta(microseconds=1))
    build = build_dataset(ws, as_of=AS_OF, source_window_days=30)
    assert sorted(g["query_text"] for g in groups(ws, build.dataset_version)) == [
        "query for at-start",
        "query for inside",
    ]
    assert build.counts["raw_files"] == 2
    assert len(build.manifest["lineage"]["raw_files"]) == 2


def test_deleted_chunks_and_videos_are_dropped_and_counted(ws: Workspace) -> None:
    corpus(ws, {"p1": 12, "p2": 4, "p3": 6})
    write_log(
        ws,
        [
            event("keeps", topk=["p1-c0", "p1-c1", "p1-c2"], used=["p1-c0"]),
            event("loses-positive", topk=["p1-c3", "p1-c4"], used=["p1-c3"]),
            event("video-going", project="p3", topk=["p3-c0", "p3-c1"], used=["p3-c0"]),
        ],
        AS_OF - timedelta(hours=2),
    )
    with ws.db.transaction() as session:
        session.delete(session.get(Chunk, "p1-c1"))  # an exposed chunk of "keeps"
        session.delete(session.get(Chunk, "p1-c3"))  # the only positive of "loses-positive"
        session.execute(update(Video).where(Video.id == "p3-v").values(status=VideoStatus.DELETING))
    build = build_dataset(ws, as_of=AS_OF)
    (group,) = groups(ws, build.dataset_version)
    assert group["query_text"] == "query for keeps"
    assert [n["chunk_id"] for n in group["negatives"] if n["source"] == "exposed_unused"] == ["p1-c2"]
    all_ids = {i["chunk_id"] for i in group["positives"] + group["negatives"]}
    assert not all_ids & {"p1-c1", "p1-c3"}
    c = build.counts
    assert (c["trainable_groups"], c["dropped_groups"]) == (1, 2)
    assert c["dropped_chunks"] == 1 + 1 + 2  # p1-c1; p1-c3; both p3 chunks


def test_same_inputs_same_seed_give_byte_identical_datasets(tmp_path: Path, tiny_model_dir: Path) -> None:
    events = [
        event(
            f"r{i}",
            user=f"u{i % 3}",
            topk=[f"p1-c{(i + j) % 12}" for j in range(5)],
            used=[f"p1-c{i % 12}"],
            created=AS_OF - timedelta(hours=i),
        )
        for i in range(30)
    ]
    outputs = []
    for name in ("a", "b"):
        ws = Workspace(
            Settings(
                workspace=tmp_path / name,
                runs_dir=tmp_path / f"runs-{name}",
                base_model_path=tiny_model_dir,
                base_model_version="tiny-base",
                log_level="WARNING",
            )
        )
        from opslib.ops.bootstrap import init_workspace

        init_workspace(ws)
        corpus(ws)
        ws.objects.put_bytes(
            "raw_logs/20261130T000000000000Z-00000000000000000000000000000001.jsonl",
            b"".join(event_line(e) for e in events),
        )
        build = build_dataset(ws, as_of=AS_OF, seed=7)
        outputs.append((build.dataset_version, ws.objects.get_bytes(build.train_key)))
        again = build_dataset(ws, as_of=AS_OF, seed=7)
        assert (again.dataset_version, again.created) == (build.dataset_version, False)
        other_seed = build_dataset(ws, as_of=AS_OF, seed=8)
        assert other_seed.dataset_version != build.dataset_version
        assert ws.objects.get_bytes(other_seed.train_key) != outputs[-1][1]  # different random negatives
    assert outputs[0] == outputs[1]
    assert outputs[0][0].startswith("20261201-")


def test_manifest_record_and_eligibility(ws: Workspace) -> None:
    corpus(ws)
    small = build_dataset(ws, as_of=AS_OF - timedelta(days=40))  # nothing in that window
    assert not small.eligible
    assert small.ineligible_reasons == ["groups 0 < 10", "negatives 0 < 20"]
    assert ws.objects.exists(small.train_key) and ws.objects.exists(small.manifest_key)  # kept
    key = write_log(
        ws,
        [event(f"r{i}", topk=[f"p1-c{(i + j) % 12}" for j in range(4)], used=[f"p1-c{i % 12}"]) for i in range(12)],
        AS_OF - timedelta(days=2),
    )
    big = build_dataset(ws, as_of=AS_OF)
    assert big.eligible and big.ineligible_reasons == []
    manifest = json.loads(ws.objects.get_text(big.manifest_key))
    for field in (
        "dataset_version",
        "generation_rule_version",
        "source_window",
        "counts",
        "lineage",
        "data_quality",
        "eligible",
        "ineligible_reasons",
    ):
        assert field in manifest
    assert manifest["lineage"]["raw_files"] == [
        {
            "key": key,
            "sha256": ws.objects.recorded_sha256(key),
            "file_timestamp": (AS_OF - timedelta(days=2)).isoformat(),
        }
    ]
    assert manifest["counts"]["trainable_groups"] == 12 and manifest["counts"]["negatives"] >= 20
    assert manifest["data_quality"]["success"] is True
    with ws.db.read() as session:
        row = session.get(TrainingDataset, big.dataset_version)
        assert row is not None and row.eligible and row.storage_path.endswith(f"datasets/{big.dataset_version}")
        assert (row.source_window_start, row.source_window_end) == (AS_OF - timedelta(days=30), AS_OF)
        assert latest_eligible_dataset(session).dataset_version == big.dataset_version
        assert not session.get(TrainingDataset, small.dataset_version).eligible


def test_a_backfill_built_later_does_not_displace_the_newest_window(ws: Workspace) -> None:
    corpus(ws)
    write_log(
        ws,
        [event(f"r{i}", topk=[f"p1-c{(i + j) % 12}" for j in range(4)], used=[f"p1-c{i % 12}"]) for i in range(12)],
        AS_OF - timedelta(days=2),
    )
    current = build_dataset(ws, as_of=AS_OF)
    backfill = build_dataset(ws, as_of=AS_OF - timedelta(days=1))  # built after, over an older window
    assert current.eligible and backfill.eligible and current.dataset_version != backfill.dataset_version
    with ws.db.read() as session:
        assert latest_eligible_dataset(session).dataset_version == current.dataset_version


def test_a_failed_quality_suite_makes_the_dataset_ineligible(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import opslib.lifecycle.dataset.quality as dq

    corpus(ws)
    write_log(
        ws,
        [event(f"r{i}", topk=[f"p1-c{(i + j) % 12}" for j in range(4)], used=[f"p1-c{i % 12}"]) for i in range(12)],
        AS_OF - timedelta(days=2),
    )
    real = dq.run_suite
    monkeypatch.setattr(dq, "run_suite", lambda frames, rule: {**real(frames, rule), "success": False})
    build = build_dataset(ws, as_of=AS_OF)
    assert not build.eligible and build.ineligible_reasons == ["data-quality suite failed"]
    with ws.db.read() as session:
        assert latest_eligible_dataset(session) is None


def test_bad_arguments() -> None:
    with pytest.raises(DatasetError, match="as_of"):
        source_window(datetime(2026, 1, 1), 30)
    with pytest.raises(DatasetError, match="source_window_days"):
        source_window(AS_OF, 0)


GOOD = {
    "query_text": "q",
    "project_id": "p",
    "source_event_ids": ["e1"],
    "positives": [{"chunk_id": "a", "source": "liked_response_used_chunk", "confidence": 0.8}],
    "negatives": [{"chunk_id": "b", "source": "exposed_unused", "confidence": 0.4}],
}
OTHER = {**GOOD, "source_event_ids": ["e2"]}
BAD = {  # each breaks exactly one rule when validated next to GOOD
    "query_nonempty": {**OTHER, "query_text": "  "},
    "project_present": {**OTHER, "project_id": ""},
    "has_positive": {**OTHER, "positives": []},
    "confidence_allowed": {**OTHER, "negatives": [{"chunk_id": "b", "source": "exposed_unused", "confidence": 0.5}]},
    "source_allowed": {**OTHER, "negatives": [{"chunk_id": "b", "source": "guessed", "confidence": 0.4}]},
    "no_positive_negative_overlap": {
        **OTHER,
        "negatives": [{"chunk_id": "a", "source": "exposed_unused", "confidence": 0.4}],
    },
    "chunk_exists": {**OTHER, "negatives": [{"chunk_id": "zz", "source": "exposed_unused", "confidence": 0.4}]},
    "event_used_once": {**GOOD},
}


@pytest.mark.slow
def test_the_quality_suite_catches_each_rule_it_claims() -> None:
    assert set(BAD) == set(RULES)
    clean = run_suite(frames_from_groups([GOOD, OTHER], {"a", "b"}))
    assert clean["success"] and len(clean["checks"]) == len(RULES)
    for rule, bad in BAD.items():
        result = run_suite(frames_from_groups([GOOD, bad], {"a", "b"}))
        failed = {c["rule"]: c["unexpected_count"] for c in result["checks"] if not c["success"]}
        assert set(failed) == {rule}, (rule, failed)
        assert not result["success"]


@pytest.mark.slow
def test_the_quality_suite_holds_each_rule_to_its_own_sources() -> None:
    disliked = {
        **OTHER,
        "negatives": [{"chunk_id": "b", "source": "disliked_response_used_chunk", "confidence": 0.6}],
    }
    assert run_suite(frames_from_groups([GOOD, disliked], {"a", "b"}, "retrieval-group-v2"), "retrieval-group-v2")[
        "success"
    ]
    v1 = run_suite(frames_from_groups([GOOD, disliked], {"a", "b"}, "retrieval-group-v1"), "retrieval-group-v1")
    failed = {c["rule"] for c in v1["checks"] if not c["success"]}
    assert failed == {"source_allowed", "confidence_allowed"} and v1["suite"] == "retrieval-group-v1"


def test_v2_a_redelivered_dislike_votes_once(ws: Workspace) -> None:
    corpus(ws)
    like = event("r1", used=["p1-c0"], query="q")
    dislike = event("r2", rating="DISLIKE", used=["p1-c0"], query="q", user="u2")
    write_log(ws, [like, dislike], AS_OF - timedelta(hours=5))
    write_log(ws, [dislike], AS_OF - timedelta(hours=4))  # the same event delivered again
    build = build_dataset(ws, as_of=AS_OF)
    (group,) = groups(ws, build.dataset_version)  # 1 like vs 1 dislike: a tie keeps the positive
    assert [p["chunk_id"] for p in group["positives"]] == ["p1-c0"]
    assert build.counts["duplicate_events"] == 1 and build.counts["contested_positives"] == 0


# Intake that cannot poison (issue 15) ------------------------------------------------------
def raw_line(**overrides: object) -> bytes:
    """A raw-log line as intake wrote it before its rules: the fixture event with ``overrides``
    (chunks of ``corpus()``) and a right ``event_id``."""
    data = feedback_event(project_id="p1", topk_ids=["p1-c0", "p1-c1", "p1-c2"], used_ids=["p1-c0"])
    data.update(overrides)
    data["event_id"] = feedback_event_id(data["user_id"], data["req_id"], data["rating"])
    return json.dumps(data).encode() + b"\n"


def many(n: int) -> list:  # type: ignore[type-arg]
    return [event(f"r{i}", topk=[f"p1-c{(i + j) % 12}" for j in range(4)], used=[f"p1-c{i % 12}"]) for i in range(n)]


def test_an_event_from_year_one_in_the_raw_logs_does_not_stop_the_build(ws: Workspace) -> None:
    """Issue 15: ``created_at`` 0001-01-01T00:00:00+14:00 was accepted, and ``20_build_dataset``
    failed with OverflowError for the 30 days its file stayed in the window. Now: skipped, counted."""
    corpus(ws)
    key = write_log(ws, many(12), AS_OF - timedelta(days=1))
    ws.objects.put_bytes(
        log_key(RAW_PREFIX, AS_OF - timedelta(hours=1)),
        raw_line(req_id="y0", created_at="0001-01-01T00:00:00+14:00")  # no UTC instant
        + raw_line(req_id="y1", created_at="0001-01-01T00:00:00-14:00"),  # odd, but a group
    )
    build = build_dataset(ws, as_of=AS_OF)
    assert build.eligible, build.ineligible_reasons
    c = build.counts
    assert (c["input_lines"], c["invalid_lines"], c["trainable_groups"]) == (14, 1, 13)
    assert c["groups_by_day"]["0001-01-01"] == 1
    assert ws.objects.exists(key)


def test_ids_with_a_nul_from_older_raw_logs_name_no_chunk(ws: Workspace) -> None:
    """PostgreSQL refuses a NUL in a query parameter: such ids (and projects) are never looked up."""
    corpus(ws)
    write_log(ws, many(12), AS_OF - timedelta(days=1))
    lines = raw_line(req_id="n1", topk_ids=["p1-c0\u0000", "p1-c1"], used_ids=["p1-c0\u0000"]) + raw_line(
        req_id="n2", project_id="p1\u0000", topk_ids=["p1-c0", "p1-c1"], used_ids=["p1-c0"]
    )
    ws.objects.put_bytes(log_key(RAW_PREFIX, AS_OF - timedelta(hours=3)), lines)
    build = build_dataset(ws, as_of=AS_OF)
    assert build.eligible, build.ineligible_reasons
    c = build.counts
    assert (c["trainable_groups"], c["dropped_groups"], c["dropped_chunks"]) == (13, 1, 1)
    (n2,) = [g for g in groups(ws, build.dataset_version) if g["project_id"] == "p1\u0000"]
    assert not [n for n in n2["negatives"] if n["source"] == "random_same_project"]  # no such project


def test_a_few_malformed_groups_are_dropped_and_counted_not_fatal(ws: Workspace) -> None:
    """Issue 15: 11 whitespace-only queries made a 3,102-group dataset ineligible (the
    data-quality suite failed for all of it). Now they are dropped and counted by reason."""
    corpus(ws)
    with ws.db.transaction() as session:
        session.get(Chunk, "p2-c3").text = "   "  # a chunk without text (not through ingestion)
    write_log(ws, many(300), AS_OF - timedelta(days=1))
    bad = [  # as intake took them before its rules
        raw_line(req_id="w1", query_text="   "),
        raw_line(req_id="w2", query_text="\t \n"),
        raw_line(req_id="w3", project_id=" "),
        raw_line(req_id="w4", project_id="p2", topk_ids=["p2-c3", "p2-c1"], used_ids=["p2-c3"]),  # positive: no text
    ]
    ws.objects.put_bytes(log_key(RAW_PREFIX, AS_OF - timedelta(hours=3)), b"".join(bad))
    build = build_dataset(ws, as_of=AS_OF)
    assert build.eligible, build.ineligible_reasons
    c = build.counts
    assert c["malformed_groups"] == 4 and c["like_events"] == 304
    assert c["malformed_groups_by_reason"] == {"empty_query": 2, "blank_project": 1, "no_positive_text": 1}
    assert c["trainable_groups"] == 300
    written = groups(ws, build.dataset_version)
    assert all(g["query_text"].strip() and g["project_id"].strip() for g in written)
    assert len(written) == 300 and not any(g["project_id"] == "p2" for g in written)
    assert build.manifest["data_quality"]["success"]
    assert build.manifest["eligibility_rule"]["max_malformed_share"] == MAX_MALFORMED_SHARE == 0.05


def test_many_malformed_groups_make_the_dataset_ineligible_naming_the_counts(ws: Workspace) -> None:
    corpus(ws)
    write_log(ws, many(12), AS_OF - timedelta(days=1))
    bad = raw_line(req_id="w1", query_text=" ") + raw_line(req_id="w2", query_text="\u00a0")  # no-break space
    ws.objects.put_bytes(log_key(RAW_PREFIX, AS_OF - timedelta(hours=3)), bad)
    build = build_dataset(ws, as_of=AS_OF)
    assert not build.eligible and build.manifest["data_quality"]["success"]
    assert build.ineligible_reasons == ["malformed groups 2 of 14 LIKE events (14.3%) > 5%: empty_query 2"]
    with ws.db.read() as session:
        row = session.get(TrainingDataset, build.dataset_version)
        assert row.ineligible_reasons == build.ineligible_reasons and row.counts["malformed_groups"] == 2


def test_a_failed_quality_check_is_named_with_its_counts(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import opslib.lifecycle.dataset.quality as dq

    corpus(ws)
    write_log(ws, many(12), AS_OF - timedelta(days=2))
    real = dq.run_suite

    def failing(frames, rule):  # type: ignore[no-untyped-def]
        result = real(frames, rule)
        checks = [
            {**c, "success": False, "unexpected_count": 3} if c["rule"] == "chunk_exists" else c
            for c in result["checks"]
        ]
        return {**result, "checks": checks, "success": False}

    monkeypatch.setattr(dq, "run_suite", failing)
    build = build_dataset(ws, as_of=AS_OF)
    (reason,) = build.ineligible_reasons
    rows = next(c["rows"] for c in build.manifest["data_quality"]["checks"] if c["rule"] == "chunk_exists")
    assert reason == f"data-quality suite failed: chunk_exists 3 of {rows} items"


PROPERTY = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


_EXAMPLE = itertools.count(1)


def _fresh_objects(ws: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The same Metadata DB (and corpus), an empty Object Storage: one example's raw logs only.
    (Each example builds over its own window too: a dataset version is registered in the DB.)"""
    if not ws.objects.exists("corpus-loaded"):
        corpus(ws)
        ws.objects.put_text("corpus-loaded", "yes")
    return Workspace(ws.settings.model_copy(update={"object_store_url": str(tmp_path_factory.mktemp("objects"))}))


def _sound(build, lines: int, readable: int) -> None:  # type: ignore[no-untyped-def]
    c = build.counts
    assert (c["input_lines"], c["input_events"], c["invalid_lines"]) == (lines, readable, lines - readable)
    assert (
        c["trainable_groups"] + c["dropped_groups"] + c["contested_groups"] + c["malformed_groups"]
        == (c["like_events"])
    )
    # Whatever came in, what was written passes the data-quality suite: bad groups never reach it.
    assert build.manifest["data_quality"]["success"], build.manifest["data_quality"]
    for reason in build.ineligible_reasons:
        assert any(ch.isdigit() for ch in reason), reason  # every reason names its counts


@PROPERTY
@given(st.lists(event_lines(accepted_times(datetime.now(UTC))), max_size=8))
def test_health_and_the_dataset_build_run_on_whatever_ingestion_accepts(
    ws: Workspace, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    """For every event ``check_event`` accepts, ``10_feedback_health`` and ``20_build_dataset``
    (the functions their notebooks call) run without error."""
    scratch = _fresh_objects(ws, tmp_path_factory)
    report = ingest_feedback(scratch.objects, lines)
    assert report.accepted == sum(intake_accepts(line) for line in lines)
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert feedback_health(scratch.objects, window_days=7, now=now).total == report.accepted
    _sound(build_dataset(scratch, as_of=now, source_window_days=30), report.accepted, report.accepted)


@PROPERTY
@given(st.lists(event_lines(any_times()), max_size=8))
def test_the_dataset_build_runs_on_anything_an_older_raw_log_may_hold(
    ws: Workspace, tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    """Raw logs are immutable: lines intake took before its rules (any timestamp, blank queries,
    control characters, empty id lists) are skipped when unreadable and tolerated otherwise."""
    from opslib.lifecycle.feedback.events import parse_event_dict

    scratch = _fresh_objects(ws, tmp_path_factory)
    as_of = AS_OF + timedelta(seconds=next(_EXAMPLE))
    scratch.objects.put_bytes(log_key(RAW_PREFIX, as_of - timedelta(hours=1)), b"".join(x + b"\n" for x in lines))
    readable = sum(parse_event_dict(line)[0] is not None for line in lines)
    _sound(build_dataset(scratch, as_of=as_of), len(lines), readable)
