"""Reading a BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels.tsv) into a CorpusSpec, and
writing one out (``export_beir``: the built-in corpus as a benchmark folder any ``--dataset`` takes).

Grouping is deterministic: a document's project is its ``metadata.source`` (else the corpus
name) and its video is its ``metadata.part``, else its title, else a run of
``DOCS_PER_VIDEO`` documents in id order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opslib.corpus.loader import CorpusError, CorpusSpec, Document, Query
from opslib.infra.storage import read_objects

DOCS_PER_VIDEO = 20
BEIR_FILES = ("corpus.jsonl", "queries.jsonl", "qrels.tsv")


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


@dataclass(frozen=True)
class BeirExport:
    folder: Path
    documents: int
    queries: int
    judgments: int


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def export_beir(spec: CorpusSpec, folder: Path) -> BeirExport:
    """Write ``spec`` as a BEIR folder that ``read_beir`` reads back into the same projects,
    videos, chunks and queries: each document's project and video go in its ``metadata``
    (``source``, ``part``), every relevant passage is a qrels row of score 1. Refuses to
    overwrite: a benchmark folder, once written, is what its figures were measured on."""
    folder = Path(folder)
    if spec.chunking_version is not None:
        # Its pieces share their passage's id: BEIR has no word for a piece of a passage.
        raise CorpusError(
            f"corpus {spec.name!r}: re-chunked ({spec.chunking_version}); export the passages, not their pieces"
        )
    existing = [name for name in BEIR_FILES if (folder / name).exists()]
    if existing:
        raise CorpusError(f"{folder}: already holds {', '.join(existing)} (choose an empty folder)")
    folder.mkdir(parents=True, exist_ok=True)
    documents = [
        {"_id": d.doc_id, "title": d.title, "text": d.text, "metadata": {"source": d.project_key, "part": d.video_key}}
        for d in spec.documents
    ]
    queries = [{"_id": q.query_id, "text": q.text} for q in spec.queries]
    qrels = [f"{q.query_id}\t{doc_id}\t1" for q in spec.queries for doc_id in q.relevant_doc_ids]
    # Each file is written whole under a temporary name first: a half-written folder never looks complete.
    for name, text in (
        ("corpus.jsonl", _jsonl(documents)),
        ("queries.jsonl", _jsonl(queries)),
        ("qrels.tsv", "\n".join(["query-id\tcorpus-id\tscore", *qrels]) + "\n"),
    ):
        partial = folder / f".{name}.partial"
        partial.write_text(text, encoding="utf-8")
        partial.replace(folder / name)
    return BeirExport(folder, len(documents), len(queries), len(qrels))
