"""The handle every stage works through: settings plus lazily opened stores."""

from __future__ import annotations

from functools import cached_property

from opslib.db.engine import Database, database_for
from opslib.infra.embedding import EmbeddingEndpoint
from opslib.infra.storage import ObjectStore
from opslib.infra.vector_store import VectorStore
from opslib.settings import Settings


class Workspace:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"Workspace({self.settings.workspace})"

    @cached_property
    def db(self) -> Database:
        if self.settings.db_url is None:
            self.settings.workspace.mkdir(parents=True, exist_ok=True)
        return database_for(self.settings.resolved_db_url)

    @cached_property
    def objects(self) -> ObjectStore:
        """Object Storage: raw feedback logs, datasets, evaluation sets and details, snapshots."""
        return ObjectStore(self.settings.resolved_object_store_url)

    @cached_property
    def models(self) -> ObjectStore:
        """Model Artifact Files: ``<model_version>/`` folders with ``model_manifest.json``."""
        return ObjectStore(self.settings.resolved_model_store_url)

    @cached_property
    def vectors(self) -> VectorStore:
        return VectorStore.for_settings(self.settings)

    @cached_property
    def embeddings(self) -> EmbeddingEndpoint:
        return EmbeddingEndpoint(self)


def open_workspace(settings: Settings | None = None) -> Workspace:
    return Workspace(settings or Settings())
