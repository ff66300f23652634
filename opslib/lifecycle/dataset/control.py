"""A control dataset for checking the gate: a copy of a dataset whose positives are rotated
across groups, so every query is paired with another query's answer. A candidate trained on it
learns nothing true and must FAIL evaluation — a gate that passes it is broken. Used by the
quality benchmark and the tests; registered like any dataset (the newest eligible one)."""

from __future__ import annotations

import json
import random

from opslib.control.datasets import dataset_keys, open_dataset
from opslib.db.models import TrainingDataset
from opslib.infra.workspace import Workspace
from opslib.lifecycle.dataset.builder import DatasetError


def register_shuffled_control(ws: Workspace, version: str, seed: int) -> str:
    """Register ``<version>-shuffled`` (positives rotated across groups) and return its version."""
    with open_dataset(ws.db, ws.objects, version) as handle:  # verified, like any read of a dataset
        groups = [json.loads(line) for line in handle if line.strip()]
    if len(groups) < 2:
        raise DatasetError(f"dataset {version}: a control needs at least two groups to rotate")
    positives = [g["positives"] for g in groups]
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    rotated = order[1:] + order[:1]  # a derangement: no group keeps its own positives
    for target, source in zip(order, rotated, strict=True):
        groups[target] = {**groups[target], "positives": positives[source]}
    control = f"{version}-shuffled"
    prefix = f"datasets/{control}"
    train_key, manifest_key = dataset_keys(control)
    stored = ws.objects.put_bytes(train_key, b"".join(json.dumps(g, sort_keys=True).encode() + b"\n" for g in groups))
    manifest = json.loads(ws.objects.read_verified(dataset_keys(version)[1]))
    manifest.update(
        dataset_version=control,
        derived_from=version,
        note="control: positives shuffled across groups — must FAIL evaluation",
    )
    # Its own train.jsonl's checksum: what reads of the control verify it against.
    manifest["lineage"] = {**manifest.get("lineage", {}), "train_sha256": stored.sha256}
    ws.objects.put_text(manifest_key, json.dumps(manifest, indent=2, sort_keys=True))
    with ws.db.transaction() as session:
        source_row = session.get(TrainingDataset, version)
        if source_row is None:
            raise DatasetError(f"dataset {version}: not registered")
        session.add(
            TrainingDataset(
                dataset_version=control,
                storage_path=ws.objects.uri(prefix),
                generation_rule_version=source_row.generation_rule_version,
                source_window_start=source_row.source_window_start,
                source_window_end=source_row.source_window_end,
                counts=source_row.counts,
                eligible=True,
                ineligible_reasons=[],
            )
        )
    return control
