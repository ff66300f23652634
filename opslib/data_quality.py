"""Data quality of a training dataset, checked with Great Expectations (1.x, ephemeral context).

The suite reads the written ``train.jsonl`` back — it checks the artifact, not the builder's
intentions — and asks, over three frames (groups, items, source events):

- every group has a non-empty query and a project_id;
- every group has at least one positive;
- confidences (and sources) come only from the allowed set;
- no chunk is both positive and negative in a group;
- every chunk id exists in the Metadata DB;
- no source event is used twice.

Great Expectations is slow to import, so it is imported only here, only when a check runs.
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from opslib.dataset import id_hash64
from opslib.db.models import Chunk
from opslib.workspace import Workspace

ALLOWED_CONFIDENCE = {0.8, 0.4, 0.2}
ALLOWED_SOURCES = {"liked_response_used_chunk", "exposed_unused", "random_same_project"}
RULES = {
    "query_nonempty": "every group has a non-empty query",
    "project_present": "every group has a project_id",
    "has_positive": "every group has at least one positive",
    "confidence_allowed": "confidences only from {0.8, 0.4, 0.2}",
    "source_allowed": "item sources only from the generation rule",
    "no_positive_negative_overlap": "no chunk is both positive and negative in a group",
    "chunk_exists": "every chunk id exists in the Metadata DB",
    "event_used_once": "no source event is used twice",
}


def frames_from_groups(groups: Iterable[dict[str, Any]], existing_chunk_ids: set[str]) -> dict[str, pd.DataFrame]:
    """The three frames the suite validates. Numeric where possible, to stay small at scale."""
    query_chars, project_ok, positives, overlaps = array("i"), array("b"), array("i"), array("i")
    confidence, source_ok, chunk_ok, event_hashes = array("d"), array("b"), array("b"), array("Q")
    for group in groups:
        query_chars.append(len(str(group.get("query_text") or "").strip()))
        project_ok.append(bool(str(group.get("project_id") or "").strip()))
        pos = group.get("positives") or []
        neg = group.get("negatives") or []
        positives.append(len(pos))
        overlaps.append(len({i.get("chunk_id") for i in pos} & {i.get("chunk_id") for i in neg}))
        for item in [*pos, *neg]:
            confidence.append(float(item.get("confidence", float("nan"))))
            source_ok.append(item.get("source") in ALLOWED_SOURCES)
            chunk_ok.append(item.get("chunk_id") in existing_chunk_ids)
        for event_id in group.get("source_event_ids") or []:
            event_hashes.append(id_hash64(str(event_id)))
    return {
        "groups": pd.DataFrame({
            "query_chars": np.frombuffer(query_chars, dtype=np.int32),
            "project_present": np.frombuffer(project_ok, dtype=np.int8),
            "positive_count": np.frombuffer(positives, dtype=np.int32),
            "overlap_count": np.frombuffer(overlaps, dtype=np.int32),
        }),
        "items": pd.DataFrame({
            "confidence": np.frombuffer(confidence, dtype=np.float64),
            "source_allowed": np.frombuffer(source_ok, dtype=np.int8),
            "chunk_exists": np.frombuffer(chunk_ok, dtype=np.int8),
        }),
        "events": pd.DataFrame({"event_id_hash": np.frombuffer(event_hashes, dtype=np.uint64).astype(np.int64)}),
    }


def _expectations(gx: Any) -> dict[str, list[tuple[str, Any]]]:
    e = gx.expectations
    return {
        "groups": [
            ("query_nonempty", e.ExpectColumnValuesToBeBetween(column="query_chars", min_value=1)),
            ("project_present", e.ExpectColumnValuesToBeInSet(column="project_present", value_set=[1])),
            ("has_positive", e.ExpectColumnValuesToBeBetween(column="positive_count", min_value=1)),
            ("no_positive_negative_overlap", e.ExpectColumnValuesToBeInSet(column="overlap_count", value_set=[0])),
        ],
        "items": [
            ("confidence_allowed", e.ExpectColumnValuesToBeInSet(column="confidence",
                                                                 value_set=sorted(ALLOWED_CONFIDENCE))),
            ("source_allowed", e.ExpectColumnValuesToBeInSet(column="source_allowed", value_set=[1])),
            ("chunk_exists", e.ExpectColumnValuesToBeInSet(column="chunk_exists", value_set=[1])),
        ],
        "events": [("event_used_once", e.ExpectColumnValuesToBeUnique(column="event_id_hash"))],
    }


def run_suite(frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Validate the frames; returns a JSON-able summary (overall success + one row per rule)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # nothing may phone home
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX pins some of its module loggers to INFO; the report wants results, not chatter.
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.enable_analytics(False)
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("training_dataset")
    checks: list[dict[str, Any]] = []
    for frame_name, expectations in _expectations(gx).items():
        frame = frames[frame_name]
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=f"retrieval-group-v1-{frame_name}"))
        for _rule, expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"check-{frame_name}", data=batch, suite=suite)
        )
        outcome = definition.run(batch_parameters={"dataframe": frame})
        for (rule, _expectation), result in zip(expectations, outcome.results):
            checks.append({
                "rule": rule, "description": RULES[rule], "frame": frame_name, "rows": int(len(frame)),
                "success": bool(result.success),
                "unexpected_count": int((result.result or {}).get("unexpected_count") or 0),
            })
    return {"suite": "retrieval-group-v1", "engine": f"great_expectations {gx.__version__}",
            "success": all(c["success"] for c in checks), "checks": checks}


def check_dataset(ws: Workspace, train_path: Path) -> dict[str, Any]:
    """Run the suite over a written ``train.jsonl`` (chunk existence from the Metadata DB)."""
    referenced: set[str] = set()
    for group in _read(train_path):
        referenced.update(i.get("chunk_id") for i in [*group.get("positives", []), *group.get("negatives", [])])
    existing: set[str] = set()
    ids = sorted(c for c in referenced if isinstance(c, str))
    with ws.db.read() as session:
        for start in range(0, len(ids), 500):
            existing.update(session.scalars(select(Chunk.id).where(Chunk.id.in_(ids[start : start + 500]))))
    return run_suite(frames_from_groups(_read(train_path), existing))


def _read(path: Path) -> Iterable[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            yield json.loads(line)


def checks_table(result: dict[str, Any]) -> pd.DataFrame:
    """The data-quality result as a readable table (for the notebook)."""
    table = pd.DataFrame(result["checks"])
    if table.empty:
        return table
    table["result"] = table["success"].map({True: "pass", False: "FAIL"})
    return table[["description", "frame", "rows", "unexpected_count", "result"]].set_index("description")
