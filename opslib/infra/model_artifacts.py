"""Model Artifact Files: ``models/<model_version>/`` = a sentence-transformers folder plus
``model_manifest.json``. Written once; a version is never overwritten.

The manifest is written last and is the commit point: a folder without one is an unfinished
upload, which a retry completes (files already there with the right hash are kept).

Every read is verified: the manifest against its recorded sha256 and the one the version's
``ModelVersion`` row records, each file against the manifest's hash — a changed or missing one
raises ``ChecksumMismatch`` / ``ObjectMissing`` (``opslib.errors.IntegrityFailure``) naming its key.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, Required, TypedDict, Unpack

from sqlalchemy import select

from opslib.db.engine import Database
from opslib.db.models import ModelVersion, utcnow
from opslib.errors import NotFound, OpsError
from opslib.infra.precision import PrecisionChoice, choose_precision, resolve_device
from opslib.infra.storage import (
    ChecksumMismatch,
    ObjectExistsError,
    ObjectMissing,
    ObjectStore,
    StorageError,
    sha256_file,
)
from opslib.settings import Settings

MANIFEST = "model_manifest.json"
_VERSION = re.compile(r"^[a-z0-9](?:[a-z0-9_-]|\.(?!\.)){1,54}[a-z0-9]$")


class ModelStores(Protocol):
    """What model artifacts need of a workspace (``opslib.infra.workspace.Workspace`` is one):
    the Metadata DB, the model store and the settings naming the local cache. A protocol, so
    this module sits below the workspace that composes it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def models(self) -> ObjectStore: ...


class ModelArtifactError(OpsError):
    pass


class ModelNotRegistered(ModelArtifactError, NotFound):
    """No ModelVersion row for that version."""


def validate_model_version(model_version: str) -> str:
    """3–56 chars of ``a-z0-9._-``, alphanumeric at both ends: it also names the Chroma index."""
    if not isinstance(model_version, str) or not _VERSION.match(model_version):
        raise ModelArtifactError(
            f"model_version {model_version!r}: must be 3-56 characters of a-z, 0-9, '.', '_', '-', "
            "starting and ending with a letter or digit, without '..'"
        )
    return model_version


@dataclass(frozen=True)
class ModelManifest:
    model_version: str
    base_model_version: str | None
    dataset_version: str | None
    run_id: int | None
    training_parameters: dict[str, Any]
    files: dict[str, str]  # relative path -> sha256
    created_at: str
    # Manifests from before precisions were recorded encode in fp32 (the only precision then).
    encode_precision: str = "fp32"
    precision_choice: dict[str, Any] = field(default_factory=dict)  # why, and the start-up check's result
    # Recorded for a delivered model (``opsbench propose-model``): what its validation measured, and
    # where it came from, who delivered it and why (also on its ModelVersion row). Older manifests
    # and fine-tunes have none.
    embedding_dimension: int | None = None
    max_seq_length: int | None = None
    delivery: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, sort_keys=True)


@dataclass(frozen=True)
class Provenance:
    """Where a delivered model came from, who delivered it and why."""

    source: str
    delivered_by: str
    reason: str


def publish_model(
    ws: ModelStores,
    model_version: str,
    source_dir: Path,
    *,
    base_model_version: str | None,
    dataset_version: str | None = None,
    run_id: int | None = None,
    training_parameters: dict[str, Any] | None = None,
    precision: PrecisionChoice | None = None,
    provenance: Provenance | None = None,
    delivery: dict[str, Any] | None = None,
    embedding_dimension: int | None = None,
    max_seq_length: int | None = None,
) -> ModelVersion:
    """Publish ``source_dir`` as ``model_version`` in the model store (files, then the manifest;
    written once) and return the ``ModelVersion`` row that records it — not yet added to any
    session (``register_model`` adds it). No transaction is open while the files are copied, so a
    large model holds no lock on the Metadata DB. A version published before but not recorded (a
    crash between the two) is adopted only if it is exactly these files."""

    validate_model_version(model_version)
    source_dir = Path(source_dir)
    if not (source_dir / "modules.json").is_file():
        raise ModelArtifactError(f"source_dir {source_dir}: not a sentence-transformers folder (no modules.json)")
    with ws.db.read() as reading:
        if reading.get(ModelVersion, model_version) is not None:
            raise ModelArtifactError(f"model_version {model_version!r}: already registered")
    files = {
        path.relative_to(source_dir).as_posix(): sha256_file(path)
        for path in sorted(source_dir.rglob("*"))
        # VCS leftovers such as .gitattributes are not part of the model.
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(source_dir).parts)
    }
    manifest_key = f"{model_version}/{MANIFEST}"
    if ws.models.exists(manifest_key):
        # Published before but not recorded (a crash between the two): adopt it only if it is
        # exactly this model; anything else would overwrite a version.
        manifest = read_manifest(ws, model_version)
        if manifest.files != files or manifest.run_id != run_id:
            raise ModelArtifactError(
                f"model_version {model_version!r}: a different artifact is already published at "
                f"{ws.models.uri(manifest_key)}"
            )
        stored_sha = ws.models.recorded_sha256(manifest_key)
    else:
        if precision is None:
            precision = choose_precision(ws.settings.encode_precision, resolve_device(ws.settings.device), source_dir)
        for relative, digest in files.items():
            key = f"{model_version}/{relative}"
            try:
                ws.models.put_file(key, source_dir / relative)
            except ObjectExistsError:
                if ws.models.recorded_sha256(key) != digest:
                    raise ModelArtifactError(
                        f"model_version {model_version!r}: {relative} exists with other content"
                    ) from None
        manifest = ModelManifest(
            model_version=model_version,
            base_model_version=base_model_version,
            dataset_version=dataset_version,
            run_id=run_id,
            training_parameters=training_parameters or {},
            files=files,
            created_at=utcnow().isoformat(),
            encode_precision=precision.precision,
            precision_choice=precision.as_record(),
            embedding_dimension=embedding_dimension,
            max_seq_length=max_seq_length,
            delivery={**(delivery or {}), **(provenance.__dict__ if provenance else {})},
        )
        stored_sha = ws.models.put_text(manifest_key, manifest.to_json()).sha256
    row = ModelVersion(
        model_version=model_version,
        artifact_path=ws.models.uri(model_version),
        base_model_version=base_model_version,
        run_id=run_id,
        sha256=stored_sha,
        encode_precision=manifest.encode_precision,
        source=provenance.source[:1024] if provenance else None,
        delivered_by=provenance.delivered_by[:128] if provenance else None,
        delivery_reason=provenance.reason if provenance else None,
        created_at=datetime.fromisoformat(manifest.created_at),
    )
    return row


