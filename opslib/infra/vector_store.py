"""Chroma access: one collection per model version (the Vector Store row of docs/architecture.md's stores table).

A local ``PersistentClient`` by default, a Chroma server (``HttpClient``) when ``chroma_host`` is
set. Embeddings are always passed in (``embedding_function=None``): Chroma never embeds, so it
never tries to download a model. This module only moves vectors; which chunk is in which index
is recorded in the Metadata DB by ``opslib.corpus.indexing``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from opslib.errors import OpsError
from opslib.settings import Settings

if TYPE_CHECKING:  # chromadb takes seconds to import: only stages that move vectors pay for it
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

_INDEX_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,61}[a-zA-Z0-9]$")
_clients: dict[str, ClientAPI] = {}
_clients_lock = threading.Lock()


class VectorStoreError(OpsError):
    pass


def forget_local_clients() -> None:
    """Close this process's embedded (PersistentClient) Chroma clients.

    A PersistentClient keeps index state in memory; after another process (a stage's notebook
    kernel) wrote to the same folder, that state is stale. The next use opens a fresh client
    that reads what is on disk. (With a Chroma server, every process talks to the same server
    and nothing needs forgetting.)"""
    if all(k.startswith("http") for k in _clients):
        return  # nothing opened here (and no need to import chromadb to say so)
    from chromadb.api.shared_system_client import SharedSystemClient  # deferred: chromadb takes seconds

    with _clients_lock:
        for key in [k for k in _clients if not k.startswith("http")]:
            client = _clients.pop(key)
            system = SharedSystemClient._identifier_to_system.pop(key, None)
            SharedSystemClient._identifier_to_refcount.pop(key, None)
            with contextlib.suppress(Exception):  # already stopped or never started: nothing to release
                (system or client._system).stop()  # type: ignore[attr-defined]


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
    def client(self) -> ClientAPI:
        # Chroma allows one PersistentClient per path per process: share it.
        with _clients_lock:
            if self.location not in _clients:
                _clients[self.location] = self._factory()
            return _clients[self.location]

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
        return self.client.get_or_create_collection(
            index_name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
        )

    def exists(self, index_name: str) -> bool:
        return index_name in {c.name for c in self.client.list_collections()}

    def names(self) -> list[str]:
        return sorted(c.name for c in self.client.list_collections())

    def drop(self, index_name: str) -> None:
        if self.exists(index_name):
            self.client.delete_collection(index_name)

    def count(self, index_name: str) -> int:
        return self.collection(index_name).count() if self.exists(index_name) else 0

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
        self.collection(index_name).upsert(
            ids=list(ids), embeddings=np.asarray(embeddings, dtype=np.float32), metadatas=list(metadatas)
        )

    def delete(self, index_name: str, ids: Sequence[str]) -> None:
        if ids and self.exists(index_name):
            self.collection(index_name).delete(ids=list(ids))

    def get_embeddings(self, index_name: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        if not ids or not self.exists(index_name):
            return {}
        got = self.collection(index_name).get(ids=list(ids), include=["embeddings"])
        embeddings = got["embeddings"]
        assert embeddings is not None  # included above; Chroma types every included field optional
        return {i: np.asarray(e, dtype=np.float32) for i, e in zip(got["ids"], embeddings, strict=True)}

    def _existing(self, index_name: str) -> Collection:
        """The collection, without creating it: one lookup (a query's hot path)."""
        validate_index_name(index_name)
        try:
            return self.client.get_collection(index_name, embedding_function=None)
        except Exception as error:  # chromadb raises NotFoundError (a ValueError in older releases)
            if self.exists(index_name):
                raise
            raise VectorStoreError(f"index {index_name!r}: no such collection in {self.location}") from error

    def query(
        self, index_name: str, embedding: np.ndarray, n_results: int, where: dict[str, Any] | None = None
    ) -> list[VectorHit]:
        if n_results < 1:
            raise VectorStoreError(f"n_results {n_results}: must be >= 1")
        result = self._existing(index_name).query(
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
