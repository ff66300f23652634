"""Evaluation datasets: operator-managed, immutable, disjoint from training traffic.

A set is a list of ``{query_text, project_id, expected_results}`` records stored canonically
(sorted, sorted expected ids) in ``evaluation_sets/<ref>.jsonl``; ``ref`` is derived from the
content hash, so registering the same content again returns the same ref. Records whose query
texts are the same (compared case- and whitespace-insensitively, per project) are merged into one
query expecting the union of their results; the registration reports how many were merged. A set
is refused if any of its queries appears in the feedback traffic of the raw logs — the traffic
training datasets are built from.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from opslib.corpus.loader import read_queries
from opslib.db.models import EvaluationDataset
from opslib.errors import Invalid
from opslib.infra.logs import get_logger
from opslib.infra.storage import read_objects
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import read_raw_events
from opslib.lifecycle.feedback.queries import normalise_query

log = get_logger(__name__)
PREFIX = "evaluation_sets"


class EvaluationSetError(Invalid, ValueError):
    pass


@dataclass(frozen=True)
class EvalRecord:
    query_text: str
    project_id: str
    expected_results: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "query_text": self.query_text,
                "project_id": self.project_id,
                "expected_results": list(self.expected_results),
            },
            ensure_ascii=False,
            sort_keys=True,
        )


def _checked(i: int, record: EvalRecord) -> EvalRecord:
    """Record ``i`` with its text and project stripped and its expected ids sorted, or refused."""
    if not isinstance(record.query_text, str) or not record.query_text.strip():
        raise EvaluationSetError(f"record {i}: query_text must not be empty")
    if not isinstance(record.project_id, str) or not record.project_id.strip():
        raise EvaluationSetError(f"record {i}: project_id must not be empty")
    expected = tuple(sorted(set(record.expected_results)))
    if not expected or not all(isinstance(e, str) and e for e in expected):
        raise EvaluationSetError(f"record {i}: expected_results must be a non-empty list of chunk ids")
    return EvalRecord(record.query_text.strip(), record.project_id.strip(), expected)


def _merged(group: list[EvalRecord]) -> EvalRecord:
    """One query for records with the same text: the union of their expected results, under the
    smallest of their spellings — chosen by value, not by order, so the set's ref stays the same."""
    expected = tuple(sorted({e for r in group for e in r.expected_results}))
    return EvalRecord(min(r.query_text for r in group), group[0].project_id, expected)


def _validated(records: Iterable[EvalRecord]) -> tuple[list[EvalRecord], int]:
    """The canonical records (sorted; duplicate query texts per project merged) and how many
    records were merged away."""
    groups: dict[tuple[str, str], list[EvalRecord]] = {}
    for i, record in enumerate(records, start=1):
        checked = _checked(i, record)
        groups.setdefault((checked.project_id, normalise_query(checked.query_text)), []).append(checked)
    if not groups:
        raise EvaluationSetError("an evaluation set needs at least one record")
    out = [_merged(group) for group in groups.values()]
    merged = sum(len(group) - 1 for group in groups.values())
    return sorted(out, key=lambda r: (r.project_id, r.query_text, r.expected_results)), merged


def canonical_bytes(records: list[EvalRecord]) -> bytes:
    return "".join(r.to_json() + "\n" for r in records).encode("utf-8")


def traffic_overlap(ws: Workspace, records: list[EvalRecord]) -> list[EvalRecord]:
    """Records whose query (per project) was sent as feedback traffic."""
    wanted = {(r.project_id, normalise_query(r.query_text)): r for r in records}
    found: dict[tuple[str, str], EvalRecord] = {}
    for _key, event in read_raw_events(ws.objects):
        hit = wanted.get((event.project_id, normalise_query(event.query_text)))
        if hit is not None:
            found[(hit.project_id, hit.query_text)] = hit
    return list(found.values())


ROLES = ("evaluation", "guard")


@dataclass(frozen=True)
class RegisteredSet:
    """A registration's outcome: the set's row (the same one for the same content) and how many
    records were merged into another with the same query text."""

    row: EvaluationDataset
    merged: int = 0

    @property
    def evaluation_dataset_ref(self) -> str:
        return self.row.evaluation_dataset_ref

    @property
    def sample_count(self) -> int:
        return self.row.sample_count

    @property
    def source(self) -> str:
        return self.row.source


def corpus_key(ref: str) -> str:
    """Where a guard set keeps its own passages (evaluation sets rank the workspace's chunks)."""
    return f"{PREFIX}/{ref}.corpus.jsonl"


