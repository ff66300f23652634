"""Tables of a training run's selection record (``selection.json``) for the stage-30 report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from opslib.control.outcomes import Verdict
from opslib.lifecycle.evaluation.metrics import METRICS

if TYPE_CHECKING:
    from opslib.lifecycle.training.stage import TrainingReport


def selection_frame(selection: dict[str, Any]) -> pd.DataFrame:
    """One row per configuration (its kept epoch's validation metrics), and the baseline's row."""
    rows = []
    baseline = selection.get("baseline_validation")
    if baseline:
        rows.append({"configuration": "baseline (no training)", "epochs run": 0, "kept epoch": "—", **baseline})
    pinned = selection.get("base_validation")
    if pinned:  # the fine-tune started from a pinned base, not the baseline
        label = f"base {selection.get('training_base_model_version', '?')} (no training; where training starts)"
        rows.append({"configuration": label, "epochs run": 0, "kept epoch": "—", **pinned})
    for index, result in enumerate(selection.get("configurations", [])):
        kept = result["epochs"][result["best_epoch"] - 1] if result["best_epoch"] else None
        rows.append(
            {
                "configuration": result["label"] + ("  ← selected" if index == selection["selected"] else ""),
                "epochs run": len(result["epochs"]),
                "kept epoch": result["best_epoch"],
                **({m: kept["metrics"][m] for m in METRICS} if kept else {}),
                "stopped early": result["stopped_early"],
                "steps": result["steps"],
                "seconds": result["seconds"],
            }
        )
    if not rows:  # nothing was trained (a delivered candidate)
        return pd.DataFrame(index=pd.Index([], name="configuration"))
    return pd.DataFrame(rows).set_index("configuration")


def epoch_frame(selection: dict[str, Any], metric: str) -> pd.DataFrame:
    """Validation ``metric`` per epoch (rows) and configuration (columns); epoch 0 is where training
    started: the baseline, or the pinned base."""
    columns: dict[str, dict[int, float]] = {}
    baseline = (selection.get("base_validation") or selection.get("baseline_validation") or {}).get(metric)
    for result in selection.get("configurations", []):
        series = {e["epoch"]: e["metrics"][metric] for e in result["epochs"]}
        if baseline is not None:
            series[0] = baseline
        columns[result["label"]] = series
    frame = pd.DataFrame(columns).sort_index()
    frame.index.name = "epoch"
    return frame


def negatives_frame(selection: dict[str, Any]) -> pd.DataFrame:
    """Negatives per source: available to training (dataset + mined) and placed in rows."""
    rows = selection.get("rows", {})
    available = rows.get("negatives_available_by_source", {})
    used = rows.get("negatives_in_rows_by_source", {})
    sources = sorted(set(available) | set(used))
    return pd.DataFrame(
        {"available": [available.get(s, 0) for s in sources], "in training rows": [used.get(s, 0) for s in sources]},
        index=pd.Index(sources, name="source"),
    )


def mining_facts(selection: dict[str, Any]) -> dict[str, Any]:
    """The mining record as flat labelled values: its parameters, counts and exclusions."""
    mining = selection.get("mining", {})
    return {
        **{f"parameter {k}": v for k, v in mining.get("params", {}).items()},
        **{k: v for k, v in mining.items() if k not in ("params", "excluded")},
        **{f"excluded as {k}": v for k, v in mining.get("excluded", {}).items()},
    }


def stage_headline(report: TrainingReport) -> tuple[Verdict, str]:
    """The 30 report's verdict and banner text: DELIVERED for a model an operator delivered, else
    TRAINED with what was selected."""
    if report.delivered:
        return Verdict.DELIVERED, (
            f"candidate {report.candidate_model_version} was delivered by {report.delivered.get('delivered by')}, "
            f"not trained: nothing is trained; stage 40 judges it against {report.baseline_model_version}, the "
            "serving model, on the evaluation and guard sets like a fine-tune"
        )
    headline = f"candidate {report.candidate_model_version} " + selection_headline(
        report.selection, report.already_trained
    )
    if report.base_model_version and report.base_model_version != report.baseline_model_version:
        headline += f" (fine-tuned from {report.base_model_version}, pinned by training_base_model_version)"
    return Verdict.TRAINED, headline


def stage_facts(report: TrainingReport, trace_id: str) -> dict[str, Any]:
    """The 30 report's facts table: the delivery record, or what training used and produced."""
    if report.delivered:
        return {
            "run": report.run_id,
            "baseline (serving)": report.baseline_model_version,
            **report.delivered,
            "trace_id": trace_id,
        }
    selection = report.selection
    return {
        "run": report.run_id,
        "baseline": report.baseline_model_version,
        "fine-tuned from": selection.get("training_base_model_version", report.baseline_model_version),
        "candidate": report.candidate_model_version,
        "dataset": report.dataset_version,
        "groups used": report.groups,
        "groups without negatives (left out)": report.groups_without_negatives,
        "rows": report.rows,
        "device / mixed precision": f"{selection.get('device')} / {selection.get('mixed_precision')}",
        "steps (the candidate's training)": report.steps,
        "trace_id": trace_id,
    }


def selection_headline(selection: dict[str, Any], already_trained: bool) -> str:
    """The 30 report's banner: what was selected and how it scored against the baseline."""
    if already_trained or not selection:
        return "was already trained (resumed run): kept as it is"
    chosen = selection["configurations"][selection["selected"]]
    kept = chosen["epochs"][chosen["best_epoch"] - 1]["metrics"] if chosen["best_epoch"] else {}
    base = selection.get("baseline_validation") or {}
    headline = (
        f"trained: {selection['selected_label']}, epoch {selection['selected_epoch']} kept — validation nDCG@5 "
        f"{kept.get('ndcg_at_5', float('nan')):.4f} (baseline {base.get('ndcg_at_5', float('nan')):.4f})"
    )
    refit = selection.get("refit")
    if refit:
        headline += (
            f"; then refit on all {refit['groups']} labelled queries (training + validation) for "
            f"{refit['epochs']} epoch(s) — that is the candidate"
        )
    return headline


def refit_facts(selection: dict[str, Any]) -> dict[str, Any]:
    """What the refit did, or that there was none."""
    refit = selection.get("refit")
    if not refit:
        return {"refit": "none: the candidate is the selected configuration's kept epoch"}
    return {
        "configuration": refit["configuration"],
        "epochs (as validation chose)": refit["epochs"],
        "queries (training + validation)": refit["groups"],
        "rows": refit.get("rows", {}).get("rows"),
        "steps": refit["steps"],
        "seconds": refit["seconds"],
        "weights sha256": refit["weights_sha256"],
        "validation score": "not measurable: the refit trained on the validation queries (stage 40 judges it)",
    }
