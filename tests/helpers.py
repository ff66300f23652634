"""Building blocks shared by the run / training / evaluation / worker tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

from opslib.corpus.loader import load_corpus
from opslib.db.models import MLPipelineRun, RunStatus, TriggerSource, utcnow
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import build_dataset
from opslib.lifecycle.feedback.events import make_event
from opslib.lifecycle.feedback.simulate import simulate_traffic


def mini_corpus_spec(n_queries: int = 24, *, title: str = ""):  # type: ignore[no-untyped-def]
    """A small honest corpus: each query has two answer passages sharing its words. ``title``
    heads every passage (the embedded text is ``title + "\\n" + text``)."""
    from opslib.corpus.loader import CorpusSpec, Document, Query

    topics = [
        "sorting lists",
        "reading files",
        "parsing dates",
        "sending email",
        "hashing passwords",
        "compressing archives",
        "spawning processes",
        "formatting strings",
        "rounding decimals",
        "walking directories",
        "matching patterns",
        "encoding base64",
    ]
    documents, queries = [], []
    for q in range(n_queries):
        topic = topics[q % len(topics)]
        project = "alpha" if q % 2 == 0 else "beta"
        queries.append(Query(f"q{q:03d}", f"how do I go about {topic} case {q}", (f"q{q:03d}-a0", f"q{q:03d}-a1")))
        for p in range(2):
            documents.append(
                Document(
                    f"q{q:03d}-a{p}",
                    f"answer part {p} about {topic} for case {q}: the usual way to handle {topic} is explained here",
                    project_key=project,
                    video_key=f"{project}-{q // 6}",
                    title=title,
                )
            )
    return CorpusSpec(name="mini", source="tests", documents=documents, queries=queries)


DATASET_ROW_VERSION = "20261201-aaaaaaaaaaaa"


def dataset_row(
    ws: Workspace,
    version: str = DATASET_ROW_VERSION,
    *,
    eligible: bool = True,
    hours_ago: float = 0,
    artifact: bytes | None = None,
) -> str:
    """A ``TrainingDataset`` row without an artifact: for what only reads the row (run control,
    previews, the dashboard). Its 30-day window ends ``hours_ago`` hours ago. With ``artifact``,
    that is its train.jsonl (and a manifest recording its sha256): the worker verifies a dataset
    before it starts a run on it (opslib.control.datasets)."""
    from opslib.db.models import TrainingDataset

    if artifact is not None:
        stored = ws.objects.put_bytes(f"datasets/{version}/train.jsonl", artifact)
        manifest = {"dataset_version": version, "lineage": {"train_sha256": stored.sha256}}
        ws.objects.put_text(f"datasets/{version}/manifest.json", json.dumps(manifest))
    end = utcnow() - timedelta(hours=hours_ago)
    with ws.db.transaction() as session:
        session.add(
            TrainingDataset(
                dataset_version=version,
                storage_path="x",
                generation_rule_version="retrieval-group-v1",
                source_window_start=end - timedelta(days=30),
                source_window_end=end,
                counts={"trainable_groups": 12, "negatives": 30},
                eligible=eligible,
                ineligible_reasons=[] if eligible else ["groups 3 < 10"],
            )
        )
    return version


def corpus_ready(ws: Workspace) -> str:
    """The mini corpus indexed by the active model + an eligible dataset row: all the release
    stages need (they never read the dataset). Returns the dataset version."""
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    return dataset_row(ws)


def loop_ready(ws: Workspace, requests: int = 80, *, title: str = "") -> str:
    """Corpus (``mini_corpus_spec(title=title)``) + traffic + an eligible dataset; returns the
    dataset version."""
    load_corpus(ws, mini_corpus_spec(title=title), reserve_fraction=0.25, seed=2)
    simulate_traffic(ws, "mini", requests=requests, seed=4, noise=0.0, start=utcnow() - timedelta(days=1))
    build = build_dataset(ws, as_of=utcnow() + timedelta(seconds=1))
    assert build.eligible, build.ineligible_reasons
    return build.dataset_version


def ready_run(ws: Workspace, candidate_dir) -> int:  # type: ignore[no-untyped-def]
    """A READY_FOR_RELEASE run whose candidate (``candidate_dir``) is registered — as if it had
    trained and passed (see ``pass_stand_in``)."""
    from opslib.control.runs import get_run, request_run
    from opslib.infra.model_artifacts import register_model

    run_id = request_run(ws.db, trigger_source="manual", trace_id=f"release-test-{utcnow().timestamp()}").run_id
    assert run_id is not None
    run = get_run(ws.db, run_id)
    register_model(
        ws, run.candidate_model_version, candidate_dir, base_model_version=run.baseline_model_version, run_id=run_id
    )
    pass_stand_in(ws, run_id)
    return run_id


def pass_stand_in(ws: Workspace, run_id: int) -> None:
    """RUNNING run ``run_id`` → READY_FOR_RELEASE with a stand-in PASS evaluation row: the release
    stages only need the run, not a real evaluation."""
    from opslib.control.runs import get_run, mark_ready
    from opslib.db.models import Decision, ModelEvaluation
    from opslib.lifecycle.evaluation.evaluate import PASS_CRITERIA

    run = get_run(ws.db, run_id)
    with ws.db.transaction() as session:
        evaluation = ModelEvaluation(
            run_id=run_id,
            candidate_model_version=run.candidate_model_version,
            baseline_model_version=run.baseline_model_version,
            evaluation_dataset_ref="eval-stand-in",
            sample_count=0,
            quality_metrics={},
            pass_criteria=PASS_CRITERIA,
            overall_decision=Decision.PASS,
            detail_artifact_path="none",
        )
        session.add(evaluation)
        session.flush()
        mark_ready(session, run_id, evaluation_id=evaluation.id)


def write_beir(folder: Path, n_queries: int = 12) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for q in range(n_queries):
        source = "alpha" if q % 2 == 0 else "beta"
        queries.append({"_id": f"q{q:02d}", "text": f"question number {q} about topic {q}"})
        for p in range(2):
            corpus.append(
                {
                    "_id": f"q{q:02d}-a{p}",
                    "title": "",
                    "text": f"answer {p} to topic {q} explained",
                    "metadata": {"source": source, "part": f"{source}-part{q // 4}"},
                }
            )
            qrels.append(f"q{q:02d}\tq{q:02d}-a{p}\t1")
    queries.append({"_id": "orphan", "text": "a question nobody answered"})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels.tsv").write_text("\n".join(qrels) + "\n")
    return folder


def feedback_event(**overrides: object) -> dict:
    event = make_event(
        user_id="u1",
        project_id="p1",
        req_id="r1",
        query_text="how to sort",
        rating="LIKE",
        topk_ids=["c1", "c2", "c3"],
        used_ids=["c1"],
        active_model_version="m1",
        active_index_name="idx-m1",
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
        trace_id="t1",
    ).to_dict()
    event.update(overrides)
    return event


def feedback_line(event: dict) -> bytes:
    return json.dumps(event).encode()


def write_stage_notebook(path: Path, parameters: str, *sources: str) -> Path:
    """A stage notebook: a code cell tagged ``parameters`` (Papermill injects after it), then one
    code cell per source."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    tagged = new_code_cell(parameters)
    tagged.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[tagged, *(new_code_cell(s) for s in sources)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


class PageLinks(HTMLParser):
    """Every ``href`` and ``src`` of an HTML page (the run index, history pages, reports)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs.extend(v for k, v in attrs if k == "href" and v)
        self.srcs.extend(v for k, v in attrs if k == "src" and v)


def add_run(session, status: RunStatus, **fields) -> MLPipelineRun:  # type: ignore[no-untyped-def]
    """A manual ``MLPipelineRun`` row in ``session`` (flushed: it has its id), other fields as given."""
    fields.setdefault("trace_id", f"t-{status.value}")
    run = MLPipelineRun(status=status, trigger_source=TriggerSource.MANUAL, **fields)
    session.add(run)
    session.flush()
    return run
