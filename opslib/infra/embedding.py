"""The in-process embedding endpoint.

Loads model versions from Model Artifact Files; a version is *ready* once it is loaded and a
smoke encode passed. ``embed`` checks its purpose against the Metadata DB: search may only use
the active model, ingest the active (or, while reindexing, the candidate) model; reindex and
evaluation may use any registered version.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from opslib.db.models import ModelRelease, ModelVersion, ReleaseStatus, utcnow
from opslib.errors import OpsError, Refused
from opslib.infra.logs import get_logger
from opslib.infra.model_artifacts import (
    ModelStores,
    local_model_dir,
    validate_model_version,
)
from opslib.infra.offline import use_offline_environment
from opslib.infra.precision import PRECISIONS, Precision, resolve_device, torch_dtype

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


log = get_logger(__name__)
SMOKE_TEXTS = ["readiness check", "검색 준비 확인"]


class Purpose(enum.StrEnum):
    SEARCH = "search"
    INGEST = "ingest"
    REINDEX = "reindex"
    EVALUATION = "evaluation"
    TRAINING = "training"


class EmbeddingError(OpsError):
    pass


class EmbeddingRefused(EmbeddingError, Refused):
    """The model version may not be used for this purpose (per the Metadata DB)."""


@dataclass(frozen=True)
class LoadedModel:
    model_version: str
    path: Path
    dimension: int
    loaded_at: datetime
    ready: bool
    device: str = "cpu"
    precision: Precision = "fp32"


# Weights are shared by every endpoint in the process, keyed by the verified local folder, the
# device and the precision they were loaded at.
_weights: dict[tuple[Path, str, Precision], SentenceTransformer] = {}
_weights_lock = threading.Lock()


def load_sentence_transformer(path: Path, device: str = "cpu", precision: Precision = "fp32") -> SentenceTransformer:
    key = (path, device, precision)
    with _weights_lock:
        if key not in _weights:
            use_offline_environment()
            from sentence_transformers import SentenceTransformer  # deferred: loads torch (seconds)

            _weights[key] = SentenceTransformer(
                str(path), device=device, model_kwargs={"torch_dtype": torch_dtype(precision)}
            )
        return _weights[key]


class EmbeddingEndpoint:
    def __init__(self, ws: ModelStores) -> None:
        self.ws = ws
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._device: str | None = None

    @property
    def device(self) -> str:
        """The device this process runs models on (``OPS_DEVICE``, resolved once)."""
        if self._device is None:
            self._device = resolve_device(self.ws.settings.device)
        return self._device

    # Loading and readiness ------------------------------------------------------------------
    def load(self, model_version: str) -> LoadedModel:
        """Load ``model_version`` and run the smoke encode; returns its readiness record."""
        validate_model_version(model_version)
        with self._lock:
            if model_version in self._loaded:
                return self._loaded[model_version]
        with self.ws.db.read() as session:
            row = session.get(ModelVersion, model_version)
            if row is None:
                raise EmbeddingError(f"model_version {model_version!r}: not registered")
            precision = row.encode_precision
        if precision not in PRECISIONS:
            raise EmbeddingError(f"model_version {model_version!r}: unknown encode_precision {precision!r}")
        path = local_model_dir(self.ws, model_version)
        model = load_sentence_transformer(path, self.device, precision)
        vectors = model.encode(SMOKE_TEXTS, convert_to_numpy=True, normalize_embeddings=True)
        if vectors.ndim != 2 or vectors.shape[0] != len(SMOKE_TEXTS) or not np.isfinite(vectors).all():
            raise EmbeddingError(f"model_version {model_version!r}: smoke encode failed")
        record = LoadedModel(model_version, path, int(vectors.shape[1]), utcnow(), True, self.device, precision)
        with self._lock:
            self._loaded[model_version] = record
        log.info(
            "model loaded",
            extra={
                "model_version": model_version,
                "dimension": record.dimension,
                "device": record.device,
                "encode_precision": precision,
            },
        )
        return record

    def precision(self, model_version: str) -> Precision:
        """The precision ``model_version`` encodes at (recorded when it was registered)."""
        return self.load(model_version).precision

    def is_ready(self, model_version: str) -> bool:
        record = self._loaded.get(model_version)
        return bool(record and record.ready)

    def status(self) -> list[LoadedModel]:
        return sorted(self._loaded.values(), key=lambda r: r.loaded_at)

    def unload(self, model_version: str) -> None:
        with self._lock:
            self._loaded.pop(model_version, None)

    def model(self, model_version: str) -> SentenceTransformer:
        record = self.load(model_version)
        return load_sentence_transformer(record.path, record.device, record.precision)

    # Encoding -------------------------------------------------------------------------------
    def embed(
        self,
        texts: list[str],
        model_version: str,
        purpose: Purpose | str,
        *,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> np.ndarray:
        """L2-normalised float32 embeddings, one row per text."""
        try:
            purpose = Purpose(purpose)
        except ValueError:
            raise EmbeddingError(f"purpose {purpose!r}: must be one of {[p.value for p in Purpose]}") from None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise EmbeddingError("texts: must be a list of strings")
        self._check_purpose(model_version, purpose)
        record = self.load(model_version)
        if not texts:
            return np.zeros((0, record.dimension), dtype=np.float32)
        # At the version's recorded precision, always: its indexes were built at it.
        vectors = load_sentence_transformer(record.path, record.device, record.precision).encode(
            texts,
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
        )
        vectors = np.asarray(vectors, dtype=np.float32)
        if record.precision != "fp32":
            # The model's own Normalize ran in half precision (norms off by ~1e-3): renormalise in
            # fp32 so cosine = dot product holds for every caller.
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return vectors

    def _check_purpose(self, model_version: str, purpose: Purpose) -> None:
        if purpose not in (Purpose.SEARCH, Purpose.INGEST):
            return
        with self.ws.db.read() as session:
            release = session.query(ModelRelease).filter_by(serving_key="default").one_or_none()
        if release is None:
            raise EmbeddingRefused("no ModelRelease yet: bootstrap the workspace (`opsbench init`)")
        allowed = {release.active_model_version}
        if purpose is Purpose.INGEST and release.release_status is ReleaseStatus.CANDIDATE_REINDEXING:
            allowed.add(release.candidate_model_version or "")
        if model_version not in allowed:
            raise EmbeddingRefused(
                f"model_version {model_version!r}: not allowed for {purpose.value}; "
                f"the Metadata DB allows {sorted(allowed)}"
            )
