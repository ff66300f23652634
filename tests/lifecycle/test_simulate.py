from pathlib import Path

import pytest
from helpers import write_beir

from opslib.corpus.beir import read_beir
from opslib.corpus.loader import load_corpus, read_queries
from opslib.corpus.search import SearchHit
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import read_raw_events
from opslib.lifecycle.feedback.simulate import (
    SimulationError,
    choose_used,
    simulate_traffic,
)


@pytest.fixture
def loaded(ws: Workspace, tmp_path: Path) -> Workspace:
    load_corpus(ws, read_beir(write_beir(tmp_path / "mini", n_queries=20), "mini"), reserve_fraction=0.3, seed=3)
    return ws


def test_only_traffic_queries_are_sent_and_events_follow_the_contract(loaded: Workspace) -> None:
    report = simulate_traffic(loaded, "mini", requests=60, seed=5, noise=0.0)
    events = [e for _, e in read_raw_events(loaded.objects)]
    assert len(events) == report.requests == 60 == report.ingest.accepted
    assert len({e.trace_id for e in events}) == 60  # each request its own trace
    reserved = {q.query_text for q in read_queries(loaded, "mini", "reserved")}
    traffic = {q.query_text: q for q in read_queries(loaded, "mini", "traffic")}
    assert reserved and not reserved & {e.query_text for e in events}
    for event in events:
        query = traffic[event.query_text]
        assert event.project_id == query.project_id
        assert set(event.used_ids) <= set(event.topk_ids) and 1 <= len(event.used_ids) <= 2
        assert (event.active_model_version, event.active_index_name) == ("tiny-base", "idx-tiny-base")
        assert event.response_snapshot_ref == event.req_id
        # noise 0: LIKE exactly when the answer used a relevant chunk
        assert (event.rating == "LIKE") == bool(set(event.used_ids) & set(query.expected_results))
    assert report.likes + report.dislikes == 60


def test_same_seed_same_traffic(loaded: Workspace) -> None:
    simulate_traffic(loaded, "mini", requests=25, seed=9)
    first = [(e.query_text, e.user_id, e.rating, tuple(e.used_ids)) for _, e in read_raw_events(loaded.objects)]
    simulate_traffic(loaded, "mini", requests=25, seed=9)
    both = [(e.query_text, e.user_id, e.rating, tuple(e.used_ids)) for _, e in read_raw_events(loaded.objects)]
    assert both == first + first
    assert len({e.req_id for _, e in read_raw_events(loaded.objects)}) == 50  # every request is its own


def test_noise_flips_ratings(loaded: Workspace) -> None:
    clean = simulate_traffic(loaded, "mini", requests=80, seed=1, noise=0.0)
    flipped = simulate_traffic(loaded, "mini", requests=80, seed=1, noise=1.0)
    assert (flipped.likes, flipped.dislikes) == (clean.dislikes, clean.likes)


def test_answers_cite_relevant_chunks_first() -> None:
    hits = [SearchHit(ref=r, used=False, score=0, video_id="v", start_ms=0, end_ms=1, text="") for r in "abcde"]
    assert choose_used(hits, {"d", "b", "z"}) == ["b", "d"]
    assert choose_used(hits, {"z"}) == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"requests": 0}, "requests"), ({"noise": 1.5}, "noise"), ({"users": 0}, "users")]
)
def test_bad_arguments(loaded: Workspace, kwargs: dict, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        simulate_traffic(loaded, "mini", **{"requests": 5, **kwargs})


def test_unknown_corpus(ws: Workspace) -> None:
    with pytest.raises(ValueError, match="not imported"):
        simulate_traffic(ws, "nope", requests=5)