class PublishFields(TypedDict, total=False):
    """``publish_model``'s keyword arguments (``register_model`` passes them through)."""

    base_model_version: Required[str | None]
    dataset_version: str | None
    run_id: int | None
    training_parameters: dict[str, Any] | None
    precision: PrecisionChoice | None
    provenance: Provenance | None
    delivery: dict[str, Any] | None
    embedding_dimension: int | None
    max_seq_length: int | None


def register_model(
    ws: ModelStores, model_version: str, source_dir: Path, **fields: Unpack[PublishFields]
) -> ModelVersion:
    """Publish ``source_dir`` as ``model_version`` (``publish_model``) and record it in the
    Metadata DB, with the precision it will encode at (default: chosen for this machine by the
    settings). A caller that records the row with another effect publishes first and adds the
    row in its own transaction (``opsbench propose-model``)."""
    row = publish_model(ws, model_version, source_dir, **fields)
    with ws.db.transaction() as session:
        session.add(row)
    return row


def read_manifest(ws: ModelStores, model_version: str) -> ModelManifest:
    """The version's manifest, verified against its recorded sha256 and — once the version is
    registered — the sha256 its ``ModelVersion`` row records."""
    validate_model_version(model_version)
    with ws.db.read() as session:
        expected = session.scalar(select(ModelVersion.sha256).where(ModelVersion.model_version == model_version))
    data = ws.models.read_verified(f"{model_version}/{MANIFEST}", expected, recorded_by="its ModelVersion row")
    return ModelManifest(**json.loads(data))


def local_model_dir(ws: ModelStores, model_version: str) -> Path:
    """A local folder holding the model, verified against its manifest.

    Local model stores are read in place; remote ones are copied into the model cache once (each
    file verified as it is copied). Either way every file is checked against the manifest's hash
    on every call: a changed or missing file raises ``IntegrityFailure`` naming its key."""
    manifest = read_manifest(ws, model_version)
    try:
        directory = ws.models.local_path(model_version)
        where = ws.models.url
    except StorageError:
        directory = ws.settings.resolved_model_cache_dir / model_version
        where = f"the model cache {ws.settings.resolved_model_cache_dir}"
        if not (directory / MANIFEST).is_file():
            staging = directory.with_name(directory.name + ".partial")
            shutil.rmtree(staging, ignore_errors=True)
            for relative, digest in manifest.files.items():
                target = staging / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(
                    ws.models.read_verified(f"{model_version}/{relative}", digest, recorded_by="the model manifest")
                )
            (staging / MANIFEST).write_text(manifest.to_json())
            shutil.rmtree(directory, ignore_errors=True)
            staging.rename(directory)
    for relative, digest in manifest.files.items():
        key = f"{model_version}/{relative}"
        path = directory / relative
        if not path.is_file():
            raise ObjectMissing(f"key {key!r}: gone from {where} (the model manifest lists it)", key=key)
        actual = sha256_file(path)
        if actual != digest:
            raise ChecksumMismatch(
                f"key {key!r}: content does not match the sha256 the model manifest records in {where} "
                f"({digest[:12]}…, read {actual[:12]}…): model_version {model_version!r} is damaged",
                key=key,
            )
    return directory


def registered_versions(ws: ModelStores) -> list[ModelVersion]:
    with ws.db.read() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)))
