"""What operators see of verified reads: real vector counts in `opsbench status` and the dashboard,
one paragraph (never a traceback) for a damaged Metadata DB or Chroma file, unusable datasets, and
`opsbench reindex-active` bringing search back from the Metadata DB."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import dataset_row, mini_corpus_spec
from sqlalchemy import make_url, select
from sqlalchemy.exc import DatabaseError

from opslib.control.datasets import mark_dataset_unusable
from opslib.corpus.loader import load_corpus
from opslib.corpus.search import search
from opslib.db.engine import forget_database
from opslib.db.models import AuditLog, Chunk, VectorIndexEntry, Video
from opslib.infra.embedding import Purpose
from opslib.infra.vector_store import VectorStoreDamaged, VectorStoreError, forget_local_clients
from opslib.infra.workspace import Workspace
from opslib.ops import monitor
from opslib.ops.bootstrap import init_workspace
from opslib.ops.cli import main
from opslib.ops.dashboard import Dashboard, shown_html
from opslib.settings import Settings

INDEX = "idx-tiny-base"


def _corpus(ws: Workspace) -> int:
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    with ws.db.read() as session:
        return len(list(session.scalars(select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == INDEX))))


def _index(ws: Workspace, name: str = INDEX) -> dict:
    records, error = monitor.index_records(ws)
    assert error is None
    return next(r for r in records if r["index_name"] == name)


def _env(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The ws fixture's settings as the CLI reads them (OPS_*), here and for subprocesses."""
    settings = ws.settings
    env = {
        "OPS_WORKSPACE": str(settings.workspace),
        "OPS_RUNS_DIR": str(settings.runs_dir),
        "OPS_DB_URL": settings.resolved_db_url,
        "OPS_BASE_MODEL_PATH": str(settings.base_model_path),
        "OPS_BASE_MODEL_VERSION": settings.base_model_version,
        "OPS_LOG_LEVEL": "WARNING",
    }
    if settings.chroma_host:
        env.update(OPS_CHROMA_HOST=settings.chroma_host, OPS_CHROMA_PORT=str(settings.chroma_port))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _damage(path: Path) -> None:
    """What a torn write or a bad disk leaves: the file's first page overwritten."""
    data = bytearray(path.read_bytes())
    data[:100] = b"\x13" * 100
    path.write_bytes(bytes(data))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "opslib.ops.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    # Model loading prints progress bars to stderr; what matters is everything else.
    done.stderr = "\n".join(line for line in done.stderr.splitlines() if "Loading weights" not in line)
    return done


