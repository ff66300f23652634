"""The README's main command, end to end, on the built-in corpus (tiny model for speed).

The base model is the tiny model made blind (``build_blind_model``: it reads no text, so it ranks
every chunk alike, in tie order), so the candidate trained from it, which reads, must PASS and the
demo must cut over and roll back every time.
"""

from pathlib import Path

import pytest
from tiny_model import build_blind_model

from opslib.db.models import (
    CorpusImport,
    Decision,
    ExecutionStatus,
    ModelRelease,
    ReleaseStatus,
    StageExecution,
)
from opslib.infra.workspace import Workspace
from opslib.lifecycle.feedback.events import RAW_PREFIX, log_files
from opslib.ops.demo import run_demo
from opslib.settings import Settings


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared settings, with the blind copy of the tiny model as the base (same version name)."""
    assert settings.base_model_path is not None
    blind = build_blind_model(settings.base_model_path, tmp_path / "tiny-blind")
    return Settings(**{**settings.model_dump(), "base_model_path": blind})


@pytest.mark.sqlite_only(
    reason="the demo is the embedded default (a SQLite workspace) by definition; the stages it drives run "
    "on PostgreSQL in tests/execution/test_worker.py and tests/e2e/test_worker_release.py"
)
@pytest.mark.slow
def test_demo_path(empty_ws: Workspace) -> None:
    lines: list[str] = []
    report = run_demo(empty_ws, requests=40, rollback=True, say=lines.append)
    assert report.bootstrap.created
    assert report.corpus is not None and report.corpus.chunks > 500
    assert report.traffic.requests == 40 and report.traffic.ingest.accepted == 40
    assert report.feedback_health.ok and report.feedback_health.output_html.is_file()
    assert any(str(report.feedback_health.output_html) in line for line in lines)
    # The blind base model reads 2 tokens of every chunk: the fit check warns, with its reason.
    health_line = next(line.strip() for line in lines if line.strip().startswith("feedback health "))
    assert health_line.startswith("feedback health WARN: 40 events") and "truncat" in health_line, health_line
    assert report.build_dataset.ok and report.build_dataset.output_html.is_file()
    assert report.dataset is not None and report.dataset.eligible  # 40 requests → enough LIKE groups
    assert any("ELIGIBLE for training" in line for line in lines)
    assert "ELIGIBLE for training" in report.build_dataset.output_html.read_text()
    assert report.evaluation is not None and report.evaluation_report
    assert report.evaluation.overall_decision is Decision.PASS
    assert "PASS" in Path(report.evaluation_report).read_text()
    assert any(line.strip().startswith("evaluation report:") for line in lines)
    assert report.worker is not None and list(report.worker.released.values()) == ["cut over: now serving"]
    assert any("served by cand-r" in line for line in lines)  # the search between cutover and rollback
    # the traffic and the searches shown went over HTTP to the demo's endpoint, stopped at the end
    assert report.endpoint_url and any(f"endpoint serving on {report.endpoint_url}" in line for line in lines)
    assert (
        sum("search over HTTP" in line for line in lines) == 3
    )  # before the loop, after the cutover, after the rollback
    assert any(line.strip().startswith("endpoint stopped cleanly") for line in lines)
    assert report.rollback is not None and [w for _, w in report.rollback.rollbacks] == ["done"]
    assert report.served_by == "tiny-base"  # after the rollback
    # The worker's stages ran in notebook kernels, out of the console's sight: each one's end was printed.
    for stage in ("30_train_candidate", "40_evaluate_candidate", "50_reindex_candidate", "60_cutover"):
        assert any(line.strip().startswith(f"▸ {stage} of run 1 SUCCEEDED after") for line in lines), stage
    assert any(line.strip().startswith("▸ 70_rollback SUCCEEDED after") for line in lines)
    with empty_ws.db.read() as session:
        assert session.query(ModelRelease).one().release_status is ReleaseStatus.STABLE
        assert session.get(CorpusImport, "stdlib") is not None
        assert {e.status for e in session.query(StageExecution)} == {ExecutionStatus.SUCCEEDED}
        build = session.get(StageExecution, report.build_dataset.execution_id)
        assert build.outputs == {"dataset_version": report.dataset.dataset_version, "dataset_created": True}
    index = (empty_ws.settings.runs_dir / "index.html").read_text()
    assert f"dataset {report.dataset.dataset_version} (built)" in index
    assert log_files(empty_ws.objects, RAW_PREFIX)
