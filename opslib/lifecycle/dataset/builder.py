"""Training datasets: raw feedback logs → retrieval groups (query, positives, negatives) +
manifest, validated, immutable, versioned by content. Two generation rules (``rules``):

- ``retrieval-group-v1``: LIKE events make groups; DISLIKE events are counted and dropped;
- ``retrieval-group-v2`` (the default): the same groups, but DISLIKE events vote too. For each
  question (project + query text up to case and whitespace) every chunk an answer *used* gets a
  LIKE or a DISLIKE vote per event. A chunk disliked more often than liked for that question is
  *contested*: it is no positive of the question's groups (a noisy or mistaken LIKE), and it is an
  explicit negative of them (``disliked_response_used_chunk``, up to ``MAX_DISLIKED``).

The builder streams the raw logs and keeps no event in memory:

1. *scan* — every line in the window is read and validated once; for each event only a 64-bit
   id hash, its ``created_at``, its position and its rating are kept (25 bytes), which is
   enough to pick, per ``event_id``, the copy with the latest ``created_at`` (ties: the one
   written last); under v2 also one 25-byte vote per used chunk (event, question hash, chunk
   hash), settled with numpy once the winners are known — only the winning copy of an event votes;
2. *emit* — the files are read again and each winning LIKE event becomes one group, written
   straight to ``train.jsonl`` in file order (deterministic), with chunk text fetched from the
   Metadata DB in batches.

A line the scan cannot read (``check_stored_event``: raw logs are immutable and may hold lines
written before intake refused them) is counted in ``invalid_lines`` and skipped. A LIKE event that
cannot make a sound group — its query empty after normalisation, a blank project, or only
positives without text — is *malformed*: it is dropped and counted (``malformed_groups``, by
reason in ``malformed_groups_by_reason``), so a few bad events never fail the data-quality suite
for the whole dataset; only when they are more than ``MAX_MALFORMED_SHARE`` of the LIKE events is
that an ineligibility reason (naming the counts).

Dataset generation never starts training: it only writes the artifact and a ``TrainingDataset``
row the training scheduler queries for the latest eligible dataset.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from opslib.db.models import Chunk, TrainingDataset, Video, VideoStatus, utcnow
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.storage import sha256_file
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.quality import GroupFrames, check_groups, id_hash64
from opslib.lifecycle.dataset.rules import (
    CONFIDENCE,
    DEFAULT_RULE,
    DISLIKED,
    EXPOSED,
    GENERATION_RULES,
    MAX_DISLIKED,
    POSITIVE,
    RANDOM,
    RULE_V2,
)
from opslib.lifecycle.feedback.events import (
    RAW_PREFIX,
    batch_timestamp,
    log_files,
    parse_event_dict,
)
from opslib.lifecycle.feedback.queries import normalise_query

log = get_logger(__name__)

MIN_GROUPS = 10
MIN_NEGATIVES = 20
# Malformed LIKE events (dropped, not groups) above this share of the LIKE events make the dataset
# ineligible: a few are noise; more say something upstream is broken.
MAX_MALFORMED_SHARE = 0.05
MALFORMED_REASONS = ("empty_query", "blank_project", "no_positive_text")
DEFAULT_WINDOW_DAYS = 30
_RESOLVE_BATCH = 1000


class DatasetError(Invalid, ValueError):
    pass


def random_negative_count(exposed_unused: int) -> int:
    """clamp(round(0.5 × exposed_unused), 1, 3), rounding halves up (0.5 → 1, 2.5 → 3)."""
    if exposed_unused < 0:
        raise DatasetError(f"exposed_unused {exposed_unused}: must be >= 0")
    return min(max(math.floor(0.5 * exposed_unused + 0.5), 1), 3)


@dataclass
class DatasetCounts:
    raw_files: int = 0
    input_lines: int = 0  # lines read from raw log files in the window
    invalid_lines: int = 0  # lines that are not valid events (ingestion should have kept them out)
    input_events: int = 0  # valid events read
    deduplicated_events: int = 0  # distinct event ids
    duplicate_events: int = 0  # input_events - deduplicated_events
    like_events: int = 0
    dislike_events: int = 0
    trainable_groups: int = 0  # groups written
    dropped_groups: int = 0  # LIKE events without a usable positive (used chunks gone or none)
    malformed_groups: int = 0  # LIKE events dropped as unsound groups (see malformed_groups_by_reason)
    malformed_groups_by_reason: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MALFORMED_REASONS, 0))
    contested_positives: int = 0  # v2: used chunks of a LIKE dropped as disliked more often than liked
    contested_groups: int = 0  # v2: LIKE events left without a positive by that
    dropped_chunks: int = 0  # chunk references dropped because the chunk or its video was deleted
    positives: int = 0
    negatives: int = 0
    negatives_by_source: dict[str, int] = field(default_factory=lambda: {DISLIKED: 0, EXPOSED: 0, RANDOM: 0})
    groups_by_day: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetBuild:
    dataset_version: str
    created: bool  # False: the same content was already built and is returned as it is
    eligible: bool
    ineligible_reasons: list[str]
    manifest: dict[str, Any]
    train_key: str
    manifest_key: str

    @property
    def counts(self) -> dict[str, Any]:
        return dict(self.manifest["counts"])


# Pass 1: scan ------------------------------------------------------------------------------
@dataclass
class _Scan:
    hashes: array[int] = field(default_factory=lambda: array("Q"))
    created: array[float] = field(default_factory=lambda: array("d"))
    positions: array[int] = field(default_factory=lambda: array("q"))
    likes: array[int] = field(default_factory=lambda: array("b"))


def _iter_lines(ws: Workspace, keys: list[str]) -> Iterator[tuple[int, bytes]]:
    position = 0
    for key in keys:
        for line in ws.objects.iter_lines(key):
            yield position, line.rstrip(b"\n")
            position += 1


def _winners(scan: _Scan, counts: DatasetCounts) -> np.ndarray:
    """Scan indices of the winning copy of each event (latest ``created_at``, then last written)."""
    if not len(scan.hashes):
        return np.zeros(0, dtype=np.int64)
    hashes = np.frombuffer(scan.hashes, dtype=np.uint64)
    created = np.frombuffer(scan.created, dtype=np.float64)
    positions = np.frombuffer(scan.positions, dtype=np.int64)
    likes = np.frombuffer(scan.likes, dtype=np.int8).astype(bool)
    order = np.lexsort((positions, created, hashes))  # by hash, then created_at, then position
    last_of_hash = np.ones(len(order), dtype=bool)
    last_of_hash[:-1] = hashes[order][1:] != hashes[order][:-1]
    winners = order[last_of_hash]
    counts.deduplicated_events = len(winners)
    counts.duplicate_events = counts.input_events - counts.deduplicated_events
    counts.like_events = int(likes[winners].sum())
    counts.dislike_events = counts.deduplicated_events - counts.like_events
    return winners


def _like_positions(scan: _Scan, winners: np.ndarray) -> np.ndarray:
    positions = np.frombuffer(scan.positions, dtype=np.int64)
    likes = np.frombuffer(scan.likes, dtype=np.int8).astype(bool)
    return np.sort(positions[winners][likes[winners]])


class _Votes:
    """v2: per question, how many LIKE'd and DISLIKE'd answers used each chunk.

    Votes are recorded in the scan as flat arrays (event, question hash, chunk hash, rating) and
    settled once the winning copy of each event is known; only the contested chunks — disliked
    more often than liked — are kept as ids afterwards.
    """

    def __init__(self) -> None:
        self._events, self._questions, self._chunks = array("q"), array("Q"), array("Q")
        self._dislikes = array("b")
        self._chunk_ids: dict[int, str] = {}  # bounded by the chunks feedback names (the corpus)
        self._contested: dict[int, list[str]] = {}

    @staticmethod
    def _question(event: dict[str, Any]) -> int:
        return id_hash64(f"{event['project_id']}\x1f{normalise_query(event['query_text'])}")

    def add(self, scan_index: int, event: dict[str, Any]) -> None:
        question, dislike = self._question(event), event["rating"] != "LIKE"
        for chunk_id in dict.fromkeys(event["used_ids"]):
            chunk = id_hash64(chunk_id)
            self._chunk_ids.setdefault(chunk, chunk_id)
            self._events.append(scan_index)
            self._questions.append(question)
            self._chunks.append(chunk)
            self._dislikes.append(dislike)

    def settle(self, winners: np.ndarray, scanned: int) -> None:
        """Count the winning events' votes per (question, chunk); keep the contested ones."""
        is_winner = np.zeros(scanned, dtype=bool)
        is_winner[winners] = True
        keep = is_winner[np.frombuffer(self._events, dtype=np.int64)]
        questions = np.frombuffer(self._questions, dtype=np.uint64)[keep]
        chunks = np.frombuffer(self._chunks, dtype=np.uint64)[keep]
        dislikes = np.frombuffer(self._dislikes, dtype=np.int8)[keep].astype(np.int64)
        del self._events, self._questions, self._chunks, self._dislikes
        if not len(questions):
            return
        order = np.lexsort((chunks, questions))
        questions, chunks, dislikes = questions[order], chunks[order], dislikes[order]
        starts = np.flatnonzero(
            np.concatenate(([True], (questions[1:] != questions[:-1]) | (chunks[1:] != chunks[:-1])))
        )
        votes = np.diff(np.append(starts, len(questions)))
        disliked = np.add.reduceat(dislikes, starts)
        contested = np.flatnonzero(disliked > votes - disliked)
        ranked: dict[int, list[tuple[int, str]]] = {}
        for i in contested.tolist():
            chunk_id = self._chunk_ids[int(chunks[starts[i]])]
            ranked.setdefault(int(questions[starts[i]]), []).append((-int(disliked[i]), chunk_id))
        self._contested = {q: [c for _, c in sorted(items)] for q, items in ranked.items()}
        self._chunk_ids = {}

    def contested(self, event: dict[str, Any]) -> list[str]:
        """The question's chunks disliked more often than liked: most disliked first, then by id."""
        return self._contested.get(self._question(event), [])


