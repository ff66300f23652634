"""Stage 30's selection machinery: the validation split, mined negatives, the kept epoch."""

from __future__ import annotations

import pytest
from helpers import loop_ready

from opslib.control.runs import get_run, request_run
from opslib.infra.model_artifacts import local_model_dir, read_manifest
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import read_groups
from opslib.lifecycle.evaluation.sets import (
    normalise_query,
    read_evaluation_set,
    records_from_corpus,
    register_evaluation_set,
)
from opslib.lifecycle.training import MiningParams, TrainingParams, read_selection, train_candidate
from opslib.lifecycle.training import fit as fit_module
from opslib.lifecycle.training.fit import weights_fingerprint
from opslib.lifecycle.training.mining import mine_hard_negatives
from opslib.lifecycle.training.split import query_key, split_groups


def _group(project: str, query: str) -> dict:
    return {"project_id": project, "query_text": query, "positives": [], "negatives": []}


def test_the_split_is_seeded_query_disjoint_and_keeps_whole_queries() -> None:
    groups = [_group(p, f"Query {i}") for i in range(200) for p in ("a", "b")]
    groups += [_group("a", "  query 7 ")]  # the same query as "Query 7" in a (case, whitespace)
    first = split_groups(groups, 0.2, seed=5)
    again = split_groups(list(reversed(groups)), 0.2, seed=5)
    assert first.validation_queries == again.validation_queries  # order does not matter
    assert first.validation_queries != split_groups(groups, 0.2, seed=6).validation_queries
    train_keys = {query_key(g) for g in first.train}
    assert not train_keys & first.validation_queries  # query-disjoint
    assert 0.12 < len(first.validation_queries) / 401 < 0.28
    same = [g for g in groups if query_key(g) == ("a", "query 7")]
    assert len(same) == 2 and len({query_key(g) in first.validation_queries for g in same}) == 1
    record = first.as_record()
    assert record["train_groups"] + record["validation_groups"] == len(groups)
    with pytest.raises(ValueError, match="validation_share"):
        split_groups(groups, 1.0, seed=0)


def test_two_queries_put_one_on_each_side() -> None:
    split = split_groups([_group("a", "x"), _group("a", "y")], 0.01, seed=0)
    assert len(split.train) == len(split.validation) == 1


def test_the_validation_split_is_disjoint_from_the_evaluation_set(ws: Workspace) -> None:
    dataset = loop_ready(ws)
    evaluation = register_evaluation_set(ws, records_from_corpus(ws, "mini"), source="reserved")
    split = split_groups(read_groups(ws, dataset), 0.3, seed=0)
    evaluated = {
        (r.project_id, normalise_query(r.query_text))
        for r in read_evaluation_set(ws, evaluation.evaluation_dataset_ref)
    }
    assert split.validation and not split.validation_queries & evaluated


