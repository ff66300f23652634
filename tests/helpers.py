"""Building blocks shared by the run / training / evaluation / worker tests."""

from __future__ import annotations

from datetime import timedelta

from opslib.corpus import load_corpus
from opslib.dataset import build_dataset
from opslib.db.models import utcnow
from opslib.simulate import simulate_traffic
from opslib.workspace import Workspace


def mini_corpus_spec(n_queries: int = 24):  # type: ignore[no-untyped-def]
    """A small honest corpus: each query has two answer passages sharing its words."""
    from opslib.corpus import CorpusSpec, Document, Query

    topics = ["sorting lists", "reading files", "parsing dates", "sending email", "hashing passwords",
              "compressing archives", "spawning processes", "formatting strings", "rounding decimals",
              "walking directories", "matching patterns", "encoding base64"]
    documents, queries = [], []
    for q in range(n_queries):
        topic = topics[q % len(topics)]
        project = "alpha" if q % 2 == 0 else "beta"
        queries.append(Query(f"q{q:03d}", f"how do I go about {topic} case {q}", (f"q{q:03d}-a0", f"q{q:03d}-a1")))
        for p in range(2):
            documents.append(Document(f"q{q:03d}-a{p}", f"answer part {p} about {topic} for case {q}: "
                                      f"the usual way to handle {topic} is explained here",
                                      project_key=project, video_key=f"{project}-{q // 6}"))
    return CorpusSpec(name="mini", source="tests", documents=documents, queries=queries)


DATASET_ROW_VERSION = "20261201-aaaaaaaaaaaa"


def dataset_row(ws: Workspace, version: str = DATASET_ROW_VERSION, *, eligible: bool = True,
                hours_ago: float = 0) -> str:
    """A ``TrainingDataset`` row without an artifact: for what only reads the row (run control,
    previews, the dashboard). Its 30-day window ends ``hours_ago`` hours ago."""
    from opslib.db.models import TrainingDataset

    end = utcnow() - timedelta(hours=hours_ago)
    with ws.db.transaction() as session:
        session.add(TrainingDataset(dataset_version=version, storage_path="x", generation_rule_version="retrieval-group-v1",
                                    source_window_start=end - timedelta(days=30), source_window_end=end,
                                    counts={"trainable_groups": 12, "negatives": 30}, eligible=eligible,
                                    ineligible_reasons=[] if eligible else ["groups 3 < 10"]))
    return version


def corpus_ready(ws: Workspace) -> str:
    """The mini corpus indexed by the active model + an eligible dataset row: all the release
    stages need (they never read the dataset). Returns the dataset version."""
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    return dataset_row(ws)


def loop_ready(ws: Workspace, requests: int = 80) -> str:
    """Corpus + traffic + an eligible dataset; returns the dataset version."""
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    simulate_traffic(ws, "mini", requests=requests, seed=4, noise=0.0, start=utcnow() - timedelta(days=1))
    build = build_dataset(ws, as_of=utcnow() + timedelta(seconds=1))
    assert build.eligible, build.ineligible_reasons
    return build.dataset_version


def ready_run(ws: Workspace, candidate_dir) -> int:  # type: ignore[no-untyped-def]
    """A READY_FOR_RELEASE run whose candidate (``candidate_dir``) is registered — as if it had
    trained and passed (the evaluation row is a stand-in: release stages only need the run)."""
    from opslib.db.models import Decision, ModelEvaluation
    from opslib.evaluation import PASS_CRITERIA
    from opslib.model_artifacts import register_model
    from opslib.runs import get_run, mark_ready, request_run

    run_id = request_run(ws.db, trigger_source="manual", trace_id=f"release-test-{utcnow().timestamp()}").run_id
    assert run_id is not None
    run = get_run(ws.db, run_id)
    register_model(ws, run.candidate_model_version, candidate_dir, base_model_version=run.baseline_model_version,
                   run_id=run_id)
    with ws.db.transaction() as session:
        evaluation = ModelEvaluation(run_id=run_id, candidate_model_version=run.candidate_model_version,
                                     baseline_model_version=run.baseline_model_version,
                                     evaluation_dataset_ref="eval-stand-in", sample_count=0, quality_metrics={},
                                     pass_criteria=PASS_CRITERIA, overall_decision=Decision.PASS,
                                     detail_artifact_path="none")
        session.add(evaluation)
        session.flush()
        mark_ready(session, run_id, evaluation_id=evaluation.id)
    return run_id