def _one_paragraph(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and 'File "' not in text
    return lines[0]


def _hits(ws: Workspace) -> list[str]:
    vector = ws.embeddings.embed(["sorting lists"], "tiny-base", Purpose.SEARCH)[0]
    return [hit.chunk_id for hit in ws.vectors.query(INDEX, vector, 5)]


# Real counts -------------------------------------------------------------------------------------
def test_status_reads_each_index_count_from_the_store_and_flags_a_dropped_collection(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks = _corpus(ws)
    assert _index(ws) == {
        "index_name": INDEX,
        "role": "active",
        "entries": chunks,
        "vectors": chunks,
        "state": "ok",
        "detail": "",
    }
    with ws.db.read() as session:
        two = list(
            session.scalars(select(VectorIndexEntry.chunk_id).where(VectorIndexEntry.index_name == INDEX).limit(2))
        )
    ws.vectors.delete(INDEX, two)  # two vectors gone behind the SOT's back
    index = _index(ws)
    assert (index["state"], index["vectors"]) == ("MISMATCH", chunks - 2)
    assert "2 listed vectors are not there" in index["detail"]

    ws.vectors.drop(INDEX)  # the finding: the entries alone still said "48"
    index = _index(ws)
    assert (index["state"], index["entries"], index["vectors"]) == ("MISSING", chunks, None)
    assert "no collection in the vector store" in index["detail"] and "active index" in index["detail"]
    _env(ws, monkeypatch)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"  {INDEX} (active): {chunks} / —  MISSING: no collection in the vector store" in out
    assert main(["status", "--json"]) == 0
    import json

    status = json.loads(capsys.readouterr().out)
    assert [(i["index_name"], i["state"]) for i in status["indexes"]] == [(INDEX, "MISSING")]
    assert status["vector_store"]["error"] is None

    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    html = shown_html(dashboard.outputs["Release"])
    assert f"{INDEX}: MISSING — no collection in the vector store" in html and "ops-error" in html


@pytest.mark.sqlite_only(reason="a deleted Chroma folder is a file-system fault; the counts' DB side runs above")
def test_a_deleted_chroma_folder_is_flagged(ws: Workspace) -> None:
    chunks = _corpus(ws)
    forget_local_clients()
    shutil.rmtree(ws.settings.resolved_chroma_path)
    index = _index(ws)  # a fresh client: what is on disk, not what this process remembered
    assert (index["state"], index["entries"], index["vectors"]) == ("MISSING", chunks, None)


@pytest.mark.sqlite_only(reason="the store's side is what is tested; the DB side runs on both backends above")
def test_the_counts_come_from_a_chroma_server_too(
    tmp_path: Path, db_url: str, tiny_model_dir: Path, chroma_server: tuple[str, int]
) -> None:
    import uuid

    host, port = chroma_server
    version = f"tiny-{uuid.uuid4().hex[:8]}"  # collections on the shared server must not collide
    settings = Settings(
        workspace=tmp_path / "ws",
        runs_dir=tmp_path / "runs",
        db_url=db_url,
        base_model_path=tiny_model_dir,
        base_model_version=version,
        log_level="WARNING",
        chroma_host=host,
        chroma_port=port,
    )
    sws = Workspace(settings)
    init_workspace(sws)
    load_corpus(sws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    name = f"idx-{version}"
    index = _index(sws, name)
    assert index["state"] == "ok" and index["vectors"] == index["entries"] > 0
    sws.vectors.drop(name)
    index = _index(sws, name)
    assert (index["state"], index["vectors"]) == ("MISSING", None)


# Unusable datasets ---------------------------------------------------------------------------------
def test_unusable_datasets_are_shown_as_such(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    older = dataset_row(ws, "20261130-bbbbbbbbbbbb", hours_ago=24)
    newer = dataset_row(ws)
    reason = f"key 'datasets/{newer}/train.jsonl': gone from /objects"
    assert mark_dataset_unusable(ws.db, newer, reason)
    view = monitor.datasets_view(ws)
    assert view.newest_eligible == older and view.unusable == [f"{newer}: {reason}"]
    eligible = dict(zip(view.table["dataset_version"], view.table["eligible"], strict=True))
    assert eligible[newer].startswith("UNUSABLE since ") and reason in eligible[newer]
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    assert "UNUSABLE (never picked again" in shown_html(dashboard.outputs["Datasets"])
    assert older in shown_html(dashboard.training.preview)  # the next eligible one is what a request gets
    _env(ws, monkeypatch)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"datasets: latest eligible {older}" in out and f"  UNUSABLE {newer} (since " in out and reason in out


# Damaged files: one paragraph ------------------------------------------------------------------------
@pytest.mark.sqlite_only(reason="a damaged SQLite file; PostgreSQL's corruption codes are checked in the unit below")
def test_a_damaged_metadata_db_gives_one_paragraph_on_the_cli_and_the_dashboard(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(ws, monkeypatch)
    url = ws.settings.resolved_db_url
    forget_database(url)
    _damage(Path(str(make_url(url).database)))
    for command in (["status"], ["worker", "--once"], ["report"]):
        done = _cli(env, *command)
        assert done.returncode == 1, done
        paragraph = _one_paragraph(done.stderr)
        assert paragraph.startswith(f"error: The Metadata DB at {url} is damaged (file is not a database).")
        assert "restore it from your latest backup" in paragraph and "cannot be rebuilt" in paragraph
    dashboard = Dashboard(Workspace(ws.settings), background=False)
    dashboard.refresh()
    for panel in ("Runs", "Release", "Datasets", "Audit"):
        html = shown_html(dashboard.outputs[panel])
        assert "The Metadata DB at" in html and "restore it from your latest backup" in html, panel
        assert "Traceback" not in html and "DatabaseError" not in html
    forget_database(url)


def test_postgresql_corruption_codes_are_recognised() -> None:
    for sqlstate in ("XX001", "XX002"):
        original = SimpleNamespace(sqlstate=sqlstate)
        error = DatabaseError("SELECT 1", {}, Exception("invalid page in block 7 of relation base/1/2"))
        error.orig = original  # type: ignore[assignment]
        assert monitor.store_failure(error, "postgresql://ops@db/ops") is not None
    assert monitor.store_failure(DatabaseError("SELECT 1", {}, Exception("deadlock detected"))) is None
    assert monitor.store_failure(ValueError("x")) is None


@pytest.mark.sqlite_only(reason="a damaged Chroma SQLite file; the Metadata DB is not involved")
def test_a_damaged_chroma_file_gives_one_paragraph_on_the_cli_and_the_dashboard(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    _corpus(ws)
    env = _env(ws, monkeypatch)
    forget_local_clients()
    _damage(ws.settings.resolved_chroma_path / "chroma.sqlite3")
    done = _cli(env, "simulate-traffic", "--corpus", "mini", "--requests", "3", "--quiet")
    assert done.returncode == 1, done
    paragraph = _one_paragraph(done.stderr)
    location = ws.settings.resolved_chroma_path
    assert paragraph.startswith(f"error: The vector store at {location} is damaged: Chroma cannot read its files")
    assert "file is not a database" in paragraph and "opsbench reindex-active" in paragraph
    done = _cli(env, "status")
    assert done.returncode == 0 and "Traceback" not in done.stdout + done.stderr
    assert f"  {INDEX} (active): 48 / —  UNREADABLE" in done.stdout
    assert f"vector store UNREADABLE: The vector store at {location} is damaged" in done.stdout
    with pytest.raises(VectorStoreDamaged, match="restore the folder from a backup"):
        ws.vectors.names()
    dashboard = Dashboard(ws, background=False)
    dashboard.refresh()
    html = shown_html(dashboard.outputs["Release"])
    assert f"The vector store at {location} is damaged" in html and "Traceback" not in html


# opsbench reindex-active -------------------------------------------------------------------------------
def test_reindex_active_restores_search_after_the_collection_is_dropped(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks = _corpus(ws)
    before = _hits(ws)
    with ws.db.read() as session:
        project = session.scalar(select(Video.project_id).join(Chunk, Chunk.video_id == Video.id).limit(1))
    assert search(ws, "sorting lists", project_id=project, user_id="u").refs
    ws.vectors.drop(INDEX)
    with pytest.raises(VectorStoreError, match="no such collection"):
        search(ws, "sorting lists", project_id=project, user_id="u")
    _env(ws, monkeypatch)
    capsys.readouterr()
    # Guarded like every operator action: the default role (viewer) is refused, and audited.
    assert main(["reindex-active", "--reason", "collection dropped", "--confirm", INDEX, "--quiet"]) == 3
    assert "needs 'admin'" in capsys.readouterr().err
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    assert main(["reindex-active", "--reason", "collection dropped", "--confirm", "idx-other", "--quiet"]) == 3
    assert "does not match 'idx-tiny-base'" in capsys.readouterr().err
    assert main(["reindex-active", "--reason", "collection dropped", "--confirm", INDEX, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"embeds the {chunks} READY chunks with tiny-base, the active model" in out
    assert f"done: rebuilding {INDEX} with tiny-base from the Metadata DB: dropped its {chunks} entries" in out
    assert f"rebuilt: {chunks} vectors ({chunks} embedded, 0 reused), complete" in out
    assert _hits(ws) == before  # the same index again
    assert search(ws, "sorting lists", project_id=project, user_id="u").refs
    assert _index(ws)["state"] == "ok"
    with ws.db.read() as session:
        audit = [(a.action, a.result.split(":")[0]) for a in session.scalars(select(AuditLog).order_by(AuditLog.id))]
    assert audit == [
        ("reindex-active", "refused"),
        ("reindex-active", "refused"),
        ("reindex-active", f"rebuilding {INDEX} with tiny-base from the Metadata DB"),
    ]


@pytest.mark.sqlite_only(reason="an embedded Chroma folder is moved aside; the Metadata DB side runs above")
def test_reindex_active_moves_a_damaged_store_aside_and_rebuilds(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    chunks = _corpus(ws)
    before = _hits(ws)
    forget_local_clients()
    chroma = ws.settings.resolved_chroma_path
    _damage(chroma / "chroma.sqlite3")
    _env(ws, monkeypatch)
    monkeypatch.setenv("OPS_OPERATOR_ROLE", "admin")
    capsys.readouterr()
    assert main(["reindex-active", "--reason", "chroma damaged", "--confirm", INDEX, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "the vector store is damaged (its folder is moved aside" in out  # the preview said so
    moved = [p for p in chroma.parent.iterdir() if p.name.startswith("chroma.damaged-")]
    assert len(moved) == 1 and (moved[0] / "chroma.sqlite3").is_file()  # kept, not deleted
    assert f"the damaged vector store was moved aside to {moved[0]}" in out and ", complete" in out
    assert _hits(ws) == before
    index = _index(ws)
    assert (index["state"], index["vectors"]) == ("ok", chunks)