def test_mined_negatives_are_never_positives_neighbours_or_near_duplicates(ws: Workspace) -> None:
    dataset = loop_ready(ws)
    groups = list(read_groups(ws, dataset))
    # The tiny model's vectors are all alike (cosine > 0.95): only identical ones count as duplicates here.
    params = MiningParams(rank_from=0, rank_to=48, margin=0.0, per_group=10, neighbour_window=1, duplicate_cosine=1.0)
    mined, report = mine_hard_negatives(ws, "tiny-base", groups, params)
    assert report.mined > 0 and report.groups == len(groups)
    from opslib.lifecycle.evaluation.retrieval import project_corpora

    corpora = project_corpora(ws, {g["project_id"] for g in groups})
    for group, negatives in zip(groups, mined, strict=True):
        corpus = corpora[group["project_id"]]
        place = {c: (corpus.video_ids[i], corpus.positions[i]) for i, c in enumerate(corpus.chunk_ids)}
        positives = {p["chunk_id"] for p in group["positives"]}
        feedback = {n["chunk_id"] for n in group["negatives"]}
        for negative in negatives:
            assert negative["chunk_id"] not in positives | feedback
            assert negative["source"] == "mined_baseline" and negative["text"]
            video, position = place[negative["chunk_id"]]
            assert all(place[p][0] != video or abs(place[p][1] - position) > 1 for p in positives if p in place), (
                "a neighbour of a positive was mined"
            )
        ranks = [n["rank"] for n in negatives]
        assert ranks == sorted(ranks)  # hardest first
    # the mini corpus's second answer part sits next to the first: always excluded as a neighbour
    assert report.excluded["neighbour"] > 0
    # near-duplicates of a positive (here: anything with cosine >= 0.5 to one) are excluded
    _, alike = mine_hard_negatives(ws, "tiny-base", groups, MiningParams(rank_from=0, duplicate_cosine=0.5))
    assert alike.mined == 0 and alike.excluded["near_duplicate"] > 0
    # a margin of 0.999: a negative must score below 0.001 × the positive → hardly anything qualifies
    _, strict = mine_hard_negatives(
        ws, "tiny-base", groups, MiningParams(margin=0.999, rank_from=0, duplicate_cosine=1.0)
    )
    assert strict.mined < report.mined and strict.excluded["above_margin"] > 0


def _script_validation(monkeypatch: pytest.MonkeyPatch, scores: list[float]) -> None:
    """Validation returns ``scores`` in turn (the same value for each metric), training stays real."""
    scripted = iter(scores)
    real_fit = fit_module.fit_configuration

    def scripted_fit(model, guide, rows, configuration, settings, score):  # type: ignore[no-untyped-def]
        def fake(m):  # type: ignore[no-untyped-def]
            value = next(scripted)
            return {"recall_at_5": value, "mrr_at_5": value, "ndcg_at_5": value}

        return real_fit(model, guide, rows, configuration, settings, fake if score is not None else None)

    monkeypatch.setattr("opslib.lifecycle.training.stage.fit_configuration", scripted_fit)


