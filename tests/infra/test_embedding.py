import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from opslib.db.models import ModelRelease, ModelVersion, ReleaseEvent, ReleaseStatus
from opslib.errors import IntegrityFailure
from opslib.infra.embedding import EmbeddingError, EmbeddingRefused, Purpose
from opslib.infra.model_artifacts import (
    MANIFEST,
    ModelArtifactError,
    local_model_dir,
    read_manifest,
    register_model,
    validate_model_version,
)
from opslib.infra.storage import sha256_file
from opslib.infra.workspace import Workspace
from opslib.settings import Settings


def test_bootstrap_registers_base_model_and_opens_release_stable(ws: Workspace, tiny_model_dir: Path) -> None:
    manifest = read_manifest(ws, "tiny-base")
    assert manifest.base_model_version is None and manifest.run_id is None
    assert manifest.files["model.safetensors"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert ws.models.exists(f"tiny-base/{MANIFEST}")
    with ws.db.read() as session:
        release = session.query(ModelRelease).one()
        assert release.release_status is ReleaseStatus.STABLE
        assert (release.active_model_version, release.active_index_name) == ("tiny-base", "idx-tiny-base")
        assert release.previous_model_version is None and release.candidate_model_version is None
        event = session.query(ReleaseEvent).one()
        assert event.kind == "BOOTSTRAP" and event.after["active_model_version"] == "tiny-base"
        assert session.get(ModelVersion, "tiny-base").sha256 == ws.models.recorded_sha256(f"tiny-base/{MANIFEST}")
    assert ws.vectors.exists("idx-tiny-base")


def test_bootstrap_again_changes_nothing(ws: Workspace) -> None:
    from opslib.ops.bootstrap import init_workspace

    report = init_workspace(ws)
    assert not report.created
    with ws.db.read() as session:
        assert session.query(ReleaseEvent).count() == 1
        assert session.query(ModelRelease).one().row_version == 1


def test_readiness_is_loaded_plus_smoke_encode(ws: Workspace) -> None:
    ws.embeddings.unload("tiny-base")
    assert not ws.embeddings.is_ready("tiny-base")
    record = ws.embeddings.load("tiny-base")
    assert record.ready and record.dimension == 32 and ws.embeddings.is_ready("tiny-base")
    assert [m.model_version for m in ws.embeddings.status()] == ["tiny-base"]


def test_embed_returns_normalised_rows(ws: Workspace) -> None:
    vectors = ws.embeddings.embed(["hello world", "검색 엔진"], "tiny-base", Purpose.SEARCH)
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert ws.embeddings.embed([], "tiny-base", Purpose.SEARCH).shape == (0, 32)


def test_search_may_only_use_the_active_model(ws: Workspace, tiny_model_dir: Path) -> None:
    register_model(ws, "tiny-cand", tiny_model_dir, base_model_version="tiny-base")
    with pytest.raises(EmbeddingRefused, match="not allowed for search"):
        ws.embeddings.embed(["q"], "tiny-cand", Purpose.SEARCH)
    with pytest.raises(EmbeddingRefused, match="not allowed for ingest"):
        ws.embeddings.embed(["q"], "tiny-cand", Purpose.INGEST)
    # Reindex and evaluation may use a candidate.
    assert ws.embeddings.embed(["q"], "tiny-cand", Purpose.EVALUATION).shape == (1, 32)
    assert ws.embeddings.embed(["q"], "tiny-cand", Purpose.REINDEX).shape == (1, 32)
    # While the release is reindexing that candidate, ingest may write with it (dual-write).
    with ws.db.transaction() as session:
        release = session.query(ModelRelease).one()
        release.release_status = ReleaseStatus.CANDIDATE_REINDEXING
        release.candidate_model_version = "tiny-cand"
    assert ws.embeddings.embed(["q"], "tiny-cand", Purpose.INGEST).shape == (1, 32)
    with pytest.raises(EmbeddingRefused):
        ws.embeddings.embed(["q"], "tiny-cand", Purpose.SEARCH)


def test_embed_bad_input(ws: Workspace) -> None:
    with pytest.raises(EmbeddingError, match="not registered"):
        ws.embeddings.embed(["q"], "ghost-model", Purpose.EVALUATION)
    with pytest.raises(EmbeddingError, match="list of strings"):
        ws.embeddings.embed("not a list", "tiny-base", Purpose.SEARCH)  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match="purpose 'gossip': must be one of"):
        ws.embeddings.embed(["q"], "tiny-base", "gossip")
    with pytest.raises(ModelArtifactError, match="model_version"):
        ws.embeddings.load("Bad Name!")


