"""Reading a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels.tsv) into a CorpusSpec.

Grouping is deterministic: a document's project is its ``metadata.source`` (else the corpus
name) and its video is its ``metadata.part``, else its title, else a run of
``DOCS_PER_VIDEO`` documents in id order.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from opslib.corpus.loader import CorpusError, CorpusSpec, Document, Query
from opslib.infra.storage import read_objects

DOCS_PER_VIDEO = 20


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise CorpusError(f"{path}: missing (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels.tsv)")
    rows = []
    for number, row in read_objects(path, CorpusError):
        if not isinstance(row.get("_id"), str) or not row["_id"]:
            raise CorpusError(f"{path}:{number}: needs a string '_id'")
        if not isinstance(row.get("text"), str):
            raise CorpusError(f"{path}:{number}: needs a string 'text'")
        rows.append(row)
    return rows


def _read_qrels(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise CorpusError(f"{path}: missing (a BEIR folder needs corpus.jsonl, queries.jsonl, qrels.tsv)")
    relevant: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t"), start=1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            if len(row) != 3:
                raise CorpusError(f"{path}:{number}: expected query-id, corpus-id, score")
            try:
                score = float(row[2])
            except ValueError:
                raise CorpusError(f"{path}:{number}: score {row[2]!r} is not a number") from None
            if score > 0:
                relevant.setdefault(row[0], []).append(row[1])
    return relevant


def read_beir(path: Path, name: str) -> CorpusSpec:
    path = Path(path)
    if not path.is_dir():
        raise CorpusError(f"{path}: not a folder")
    corpus = sorted(_read_jsonl(path / "corpus.jsonl"), key=lambda r: r["_id"])
    queries = _read_jsonl(path / "queries.jsonl")
    qrels = _read_qrels(path / "qrels.tsv")
    documents = []
    for position, row in enumerate(corpus):
        meta = row.get("metadata") or {}
        title = (row.get("title") or "").strip()
        video_key = meta.get("part") or title or f"group-{position // DOCS_PER_VIDEO:04d}"
        documents.append(
            Document(
                doc_id=row["_id"],
                text=row["text"],
                title=title,
                project_key=str(meta.get("source") or name),
                video_key=str(video_key),
            )
        )
    spec_queries = [Query(row["_id"], row["text"], tuple(qrels.get(row["_id"], ()))) for row in queries]
    return CorpusSpec(name=name, source=str(path.resolve()), documents=documents, queries=spec_queries)
