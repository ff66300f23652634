"""Pieces of the evaluation report that are more than a call: provenance, change tables."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pandas as pd

import opslib
from opslib.control.runs import get_run
from opslib.lifecycle import corpus_fit


def _source_checkout() -> Path | None:
    """The git checkout this code runs from (an editable install), or None (an installed wheel).

    The candidate is the folder holding the ``opslib`` package; it counts only if it has ``.git``
    and a ``pyproject.toml`` naming project ``opslib`` — never some other repository that merely
    contains a virtualenv with opslib installed in it.
    """
    root = Path(opslib.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        with (root / "pyproject.toml").open("rb") as file:
            name = tomllib.load(file).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if name == "opslib" else None


def code_version() -> str:
    """The package version (from its metadata); run from a git checkout, the commit first (with
    ``+dirty`` if modified). git is optional: without it, or outside a checkout, the version alone."""
    package = f"opslib {opslib.__version__}"
    root = _source_checkout()
    if root is None:
        return package
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package
    return f"{commit}{'+dirty' if dirty else ''} ({package})"


def provenance(ctx: Any, outcome: Any) -> dict[str, Any]:
    run = get_run(ctx.ws.db, outcome.run_id)
    return {
        "run": run.id,
        "run status": run.status.value,
        "trigger": run.trigger_source.value,
        "training dataset": run.dataset_version or "none: the candidate was delivered, not trained here",
        "baseline model": run.baseline_model_version,
        "candidate model": run.candidate_model_version,
        # Summaries from before precisions were recorded have no "encoding": everything was fp32.
        "encoded at (baseline / candidate)": "{baseline_precision} / {candidate_precision} on {device}".format_map(
            outcome.quality_metrics.get(
                "encoding", {"baseline_precision": "fp32", "candidate_precision": "fp32", "device": "cpu"}
            )
        ),
        "evaluation set": ctx.params.evaluation_dataset_ref,
        "evaluation id": outcome.evaluation_id,
        "bootstrap samples": outcome.quality_metrics["bootstrap_samples"],
        "detail artifact": ctx.ws.objects.uri(outcome.detail_key),
        "code version": code_version(),
        "trace_id": ctx.trace_id,
    }


def changes_table(details: list[dict[str, Any]], metric: str = "ndcg_at_5") -> pd.DataFrame:
    """Query, expected chunks and what each model returned, for the report's wins/regressions."""
    if not details:
        return pd.DataFrame({"note": ["none"]})
    return pd.DataFrame(
        [
            {
                "query": d["query_text"],
                "expected": ", ".join(d["expected_results"]),
                f"baseline {metric}": round(d["baseline"][metric], 3),
                f"candidate {metric}": round(d["candidate"][metric], 3),
                "baseline returned": ", ".join(r["chunk_id"] for r in d["baseline"]["returned"]),
                "candidate returned": ", ".join(r["chunk_id"] for r in d["candidate"]["returned"]),
            }
            for d in details
        ]
    )


def fit_frame(quality_metrics: dict[str, Any]) -> pd.DataFrame:
    """The "Model–corpus fit" table: one column per model (baseline, candidate), a row per
    figure, then recall@5 of the dense, keyword and hybrid paths. Empty for evaluations stored
    before the fit was measured."""
    fit = quality_metrics.get("fit")
    if fit is None:
        return pd.DataFrame()
    columns = {}
    for side in ("baseline", "candidate"):
        model = corpus_fit.ModelFit.from_record(fit[side])
        columns[f"{side}: {model.model_version}"] = {
            **model.summary(),
            "dense recall@5": round(quality_metrics[side]["recall_at_5"], 4),
            "keyword recall@5 (no model)": round(fit["keyword"]["recall_at_5"], 4),
            "hybrid recall@5": round(
                quality_metrics.get("hybrid", {}).get(side, {}).get("recall_at_5", float("nan")), 4
            ),
            "fit warnings": "; ".join(fit["warnings"][side]) or "none",
        }
    return pd.DataFrame(columns)


def fit_scripts(quality_metrics: dict[str, Any]) -> pd.DataFrame:
    """Tokens per character by script (rows) and model (columns), for the plot."""
    fit = quality_metrics.get("fit")
    if fit is None:
        return pd.DataFrame()
    return corpus_fit.scripts_frame([corpus_fit.ModelFit.from_record(fit[side]) for side in ("baseline", "candidate")])
