"""Chroma access: one collection per model version (the Vector Store row of docs/architecture.md's stores table).

A local ``PersistentClient`` by default, a Chroma server (``HttpClient``) when ``chroma_host`` is
set. Embeddings are always passed in (``embedding_function=None``): Chroma never embeds, so it
never tries to download a model. This module only moves vectors; which chunk is in which index
is recorded in the Metadata DB by ``opslib.corpus.indexing``.

When Chroma's own files are damaged (its SQLite file or a segment cannot be read), every use
raises ``VectorStoreDamaged`` — one paragraph saying what happened and what to do (restore, or
rebuild the active index from the Metadata DB with ``opsbench reindex-active``), never Chroma's
chain of tracebacks. ``collection_counts`` is what the store itself holds, for ``opsbench status``
to compare with the ``VectorIndexEntry`` rows.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from opslib.errors import IntegrityFailure, OpsError
from opslib.settings import Settings

if TYPE_CHECKING:  # chromadb takes seconds to import: only stages that move vectors pay for it
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

_INDEX_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,61}[a-zA-Z0-9]$")
_clients: dict[str, ClientAPI] = {}
_clients_lock = threading.Lock()


class VectorStoreError(OpsError):
    pass


class VectorStoreDamaged(VectorStoreError, IntegrityFailure):
    """Chroma cannot read its own files (the message says what to do)."""


# What SQLite (in Chroma's embedded store or its server) and Chroma's segment readers say when
# their files are damaged: SQLITE_CORRUPT (11), SQLITE_NOTADB (26), unreadable HNSW segments.
_DAMAGE_SIGNS = (
    "file is not a database",
    "database disk image is malformed",
    "(code: 11)",
    "(code: 26)",
    "error loading hnsw",
    "hnsw segment reader",
    "error reading from metadata segment",
)


def damage_cause(error: BaseException) -> str | None:
    """The first line of the error (or of one in its chain) that says Chroma's files are damaged."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if any(sign in text.lower() for sign in _DAMAGE_SIGNS):
            return text.strip().splitlines()[0][:300] if text.strip() else type(current).__name__
        current = current.__cause__ or current.__context__
    return None


def forget_local_clients() -> None:
    """Close this process's embedded (PersistentClient) Chroma clients.

    A PersistentClient keeps index state in memory; after another process (a stage's notebook
    kernel) wrote to the same folder, that state is stale. The next use opens a fresh client
    that reads what is on disk. (With a Chroma server, every process talks to the same server
    and nothing needs forgetting.)"""
    if all(k.startswith("http") for k in _clients):
        return  # nothing opened here (and no need to import chromadb to say so)
    with _clients_lock:
        for key in [k for k in _clients if not k.startswith("http")]:
            _forget_system(key, _clients.pop(key))


def _forget_system(path: str, client: ClientAPI | None = None) -> None:
    """Stop and forget chromadb's shared system for an embedded store's folder (also one whose
    start failed half-way: it must not be reused by the next client)."""
    from chromadb.api.shared_system_client import SharedSystemClient  # deferred: chromadb takes seconds

    system = SharedSystemClient._identifier_to_system.pop(path, None)
    SharedSystemClient._identifier_to_refcount.pop(path, None)
    with contextlib.suppress(Exception):  # already stopped or never started: nothing to release
        if system is not None:
            system.stop()
        elif client is not None:
            client._system.stop()  # type: ignore[attr-defined]


def index_name_for(model_version: str) -> str:
    """The collection that holds ``model_version``'s vectors."""
    name = f"idx-{model_version}"
    validate_index_name(name)
    return name


def validate_index_name(name: str) -> str:
    if not _INDEX_NAME.match(name) or ".." in name or re.match(r"^\d+\.\d+\.\d+\.\d+$", name):
        raise VectorStoreError(
            f"index_name {name!r}: Chroma needs 3-63 characters of letters, digits, '.', '_', '-', "
            "alphanumeric at both ends, no '..'"
        )
    return name


@dataclass(frozen=True)
class VectorHit:
    chunk_id: str
    distance: float