@pytest.mark.sqlite_only(
    reason="the kept epoch is training's property; training's rows are checked on PostgreSQL by "
    "tests/execution/test_worker.py"
)
def test_the_best_epoch_is_the_one_kept(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation scores scripted to peak at epoch 2 of 3: the artifact holds epoch 2's weights."""
    loop_ready(ws)
    _script_validation(monkeypatch, [0.2, 0.9, 0.5])
    run_id = request_run(ws.db, trigger_source="manual", trace_id="best-epoch").run_id
    params = TrainingParams(epochs=3, patience=2, batch_size=8, learning_rates=(5e-4,), max_seq_length=32, refit=False)
    report = train_candidate(ws, run_id, params, progress=False)
    assert report.selection["refit"] is None
    chosen = report.selection["configurations"][0]
    assert [e["metrics"]["ndcg_at_5"] for e in chosen["epochs"]] == [0.2, 0.9, 0.5]
    assert chosen["best_epoch"] == 2 and report.selection["selected_epoch"] == 2
    fingerprints = [e["weights_sha256"] for e in chosen["epochs"]]
    assert len(set(fingerprints)) == 3  # every epoch changed the weights
    from sentence_transformers import SentenceTransformer

    candidate = get_run(ws.db, run_id).candidate_model_version
    saved = SentenceTransformer(str(local_model_dir(ws, candidate)), device="cpu")
    assert weights_fingerprint(saved) == fingerprints[1]  # epoch 2's weights, not the last epoch's
    base = SentenceTransformer(str(local_model_dir(ws, "tiny-base")), device="cpu")
    assert saved.max_seq_length == max(base.max_seq_length, 32)  # never shorter than the baseline's
    manifest = read_manifest(ws, candidate)
    assert manifest.training_parameters["selected_epoch"] == 2
    assert read_selection(ws, run_id, candidate) == report.selection


@pytest.mark.sqlite_only(reason="the refit is training's property (see above)")
def test_the_refit_trains_every_labelled_query_for_the_chosen_epochs(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation peaks at epoch 2 of 3: the candidate is a fresh run of that configuration over
    training + validation queries, stopped after epoch 2 of the same schedule."""
    loop_ready(ws)
    _script_validation(monkeypatch, [0.2, 0.9, 0.5])
    run_id = request_run(ws.db, trigger_source="manual", trace_id="refit").run_id
    params = TrainingParams(epochs=3, patience=2, batch_size=8, learning_rates=(5e-4,), max_seq_length=32)
    report = train_candidate(ws, run_id, params, progress=False)
    selection = report.selection
    refit = selection["refit"]
    split = selection["split"]
    assert refit["epochs"] == refit["epochs_run"] == 2 and refit["configuration"] == "mnrl lr=0.0005"
    assert refit["groups"] == split["train_queries"] + split["validation_queries"]
    assert report.rows == refit["rows"]["rows"] > selection["rows"]["rows"]  # more rows than selection trained on
    from sentence_transformers import SentenceTransformer

    candidate = get_run(ws.db, run_id).candidate_model_version
    saved = SentenceTransformer(str(local_model_dir(ws, candidate)), device="cpu")
    assert weights_fingerprint(saved) == refit["weights_sha256"]
    assert refit["weights_sha256"] not in {e["weights_sha256"] for e in selection["configurations"][0]["epochs"]}
    assert read_manifest(ws, candidate).training_parameters["refit_on_validation_queries"] is True
    from opslib.lifecycle.training.summary import refit_facts, selection_headline

    assert selection_headline(selection, False).endswith(
        f"then refit on all {refit['groups']} labelled queries (training + validation) for 2 epoch(s) — that is "
        "the candidate"
    )
    assert refit_facts(selection)["epochs (as validation chose)"] == 2


@pytest.mark.sqlite_only(reason="selection is training's property (see above)")
def test_early_stop_and_the_best_configuration_wins(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    loop_ready(ws)
    # configuration 1: 0.3, 0.2 (stops after patience 1); configuration 2: 0.4, 0.6, 0.1
    _script_validation(monkeypatch, [0.3, 0.2, 0.4, 0.6, 0.1])
    run_id = request_run(ws.db, trigger_source="manual", trace_id="grid").run_id
    params = TrainingParams(epochs=3, batch_size=8, learning_rates=(1e-4, 5e-4), max_seq_length=32)
    report = train_candidate(ws, run_id, params, progress=False)
    first, second = report.selection["configurations"]
    assert len(first["epochs"]) == 2 and first["stopped_early"] and first["best_epoch"] == 1
    assert len(second["epochs"]) == 3 and not second["stopped_early"] and second["best_epoch"] == 2
    assert report.selection["selected"] == 1 and report.selection["selected_label"] == "mnrl lr=0.0005"
    assert report.selection["baseline_validation"] is not None
    manifest = read_manifest(ws, get_run(ws.db, run_id).candidate_model_version)
    assert manifest.training_parameters["learning_rate"] == 5e-4


def test_the_report_headline_names_the_selected_configuration_and_the_baseline() -> None:
    from opslib.lifecycle.training.summary import selection_headline

    selection = {
        "selected": 1,
        "selected_label": "mnrl lr=5e-05",
        "selected_epoch": 2,
        "baseline_validation": {"ndcg_at_5": 0.8476},
        "configurations": [
            {"best_epoch": 1, "epochs": [{"metrics": {"ndcg_at_5": 0.88}}]},
            {"best_epoch": 2, "epochs": [{"metrics": {"ndcg_at_5": 0.90}}, {"metrics": {"ndcg_at_5": 0.9093}}]},
        ],
    }
    assert selection_headline(selection, False) == (
        "trained: mnrl lr=5e-05, epoch 2 kept — validation nDCG@5 0.9093 (baseline 0.8476)"
    )
    assert selection_headline(selection, True).startswith("was already trained")
