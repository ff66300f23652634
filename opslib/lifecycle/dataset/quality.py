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

import hashlib
import logging
import os
from array import array
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from opslib.db.models import Chunk
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.rules import CONFIDENCE, DEFAULT_RULE, SOURCES_BY_RULE

SLICE_ROWS = 500_000
WHOLE_FRAME = {"events"}  # frames whose rules compare rows with each other
RULES = {
    "query_nonempty": "every group has a non-empty query",
    "project_present": "every group has a project_id",
    "has_positive": "every group has at least one positive",
    "confidence_allowed": "confidences only those of the rule's sources (0.8, 0.6 in v2, 0.4, 0.2)",
    "source_allowed": "item sources only from the generation rule",
    "no_positive_negative_overlap": "no chunk is both positive and negative in a group",
    "chunk_exists": "every chunk id exists in the Metadata DB",
    "event_used_once": "no source event is used twice",
}


def id_hash64(value: str) -> int:
    """A 64-bit hash of an id: enough to tell a million event ids apart (collision odds ~1e-8)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "big")


class GroupFrames:
    """Accumulates, group by group, the three frames the suite validates.

    Numeric columns only (chunk ids as integer codes), so a million groups stay small; chunk
    existence is looked up once for the distinct ids when the frames are made.
    """

    def __init__(self, rule: str = DEFAULT_RULE) -> None:
        self.rule = rule
        self._sources = frozenset(SOURCES_BY_RULE[rule])
        self.query_chars, self.project_ok = array("i"), array("b")
        self.positives, self.overlaps = array("i"), array("i")
        self.confidence, self.source_ok, self.chunk_codes = array("d"), array("b"), array("i")
        self.event_hashes = array("Q")
        self._codes: dict[object, int] = {}

    def add(self, group: dict[str, Any]) -> None:
        self.query_chars.append(len(str(group.get("query_text") or "").strip()))
        self.project_ok.append(bool(str(group.get("project_id") or "").strip()))
        pos = group.get("positives") or []
        items = pos + (group.get("negatives") or [])
        ids = [i.get("chunk_id") for i in items]
        self.positives.append(len(pos))
        self.overlaps.append(len(set(ids[: len(pos)]) & set(ids[len(pos) :])))
        self.confidence.extend([float(i.get("confidence", "nan")) for i in items])
        self.source_ok.extend([i.get("source") in self._sources for i in items])
        codes = self._codes
        self.chunk_codes.extend([codes.setdefault(c, len(codes)) for c in ids])
        self.event_hashes.extend([id_hash64(str(e)) for e in group.get("source_event_ids") or []])

    @property
    def referenced_chunk_ids(self) -> list[str]:
        return sorted(c for c in self._codes if isinstance(c, str))

    def frames(self, existing_chunk_ids: set[str]) -> dict[str, pd.DataFrame]:
        existing_codes = np.array([code for c, code in self._codes.items() if c in existing_chunk_ids], dtype=np.int32)
        codes = np.frombuffer(self.chunk_codes, dtype=np.int32)
        return {
            "groups": pd.DataFrame(
                {
                    "query_chars": np.frombuffer(self.query_chars, dtype=np.int32),
                    "project_present": np.frombuffer(self.project_ok, dtype=np.int8),
                    "positive_count": np.frombuffer(self.positives, dtype=np.int32),
                    "overlap_count": np.frombuffer(self.overlaps, dtype=np.int32),
                },
                copy=False,
            ),
            "items": pd.DataFrame(
                {
                    "confidence": np.frombuffer(self.confidence, dtype=np.float64),
                    "source_allowed": np.frombuffer(self.source_ok, dtype=np.int8),
                    "chunk_exists": np.isin(codes, existing_codes).astype(np.int8),
                },
                copy=False,
            ),
            "events": pd.DataFrame(
                {"event_id_hash": np.frombuffer(self.event_hashes, dtype=np.uint64).astype(np.int64)}, copy=False
            ),
        }


def frames_from_groups(
    groups: Iterable[dict[str, Any]], existing_chunk_ids: set[str], rule: str = DEFAULT_RULE
) -> dict[str, pd.DataFrame]:
    accumulated = GroupFrames(rule)
    for group in groups:
        accumulated.add(group)
    return accumulated.frames(existing_chunk_ids)


def _expectations(gx: Any, rule: str) -> dict[str, list[tuple[str, Any]]]:
    e = gx.expectations
    confidences = sorted({CONFIDENCE[source] for source in SOURCES_BY_RULE[rule]})
    return {
        "groups": [
            ("query_nonempty", e.ExpectColumnValuesToBeBetween(column="query_chars", min_value=1)),
            ("project_present", e.ExpectColumnValuesToBeInSet(column="project_present", value_set=[1])),
            ("has_positive", e.ExpectColumnValuesToBeBetween(column="positive_count", min_value=1)),
            ("no_positive_negative_overlap", e.ExpectColumnValuesToBeInSet(column="overlap_count", value_set=[0])),
        ],
        "items": [
            (
                "confidence_allowed",
                e.ExpectColumnValuesToBeInSet(column="confidence", value_set=confidences),
            ),
            ("source_allowed", e.ExpectColumnValuesToBeInSet(column="source_allowed", value_set=[1])),
            ("chunk_exists", e.ExpectColumnValuesToBeInSet(column="chunk_exists", value_set=[1])),
        ],
        "events": [("event_used_once", e.ExpectColumnValuesToBeUnique(column="event_id_hash"))],
    }


def run_suite(frames: dict[str, pd.DataFrame], generation_rule: str = DEFAULT_RULE) -> dict[str, Any]:
    """Validate the frames against ``generation_rule``; returns a JSON-able summary (overall
    success + one row per check)."""
    os.environ["GX_ANALYTICS_ENABLED"] = "False"  # nothing may phone home
    import great_expectations as gx  # deferred: takes seconds to import (and reads the env var above)
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
    for frame_name, expectations in _expectations(gx, generation_rule).items():
        frame = frames[frame_name]
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe("whole")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{generation_rule}-{frame_name}"))
        for _rule, expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"check-{frame_name}", data=batch, suite=suite)
        )
        # Row-wise rules are checked slice by slice (bounded memory, counts summed); a
        # uniqueness rule needs the whole column at once.
        whole = frame_name in WHOLE_FRAME
        slices = (
            [frame]
            if whole or len(frame) <= SLICE_ROWS
            else [frame.iloc[i : i + SLICE_ROWS] for i in range(0, len(frame), SLICE_ROWS)]
        )
        outcomes = [definition.run(batch_parameters={"dataframe": part}).results for part in slices]
        for position, (rule, _expectation) in enumerate(expectations):
            results = [outcome[position] for outcome in outcomes]
            checks.append(
                {
                    "rule": rule,
                    "description": RULES[rule],
                    "frame": frame_name,
                    "rows": len(frame),
                    "success": all(bool(r.success) for r in results),
                    "unexpected_count": sum(int((r.result or {}).get("unexpected_count") or 0) for r in results),
                }
            )
    return {
        "suite": generation_rule,
        "engine": f"great_expectations {gx.__version__}",
        "success": all(c["success"] for c in checks),
        "checks": checks,
    }


def existing_chunk_ids(ws: Workspace, chunk_ids: list[str]) -> set[str]:
    existing: set[str] = set()
    with ws.db.read() as session:
        for start in range(0, len(chunk_ids), 500):
            existing.update(session.scalars(select(Chunk.id).where(Chunk.id.in_(chunk_ids[start : start + 500]))))
    return existing


def check_groups(ws: Workspace, groups: GroupFrames) -> dict[str, Any]:
    """Run the suite over the groups a build wrote (chunk existence from the Metadata DB)."""
    return run_suite(groups.frames(existing_chunk_ids(ws, groups.referenced_chunk_ids)), groups.rule)


def checks_table(result: dict[str, Any]) -> pd.DataFrame:
    """The data-quality result as a readable table (for the notebook)."""
    table = pd.DataFrame(result["checks"])
    if table.empty:
        return table
    table["result"] = table["success"].map({True: "pass", False: "FAIL"})
    return table[["description", "frame", "rows", "unexpected_count", "result"]].set_index("description")
