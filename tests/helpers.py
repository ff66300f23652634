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


def loop_ready(ws: Workspace, requests: int = 80) -> str:
    """Corpus + traffic + an eligible dataset; returns the dataset version."""
    load_corpus(ws, mini_corpus_spec(), reserve_fraction=0.25, seed=2)
    simulate_traffic(ws, "mini", requests=requests, seed=4, noise=0.0, start=utcnow() - timedelta(days=1))
    build = build_dataset(ws, as_of=utcnow() + timedelta(seconds=1))
    assert build.eligible, build.ineligible_reasons
    return build.dataset_version