# Pass 2: emit ------------------------------------------------------------------------------
def _events_at(ws: Workspace, keys: list[str], wanted_positions: np.ndarray) -> Iterator[dict[str, Any]]:
    """The events at the given (sorted) line positions, parsed, in position order."""
    wanted = iter(wanted_positions.tolist())
    next_wanted = next(wanted, None)
    for position, line in _iter_lines(ws, keys):
        if next_wanted is None:
            break
        if position == next_wanted:
            next_wanted = next(wanted, None)
            yield orjson.loads(line)  # validated in the scan; raw logs are immutable


class _ChunkResolver:
    """Chunk text and liveness from the Metadata DB, in batches, remembered for the build.

    The cache is bounded by the number of distinct chunks feedback refers to (the corpus), not
    by the number of events.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self._pools: dict[str, tuple[list[str], frozenset[str]]] = {}
        self._text: dict[str, str | None] = {}  # None: deleted (or its video is being deleted)

    def texts(self, chunk_ids: set[str]) -> dict[str, str | None]:
        """chunk id → text, or None if the chunk is gone or its video is being deleted.

        Returns the build-wide cache itself (every id asked for is in it afterwards)."""
        unknown = sorted(c for c in chunk_ids if c not in self._text)
        # An id with a NUL (in raw logs from before intake refused them) names no chunk, and
        # PostgreSQL refuses NUL in a query parameter: it is not asked for.
        self._text.update({c: None for c in unknown if "\x00" in c})
        unknown = [c for c in unknown if "\x00" not in c]
        for start in range(0, len(unknown), 500):
            part = unknown[start : start + 500]
            rows = dict(
                self.session.execute(
                    select(Chunk.id, Chunk.text)
                    .join(Video, Video.id == Chunk.video_id)
                    .where(Chunk.id.in_(part), Video.status != VideoStatus.DELETING)
                ).all()
            )
            self._text.update({cid: rows.get(cid) for cid in part})
        return self._text

    def pool(self, project_id: str) -> tuple[list[str], frozenset[str]]:
        """Chunk ids of the project's READY videos, sorted (random negatives are drawn from it)."""
        if project_id not in self._pools and "\x00" in project_id:  # names no project (see texts)
            self._pools[project_id] = ([], frozenset())
        if project_id not in self._pools:
            ids = list(
                self.session.scalars(
                    select(Chunk.id)
                    .join(Video, Video.id == Chunk.video_id)
                    .where(Video.project_id == project_id, Video.status == VideoStatus.READY)
                    .order_by(Chunk.id)
                )
            )
            self._pools[project_id] = (ids, frozenset(ids))
        return self._pools[project_id]


