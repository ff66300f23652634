"""Pieces of the evaluation report that are more than a call: provenance, change tables."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

import opslib
from opslib.control.runs import get_run

_REPO = Path(__file__).resolve().parents[3]


def code_version() -> str:
    """The git commit the code runs from (with ``+dirty`` if modified), else the package version."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(_REPO), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(_REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''} (opslib {opslib.__version__})"
    except (OSError, subprocess.SubprocessError):
        return f"opslib {opslib.__version__}"


def provenance(ctx: Any, outcome: Any) -> dict[str, Any]:
    run = get_run(ctx.ws.db, outcome.run_id)
    return {
        "run": run.id,
        "run status": run.status.value,
        "trigger": run.trigger_source.value,
        "training dataset": run.dataset_version,
        "baseline model": run.baseline_model_version,
        "candidate model": run.candidate_model_version,
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