@pytest.mark.parametrize("name", ["ab", "-abc", "abc-", "a..b", "UPPER", "x" * 57, "with space"])
def test_model_version_names_are_checked(name: str) -> None:
    with pytest.raises(ModelArtifactError, match="model_version"):
        validate_model_version(name)


def test_a_version_is_never_overwritten(ws: Workspace, tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelArtifactError, match="already registered"):
        register_model(ws, "tiny-base", tiny_model_dir, base_model_version=None)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ModelArtifactError, match=r"modules\.json"):
        register_model(ws, "tiny-x", not_a_model, base_model_version=None)
    with ws.db.read() as session:
        assert session.get(ModelVersion, "tiny-x") is None


def test_interrupted_registration_is_adopted_only_if_identical(
    ws: Workspace, tiny_model_dir: Path, tmp_path: Path
) -> None:
    register_model(ws, "tiny-two", tiny_model_dir, base_model_version="tiny-base", run_id=None)
    with ws.db.transaction() as session:  # as if the process died after publishing, before recording
        session.delete(session.get(ModelVersion, "tiny-two"))
    assert register_model(ws, "tiny-two", tiny_model_dir, base_model_version="tiny-base").model_version == "tiny-two"
    with ws.db.transaction() as session:
        session.delete(session.get(ModelVersion, "tiny-two"))
    changed = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed)
    (changed / "README.md").write_text("different")
    with pytest.raises(ModelArtifactError, match="different artifact"):
        register_model(ws, "tiny-two", changed, base_model_version="tiny-base")


def test_tampered_artifact_is_refused_at_load(ws: Workspace, tiny_model_dir: Path) -> None:
    register_model(ws, "tiny-tamper", tiny_model_dir, base_model_version="tiny-base")
    path = ws.models.local_path("tiny-tamper/config.json")
    path.write_text(json.dumps({"evil": True}))
    with pytest.raises(IntegrityFailure, match=r"key 'tiny-tamper/config\.json'"):
        local_model_dir(ws, "tiny-tamper")


def test_remote_model_store_is_copied_to_the_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    import uuid

    from opslib.ops.bootstrap import init_workspace

    settings = Settings(
        workspace=tmp_path / "w",
        runs_dir=tmp_path / "r",
        base_model_path=tiny_model_dir,
        base_model_version="tiny-base",
        model_store_url=f"memory://models-{uuid.uuid4().hex}",
        object_store_url=f"memory://objects-{uuid.uuid4().hex}",
    )
    remote = Workspace(settings)
    init_workspace(remote)
    directory = local_model_dir(remote, "tiny-base")
    assert directory == settings.resolved_model_cache_dir / "tiny-base"
    assert (directory / "modules.json").is_file()
    assert remote.embeddings.embed(["x"], "tiny-base", Purpose.SEARCH).shape == (1, 32)


@pytest.mark.slow
def test_real_packaged_model_bootstraps_and_embeds_meaningfully(tmp_path: Path) -> None:
    from opslib.ops.bootstrap import init_workspace

    real = Workspace(Settings(workspace=tmp_path / "w", runs_dir=tmp_path / "r", log_level="WARNING"))
    report = init_workspace(real)
    assert report.created and report.model_version == "all-minilm-l6-v2-base"
    vectors = real.embeddings.embed(
        [
            "How do I sort a list in Python?",
            "Sorting a Python list: use sorted() or list.sort().",
            "The weather in Seoul is cold in December.",
        ],
        report.model_version,
        Purpose.SEARCH,
    )
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.2