_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of SplitMix64: (next state, 64-bit output). Small, fast, fully reproducible."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _draw_random(pool: tuple[list[str], frozenset[str]], excluded: set[str], k: int, key: str) -> list[str]:
    """k distinct pool members not in ``excluded`` — all that remain if that is k or fewer.

    The draws come from a generator seeded by ``key`` alone, so they do not depend on what else
    is in the window or in which order events are processed.
    """
    ids, members = pool
    if len(ids) - len(excluded & members) <= k:
        return [c for c in ids if c not in excluded]
    chosen: list[str] = []
    taken = set(excluded)
    state = id_hash64(key)
    while len(chosen) < k:
        state, value = _splitmix64(state)
        candidate = ids[value % len(ids)]
        if candidate not in taken:
            taken.add(candidate)
            chosen.append(candidate)
    return chosen


class _Items:
    """The item objects of a build, one per (source, chunk): groups share them (less garbage)."""

    def __init__(self) -> None:
        self._by_source: dict[str, dict[str, dict[str, Any]]] = {source: {} for source in CONFIDENCE}

    def of(self, source: str, chunk_ids: list[str], texts: dict[str, str | None]) -> list[dict[str, Any]]:
        cache = self._by_source[source]
        found = []
        for chunk_id in chunk_ids:
            item = cache.get(chunk_id)
            if item is None:
                item = cache[chunk_id] = {
                    "chunk_id": chunk_id,
                    "text": texts[chunk_id],
                    "source": source,
                    "confidence": CONFIDENCE[source],
                }
            found.append(item)
        return found


