from pathlib import Path

import pytest
from helpers import loop_ready, mini_corpus_spec

from opslib.corpus.loader import load_corpus, read_queries
from opslib.infra.workspace import Workspace
from opslib.lifecycle.evaluation.sets import (
    EvalRecord,
    EvaluationSetError,
    read_evaluation_set,
    records_from_corpus,
    records_from_file,
    register_evaluation_set,
)


def test_reserved_queries_register_once_by_content(ws: Workspace) -> None:
    loop_ready(ws)
    records = records_from_corpus(ws, "mini")
    first = register_evaluation_set(ws, records, source="reserved")
    again = register_evaluation_set(ws, list(reversed(records)), source="the same, reordered")
    assert first.evaluation_dataset_ref == again.evaluation_dataset_ref and first.sample_count == len(records)
    assert first.evaluation_dataset_ref.startswith("eval-")
    assert sorted(r.query_text for r in read_evaluation_set(ws, first.evaluation_dataset_ref)) == sorted(
        r.query_text for r in records
    )


def test_a_set_overlapping_the_training_traffic_is_refused(ws: Workspace) -> None:
    loop_ready(ws)
    traffic = list(read_queries(ws, "mini", "traffic"))[:2]
    records = records_from_corpus(ws, "mini") + [
        EvalRecord(q.query_text.upper(), q.project_id, q.expected_results) for q in traffic
    ]
    with pytest.raises(EvaluationSetError, match="appear in the feedback traffic"):
        register_evaluation_set(ws, records, source="leaky")


def test_duplicate_query_texts_are_merged_with_the_union_of_their_results(ws: Workspace) -> None:
    """A query text twice in a project (case and spacing aside) is one query expecting both
    answers: reported, never refused; the same content in any order or spelling has one ref."""
    records = [
        EvalRecord("how to sort", "p1", ("c2",)),
        EvalRecord("How  to sort ", "p1", ("c1", "c2")),
        EvalRecord("how to sort", "p2", ("c9",)),  # another project: another query
        EvalRecord("second", "p1", ("c3",)),
        EvalRecord("SECOND", "p1", ("c3",)),
    ]
    first = register_evaluation_set(ws, records, source="with duplicates")
    assert (first.merged, first.sample_count) == (2, 3)
    assert sorted(
        read_evaluation_set(ws, first.evaluation_dataset_ref), key=lambda r: (r.project_id, r.query_text)
    ) == [
        EvalRecord("How  to sort", "p1", ("c1", "c2")),
        EvalRecord("SECOND", "p1", ("c3",)),
        EvalRecord("how to sort", "p2", ("c9",)),
    ]
    again = register_evaluation_set(ws, list(reversed(records)), source="reordered")
    assert (again.evaluation_dataset_ref, again.merged) == (first.evaluation_dataset_ref, 2)
    merged_already = [
        EvalRecord("How  to sort", "p1", ("c1", "c2")),
        EvalRecord("SECOND", "p1", ("c3",)),
        EvalRecord("how to sort", "p2", ("c9",)),
    ]
    plain = register_evaluation_set(ws, merged_already, source="no duplicates")
    assert (plain.evaluation_dataset_ref, plain.merged) == (first.evaluation_dataset_ref, 0)


def test_files_csv_and_jsonl(tmp_path: Path, ws: Workspace) -> None:
    load_corpus(ws, mini_corpus_spec())
    csv_file = tmp_path / "eval.csv"
    csv_file.write_text('query_text,project_id,expected_results\n"how, exactly?",p1,c1|c2\nsecond,p1,c3\n')
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text(
        '{"query_text": "how, exactly?", "project_id": "p1", "expected_results": ["c2", "c1"]}\n'
        '{"query_text": "second", "project_id": "p1", "expected_results": ["c3"]}\n'
    )
    a = register_evaluation_set(ws, records_from_file(csv_file), source="csv")
    b = register_evaluation_set(ws, records_from_file(jsonl), source="jsonl")
    assert a.evaluation_dataset_ref == b.evaluation_dataset_ref  # same content, same ref


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "at least one record"),
        ([EvalRecord(" ", "p", ("c",))], "query_text"),
        ([EvalRecord("q", "", ("c",))], "project_id"),
        ([EvalRecord("q", "p", ())], "expected_results"),
    ],
)
def test_bad_sets_are_refused(ws: Workspace, records: list, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(EvaluationSetError, match=message):
        register_evaluation_set(ws, records, source="bad")
    with pytest.raises(EvaluationSetError, match="not registered"):
        list(read_evaluation_set(ws, "eval-0000000000000000"))


def test_bad_files(tmp_path: Path) -> None:
    missing = tmp_path / "x.csv"
    missing.write_text("query_text,project_id\nq,p\n")
    with pytest.raises(EvaluationSetError, match="missing column"):
        records_from_file(missing)
    broken = tmp_path / "x.jsonl"
    broken.write_text('{"query_text": "q"}\n')
    with pytest.raises(EvaluationSetError, match=r"x\.jsonl:1"):
        records_from_file(broken)
    with pytest.raises(EvaluationSetError, match="not found"):
        records_from_file(tmp_path / "nope.jsonl")