def register_evaluation_set(
    ws: Workspace,
    records: Iterable[EvalRecord],
    *,
    source: str,
    role: str = "evaluation",
    corpus: list[dict[str, object]] | None = None,
) -> RegisteredSet:
    """Store the set (if new) and its row; returns the row (the same one for the same content)
    and how many duplicate query texts were merged. A ``guard`` set brings its ``corpus`` (chunk_id, project_id, video_id, position, text per
    passage), stored beside it and part of its content hash."""
    if role not in ROLES:
        raise EvaluationSetError(f"role {role!r}: must be one of {', '.join(ROLES)}")
    if (role == "guard") != (corpus is not None):
        raise EvaluationSetError("a guard set needs its corpus, and only a guard set has one")
    canonical, merged = _validated(records)
    overlap = traffic_overlap(ws, canonical)
    if overlap:
        sample = ", ".join(repr(r.query_text) for r in overlap[:3])
        raise EvaluationSetError(
            f"{len(overlap)} of {len(canonical)} queries appear in the feedback traffic training uses "
            f"(e.g. {sample}); an evaluation set must be disjoint from it"
        )
    data = canonical_bytes(canonical)
    passages = (
        b"".join(json.dumps(p, ensure_ascii=False, sort_keys=True).encode() + b"\n" for p in corpus)
        if corpus is not None
        else b""
    )
    ref = "eval-" + hashlib.sha256(data + passages).hexdigest()[:16]
    key = f"{PREFIX}/{ref}.jsonl"
    with ws.db.read() as session:
        existing = session.get(EvaluationDataset, ref)
        if existing is not None:
            return RegisteredSet(existing, merged)
    if corpus is not None and not ws.objects.exists(corpus_key(ref)):
        ws.objects.put_bytes(corpus_key(ref), passages)
    if not ws.objects.exists(key):
        ws.objects.put_bytes(key, data)
    with ws.db.transaction() as session:
        row = EvaluationDataset(
            evaluation_dataset_ref=ref,
            storage_path=ws.objects.uri(key),
            sample_count=len(canonical),
            source=source[:512],
            role=role,
        )
        session.add(row)
    log.info(
        "evaluation set registered",
        extra={"evaluation_dataset_ref": ref, "samples": len(canonical), "merged": merged, "role": role},
    )
    return RegisteredSet(row, merged)


def records_from_corpus(ws: Workspace, corpus: str) -> list[EvalRecord]:
    """The imported corpus's reserved queries (split off before any traffic was simulated)."""
    return [EvalRecord(q.query_text, q.project_id, q.expected_results) for q in read_queries(ws, corpus, "reserved")]


def records_from_file(path: Path) -> list[EvalRecord]:
    """JSONL (one object per line) or CSV (``expected_results`` separated by ``|`` or ``;``)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationSetError(f"{path}: not found")
    records = []
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"query_text", "project_id", "expected_results"} - set(reader.fieldnames or [])
            if missing:
                raise EvaluationSetError(f"{path}: missing column(s) {sorted(missing)}")
            for row in reader:
                expected = [e.strip() for e in row["expected_results"].replace(";", "|").split("|") if e.strip()]
                records.append(EvalRecord(row["query_text"], row["project_id"], tuple(expected)))
        return records
    for number, data in read_objects(path, EvaluationSetError):
        try:
            records.append(EvalRecord(data["query_text"], data["project_id"], tuple(data["expected_results"])))
        except (KeyError, TypeError) as exc:
            raise EvaluationSetError(
                f"{path}:{number}: needs query_text, project_id, expected_results ({exc})"
            ) from None
    return records


def read_evaluation_set(ws: Workspace, ref: str) -> Iterator[EvalRecord]:
    """The set's records, read once and verified against its recorded sha256 before the first is
    returned: a changed or missing set raises ``IntegrityFailure`` naming its key, when called."""
    with ws.db.read() as session:
        row = session.get(EvaluationDataset, ref)
        if row is None:
            raise EvaluationSetError(f"evaluation_dataset_ref {ref!r}: not registered")
    data = ws.objects.read_verified(f"{PREFIX}/{ref}.jsonl")
    return iter([_record(json.loads(line)) for line in data.splitlines() if line.strip()])


def _record(data: dict[str, Any]) -> EvalRecord:
    return EvalRecord(data["query_text"], data["project_id"], tuple(data["expected_results"]))


def latest_evaluation_set(ws: Workspace, role: str = "evaluation") -> EvaluationDataset | None:
    with ws.db.read() as session:
        return session.scalars(
            select(EvaluationDataset)
            .where(EvaluationDataset.role == role)
            .order_by(EvaluationDataset.created_at.desc())
            .limit(1)
        ).first()