class VectorStore:
    """Vectors by index name. The Chroma client is looked up on every use (see
    ``forget_local_clients``), so a store never works from a stale client."""

    def __init__(self, key: str, factory: Callable[[], ClientAPI]) -> None:
        self.location = key
        self._factory = factory

    @property
    def embedded(self) -> bool:
        """A local folder (PersistentClient), not a Chroma server."""
        return not self.location.startswith("http")

    @property
    def client(self) -> ClientAPI:
        # Chroma allows one PersistentClient per path per process: share it.
        with _clients_lock:
            if self.location not in _clients:
                try:
                    _clients[self.location] = self._factory()
                except Exception as error:
                    if self.embedded:
                        _forget_system(self.location)  # a half-started system must not be reused
                    cause = damage_cause(error)
                    if cause is None:
                        raise
                    raise self.damaged(cause) from error
            return _clients[self.location]

    def damaged(self, cause: str) -> VectorStoreDamaged:
        """The one-paragraph error for damaged store files: what happened and what to do."""
        rebuild = (
            '`opsbench reindex-active --reason "…" --confirm <the active index>` rebuilds the active index '
            "from the Metadata DB, the source of truth (every READY chunk re-embedded with the active model)"
        )
        if self.embedded:
            return VectorStoreDamaged(
                f"The vector store at {self.location} is damaged: Chroma cannot read its files ({cause}). Search "
                "and indexing fail until it is repaired. Either stop the workers, stages and endpoints and restore "
                f"the folder from a backup, or rebuild: {rebuild} — it first moves the damaged folder aside to "
                f"{self.location}.damaged-<time> (nothing is deleted). Other indexes in the folder (a rollback "
                "target) are restored from their snapshot files when needed."
            )
        return VectorStoreDamaged(
            f"The Chroma server at {self.location} reports damaged files ({cause}). Search and indexing fail "
            "until it is repaired. Either restore the server's data folder from a backup, or restart the "
            f"server on an empty folder and rebuild: {rebuild}."
        )

    @contextlib.contextmanager
    def _damage_checked(self) -> Iterator[None]:
        """Chroma errors that say its files are damaged become ``VectorStoreDamaged``."""
        try:
            yield
        except VectorStoreError:
            raise
        except Exception as error:
            cause = damage_cause(error)
            if cause is None:
                raise
            raise self.damaged(cause) from error

    def collection_counts(self) -> dict[str, int]:
        """Every collection the store holds and its vector count, as the store itself reports them."""
        with self._damage_checked():
            return {c.name: int(c.count()) for c in self.client.list_collections()}

    def set_aside(self) -> Path:
        """Move an embedded store's folder aside (to ``<folder>.damaged-<UTC time>``; nothing is
        deleted) so the next use starts an empty store; returns where it went. A Chroma server's
        files are the server's: refused."""
        if not self.embedded:
            raise VectorStoreError(
                f"the Chroma server at {self.location} keeps its own files: restore them or restart it on an "
                "empty folder (this process cannot move them)"
            )
        with _clients_lock:
            client = _clients.pop(self.location, None)
            _forget_system(self.location, client)
            folder = Path(self.location)
            target = folder.with_name(f"{folder.name}.damaged-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
            if folder.exists():
                os.rename(folder, target)
            folder.mkdir(parents=True, exist_ok=True)
        return target

    @classmethod
    def for_settings(cls, settings: Settings) -> VectorStore:
        import chromadb  # deferred: chromadb takes seconds to import
        from chromadb.config import Settings as ChromaSettings

        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        if settings.chroma_host:
            host, port = settings.chroma_host, settings.chroma_port
            return cls(
                f"http://{host}:{port}", lambda: chromadb.HttpClient(host=host, port=port, settings=chroma_settings)
            )
        path: Path = settings.resolved_chroma_path
        path.mkdir(parents=True, exist_ok=True)
        return cls(str(path), lambda: chromadb.PersistentClient(path=str(path), settings=chroma_settings))

    def collection(self, index_name: str) -> Collection:
        validate_index_name(index_name)
        with self._damage_checked():
            return self.client.get_or_create_collection(
                index_name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
            )

    def exists(self, index_name: str) -> bool:
        with self._damage_checked():
            return index_name in {c.name for c in self.client.list_collections()}

    def names(self) -> list[str]:
        with self._damage_checked():
            return sorted(c.name for c in self.client.list_collections())

    def drop(self, index_name: str) -> None:
        if self.exists(index_name):
            with self._damage_checked():
                self.client.delete_collection(index_name)

    def count(self, index_name: str) -> int:
        if not self.exists(index_name):
            return 0
        with self._damage_checked():
            return self.collection(index_name).count()

    def upsert(
        self,
        index_name: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
    ) -> None:
        if len(ids) != len(embeddings) or len(ids) != len(metadatas):
            raise VectorStoreError(
                f"upsert into {index_name}: {len(ids)} ids, {len(embeddings)} embeddings and "
                f"{len(metadatas)} metadatas must be the same length"
            )
        if not len(ids):
            return
        with self._damage_checked():
            self.collection(index_name).upsert(
                ids=list(ids), embeddings=np.asarray(embeddings, dtype=np.float32), metadatas=list(metadatas)
            )

    def delete(self, index_name: str, ids: Sequence[str]) -> None:
        if ids and self.exists(index_name):
            with self._damage_checked():
                self.collection(index_name).delete(ids=list(ids))

    def get_embeddings(self, index_name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids or not self.exists(index_name):
            return {}
        with self._damage_checked():
            got = self.collection(index_name).get(ids=list(ids), include=["embeddings"])
        embeddings = got["embeddings"]
        assert embeddings is not None  # included above; Chroma types every included field optional
        return {i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], embeddings, strict=True)}

    def _existing(self, index_name: str) -> Collection:
        """The collection, without creating it: one lookup (a query's hot path)."""
        validate_index_name(index_name)
        try:
            with self._damage_checked():
                return self.client.get_collection(index_name, embedding_function=None)
        except VectorStoreError:
            raise
        except Exception as error:  # chromadb raises NotFoundError (a ValueError in older releases)
            if self.exists(index_name):
                raise
            raise VectorStoreError(f"index {index_name!r}: no such collection in {self.location}") from error

    def query(
        self, index_name: str, embedding: np.ndarray, n_results: int, where: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        if n_results < 1:
            raise VectorStoreError(f"n_results {n_results}: must be >= 1")
        collection = self._existing(index_name)
        with self._damage_checked():
            result = collection.query(
                query_embeddings=np.asarray(embedding, dtype=np.float32).reshape(1, -1),
                n_results=n_results,
                where=where,
                include=["distances"],
            )
        distances = result["distances"]
        assert distances is not None  # included above; Chroma types every included field optional
        return [VectorHit(i, float(d)) for i, d in zip(result["ids"][0], distances[0], strict=True)]

    def query_within(
        self, index_name: str, embedding: np.ndarray, n_results: int, key: str, value: str, overfetch: int = 4
    ) -> list[VectorHit]:
        """The ``n_results`` nearest vectors whose metadata ``key`` equals ``value``.

        Chroma's filtered query pays for building the allowed set on every call (≈ 21 ms at 10,000
        vectors against ≈ 2 ms unfiltered, on this machine), so the unfiltered nearest
        ``overfetch × n_results`` are asked first: if at least ``n_results`` of them match, they *are*
        the answer — any matching vector nearer than them would be among the nearest overall. Only
        when too few match (the value's share of the index is small) does the filtered query run.
        """
        if n_results < 1:
            raise VectorStoreError(f"n_results {n_results}: must be >= 1")
        collection = self._existing(index_name)
        query = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        with self._damage_checked():
            wide = collection.query(
                query_embeddings=query, n_results=n_results * overfetch, include=["distances", "metadatas"]
            )
        distances, metadatas = wide["distances"], wide["metadatas"]
        assert distances is not None and metadatas is not None  # included above
        matching = [
            VectorHit(i, float(d))
            for i, d, m in zip(wide["ids"][0], distances[0], metadatas[0], strict=True)
            if m is not None and m.get(key) == value
        ]
        if len(matching) >= n_results or len(wide["ids"][0]) < n_results * overfetch:
            return matching[:n_results]  # enough matched, or the whole index was returned
        return self.query(index_name, embedding, n_results, where={key: value})