def _usable(text: str | None) -> bool:
    """A chunk an item can carry: it exists (not deleted) and has text."""
    return text is not None and bool(text.strip())


def _malformed(event: dict[str, Any]) -> str | None:
    """Why a LIKE event can make no sound group whatever its chunks, or None."""
    if not normalise_query(event["query_text"]):
        return "empty_query"
    if not event["project_id"].strip():
        return "blank_project"
    return None


def _utc_day(created_at: str) -> str:
    if created_at.endswith("+00:00"):  # how ingestion writes it: skip the parse
        return created_at[:10]
    return datetime.fromisoformat(created_at).astimezone(UTC).date().isoformat()


def _groups_for(
    events: list[dict[str, Any]],
    resolver: _ChunkResolver,
    items: _Items,
    seed: int,
    counts: DatasetCounts,
    rule: str,
    votes: _Votes | None,
) -> Iterator[dict[str, Any]]:
    contested_of = [votes.contested(e) if votes is not None else [] for e in events]
    texts = resolver.texts(
        {c for e in events for c in (*e["topk_ids"], *e["used_ids"])} | {c for cs in contested_of for c in cs}
    )
    plans = []
    for event, contested in zip(events, contested_of, strict=True):
        used = list(dict.fromkeys(event["used_ids"]))
        exposed = [c for c in dict.fromkeys(event["topk_ids"]) if c not in used]
        malformed = _malformed(event)
        alive_used = [c for c in used if texts[c] is not None]
        counts.dropped_chunks += len(used) - len(alive_used)
        texted_used = [c for c in alive_used if _usable(texts[c])]
        if malformed is None and alive_used and not texted_used:
            malformed = "no_positive_text"
        if malformed is not None:
            counts.malformed_groups += 1
            counts.malformed_groups_by_reason[malformed] += 1
            continue
        positives = [c for c in texted_used if c not in contested]
        counts.contested_positives += len(texted_used) - len(positives)
        disliked = [c for c in contested if _usable(texts[c])][:MAX_DISLIKED]
        exposed_alive = [c for c in exposed if _usable(texts[c])]
        counts.dropped_chunks += len(exposed) - len(exposed_alive)
        exposed_alive = [c for c in exposed_alive if c not in disliked]
        if not positives:
            if texted_used:
                counts.contested_groups += 1
            else:
                counts.dropped_groups += 1
            continue
        # The count follows the event (topk − used), before deleted chunks are dropped.
        randoms = _draw_random(
            resolver.pool(event["project_id"]),
            set(used) | set(exposed) | set(disliked),
            random_negative_count(len(exposed)),
            f"{rule}:{seed}:{event['event_id']}",
        )
        plans.append((event, positives, disliked, exposed_alive, randoms))
    texts = resolver.texts({c for *_, randoms in plans for c in randoms})
    for event, positives, disliked, exposed_alive, randoms in plans:
        randoms = [c for c in randoms if _usable(texts[c])]
        group = {
            "query_text": event["query_text"],
            "project_id": event["project_id"],
            "positives": items.of(POSITIVE, positives, texts),
            "negatives": items.of(DISLIKED, disliked, texts)
            + items.of(EXPOSED, exposed_alive, texts)
            + items.of(RANDOM, randoms, texts),
            "source_event_ids": [event["event_id"]],
            "generation_rule_version": rule,
        }
        counts.trainable_groups += 1
        counts.positives += len(positives)
        counts.negatives += len(disliked) + len(exposed_alive) + len(randoms)
        counts.negatives_by_source[DISLIKED] += len(disliked)
        counts.negatives_by_source[EXPOSED] += len(exposed_alive)
        counts.negatives_by_source[RANDOM] += len(randoms)
        day = _utc_day(event["created_at"])
        counts.groups_by_day[day] = counts.groups_by_day.get(day, 0) + 1
        yield group


def _dumps(group: dict[str, Any]) -> bytes:
    return orjson.dumps(group, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE)


# The build ---------------------------------------------------------------------------------
def source_window(as_of: datetime, days: int) -> tuple[datetime, datetime]:
    """[as_of - days, as_of) by raw-log file timestamp."""
    if as_of.tzinfo is None:
        raise DatasetError("as_of: must carry a UTC offset")
    if days < 1:
        raise DatasetError(f"source_window_days {days}: must be >= 1")
    end = as_of.astimezone(UTC)
    return end - timedelta(days=days), end


def build_dataset(
    ws: Workspace,
    *,
    as_of: datetime | None = None,
    source_window_days: int = DEFAULT_WINDOW_DAYS,
    seed: int = 0,
    rule: str = DEFAULT_RULE,
    progress: bool = False,
) -> DatasetBuild:
    """Build (or find, if the same content exists) the dataset for the window ending ``as_of``
    under generation rule ``rule``."""
    if rule not in GENERATION_RULES:
        raise DatasetError(f"generation_rule_version {rule!r}: must be one of {', '.join(GENERATION_RULES)}")
    start, end = source_window(as_of or utcnow(), source_window_days)
    keys = log_files(ws.objects, RAW_PREFIX, start, end)
    counts = DatasetCounts(raw_files=len(keys))
    lineage = [
        {"key": k, "sha256": ws.objects.recorded_sha256(k), "file_timestamp": batch_timestamp(k).isoformat()}
        for k in keys
    ]

    scan = _Scan()
    votes = _Votes() if rule == RULE_V2 else None
    for position, line in tqdm(_iter_lines(ws, keys), desc="scan raw logs", unit="line", disable=not progress):
        counts.input_lines += 1
        event, _reason = parse_event_dict(line)
        if event is None:
            counts.invalid_lines += 1
            continue
        counts.input_events += 1
        event_id = event["event_id"]  # a validated UUIDv5 (SHA-1 bits): its first 64 bits will do
        scan.hashes.append(int(event_id[:8] + event_id[9:13] + event_id[14:18], 16))
        scan.created.append(datetime.fromisoformat(event["created_at"]).timestamp())
        scan.positions.append(position)
        scan.likes.append(event["rating"] == "LIKE")
        if votes is not None:
            votes.add(len(scan.likes) - 1, event)
    winners = _winners(scan, counts)
    like_positions = _like_positions(scan, winners)
    if votes is not None:
        votes.settle(winners, len(scan.hashes))
    del scan

    with tempfile.TemporaryDirectory(prefix="dataset-") as tmp:
        train_path = Path(tmp) / "train.jsonl"
        written = GroupFrames(rule)
        _emit(ws, keys, like_positions, seed, rule, votes, counts, train_path, written, progress)
        quality = check_groups(ws, written)
        del written
        train_sha = sha256_file(train_path)
        identity = hashlib.sha256(
            json.dumps([rule, start.isoformat(), end.isoformat(), seed, train_sha]).encode()
        ).hexdigest()
        dataset_version = f"{end:%Y%m%d}-{identity[:12]}"
        prefix = f"datasets/{dataset_version}"
        with ws.db.read() as session:
            existing = session.get(TrainingDataset, dataset_version)
        if existing is not None:
            manifest = json.loads(ws.objects.get_text(f"{prefix}/manifest.json"))
            return DatasetBuild(
                dataset_version,
                False,
                existing.eligible,
                list(existing.ineligible_reasons),
                manifest,
                f"{prefix}/train.jsonl",
                f"{prefix}/manifest.json",
            )
        reasons = ineligible_reasons(counts, quality)
        manifest = {
            "dataset_version": dataset_version,
            "generation_rule_version": rule,
            "source_window": {
                "start": start.isoformat(),
                "end": end.isoformat(),
                "days": source_window_days,
                "by": "raw log file timestamp",
            },
            "seed": seed,
            "counts": asdict(counts),
            "lineage": {"raw_files": lineage, "train_sha256": train_sha},
            "data_quality": quality,
            "eligible": not reasons,
            "ineligible_reasons": reasons,
            "eligibility_rule": {
                "min_groups": MIN_GROUPS,
                "min_negatives": MIN_NEGATIVES,
                "data_quality": "must pass",
                "max_malformed_share": MAX_MALFORMED_SHARE,
            },
            "created_at": utcnow().isoformat(),
        }
        if not ws.objects.exists(f"{prefix}/train.jsonl"):  # a crashed earlier build may have published it
            ws.objects.put_file(f"{prefix}/train.jsonl", train_path)
    if not ws.objects.exists(f"{prefix}/manifest.json"):
        ws.objects.put_text(f"{prefix}/manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    else:
        manifest = json.loads(ws.objects.get_text(f"{prefix}/manifest.json"))
    with ws.db.transaction() as session:
        session.add(
            TrainingDataset(
                dataset_version=dataset_version,
                storage_path=ws.objects.uri(prefix),
                generation_rule_version=rule,
                source_window_start=start,
                source_window_end=end,
                counts=manifest["counts"],
                eligible=manifest["eligible"],
                ineligible_reasons=manifest["ineligible_reasons"],
            )
        )
    log.info(
        "dataset built",
        extra={"dataset_version": dataset_version, "eligible": manifest["eligible"], "groups": counts.trainable_groups},
    )
    return DatasetBuild(
        dataset_version,
        True,
        manifest["eligible"],
        manifest["ineligible_reasons"],
        manifest,
        f"{prefix}/train.jsonl",
        f"{prefix}/manifest.json",
    )


def _emit(
    ws: Workspace,
    keys: list[str],
    like_positions: np.ndarray,
    seed: int,
    rule: str,
    votes: _Votes | None,
    counts: DatasetCounts,
    train_path: Path,
    written: GroupFrames,
    progress: bool,
) -> None:
    batch: list[dict[str, Any]] = []
    bar = tqdm(total=len(like_positions), desc="build groups", unit="group", disable=not progress)
    with ws.db.read() as session, open(train_path, "wb") as out:
        resolver, items = _ChunkResolver(session), _Items()

        def flush() -> None:
            for group in _groups_for(batch, resolver, items, seed, counts, rule, votes):
                out.write(_dumps(group))
                written.add(group)  # the data-quality frames see exactly what is written
            bar.update(len(batch))
            batch.clear()

        for event in _events_at(ws, keys, like_positions):
            batch.append(event)
            if len(batch) >= _RESOLVE_BATCH:
                flush()
        flush()
    bar.close()


def ineligible_reasons(counts: DatasetCounts, quality: dict[str, Any]) -> list[str]:
    """Empty iff eligible: groups ≥ 10, negatives ≥ 20, malformed LIKE events at most
    ``MAX_MALFORMED_SHARE`` of the LIKE events, and the data-quality suite passed. Each reason
    names its counts."""
    reasons = []
    if counts.trainable_groups < MIN_GROUPS:
        reasons.append(f"groups {counts.trainable_groups} < {MIN_GROUPS}")
    if counts.negatives < MIN_NEGATIVES:
        reasons.append(f"negatives {counts.negatives} < {MIN_NEGATIVES}")
    malformed, likes = counts.malformed_groups, counts.like_events
    if likes and malformed / likes > MAX_MALFORMED_SHARE:
        which = ", ".join(f"{reason} {n}" for reason, n in counts.malformed_groups_by_reason.items() if n)
        reasons.append(
            f"malformed groups {malformed} of {likes} LIKE events ({malformed / likes:.1%}) "
            f"> {MAX_MALFORMED_SHARE:.0%}: {which}"
        )
    if not quality["success"]:
        failed = [
            f"{c['rule']} {c['unexpected_count']} of {c['rows']} {c['frame']}"
            for c in quality.get("checks", [])
            if not c["success"]
        ]
        reasons.append("data-quality suite failed" + (f": {'; '.join(failed)}" if failed else ""))
    return reasons


def read_groups(ws: Workspace, dataset_version: str) -> Iterator[dict[str, Any]]:
    """Stream the groups of a stored dataset."""
    for line in ws.objects.iter_lines(f"datasets/{dataset_version}/train.jsonl"):
        yield orjson.loads(line)
