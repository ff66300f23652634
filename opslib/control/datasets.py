"""Training datasets as run control sees them: which one a run starts on, and which no longer can.

A dataset is *usable* while its stored artifact is there and matches the sha256 recorded when it
was written: ``datasets/<version>/train.jsonl`` against the checksum beside it and the
``lineage.train_sha256`` of its manifest (itself verified against its own checksum). A read that
finds it gone or changed marks the row unusable (``mark_dataset_unusable``: one transaction, a
compare-and-set on the row — the first reason stands), and an unusable dataset is never "latest
eligible" again. A training request verifies the dataset it would start on
(``choose_usable_dataset``): one that fails is marked and the next eligible one is tried; the
training stage reads its dataset verified (``open_dataset``) and marks it the same way.
"""

from __future__ import annotations

import json
from typing import IO

from sqlalchemy import select
from sqlalchemy.orm import Session

from opslib.db.engine import Database
from opslib.db.models import TrainingDataset, utcnow
from opslib.errors import IntegrityFailure, Invalid, NotFound
from opslib.infra.logs import get_logger
from opslib.infra.storage import ObjectStore

log = get_logger(__name__)
RECORDED_BY = "the dataset manifest"


class DatasetNotRegistered(NotFound):
    """No ``TrainingDataset`` row for that version."""


class UnusableReasonMissing(Invalid, ValueError):
    """A dataset is only marked unusable with the reason (it is what operators read)."""


def dataset_keys(dataset_version: str) -> tuple[str, str]:
    """(train.jsonl, manifest.json) keys of a dataset in Object Storage."""
    prefix = f"datasets/{dataset_version}"
    return f"{prefix}/train.jsonl", f"{prefix}/manifest.json"


def latest_eligible_dataset(session: Session) -> TrainingDataset | None:
    """What the training scheduler starts a run on: a query, not a storage listing.

    Latest = the newest source window (a backfill built today for an old ``as_of`` does not
    displace a dataset of newer feedback), then the newest build. A dataset marked unusable (its
    artifact gone or changed) is never picked again."""
    return session.scalars(
        select(TrainingDataset)
        .where(TrainingDataset.eligible.is_(True), TrainingDataset.unusable_at.is_(None))
        .order_by(
            TrainingDataset.source_window_end.desc(),
            TrainingDataset.created_at.desc(),
            TrainingDataset.dataset_version.desc(),
        )
        .limit(1)
    ).first()


def _expected_train_sha256(objects: ObjectStore, dataset_version: str) -> str | None:
    """The train.jsonl sha256 the dataset's manifest records (its manifest verified first)."""
    _, manifest_key = dataset_keys(dataset_version)
    manifest = json.loads(objects.read_verified(manifest_key))
    lineage = manifest.get("lineage") if isinstance(manifest, dict) else None
    value = lineage.get("train_sha256") if isinstance(lineage, dict) else None
    return value if isinstance(value, str) else None


def check_dataset(objects: ObjectStore, dataset_version: str) -> str:
    """Verify the dataset's stored artifact (streamed, nothing kept); its train.jsonl's sha256.
    ``IntegrityFailure`` naming the key if it is gone or changed."""
    train_key, _ = dataset_keys(dataset_version)
    return objects.check(train_key, _expected_train_sha256(objects, dataset_version), recorded_by=RECORDED_BY)


def open_dataset(db: Database, objects: ObjectStore, dataset_version: str) -> IO[bytes]:
    """A verified private copy of the dataset's train.jsonl (``ObjectStore.open_verified``): what
    the caller reads is what was verified. One that fails is marked unusable, then the
    ``IntegrityFailure`` naming its key is raised."""
    train_key, _ = dataset_keys(dataset_version)
    try:
        return objects.open_verified(
            train_key, _expected_train_sha256(objects, dataset_version), recorded_by=RECORDED_BY
        )
    except IntegrityFailure as failure:
        mark_dataset_unusable(db, dataset_version, str(failure))
        raise


def mark_dataset_unusable(db: Database, dataset_version: str, reason: str) -> bool:
    """Mark the dataset unusable with ``reason``, in one transaction on its locked row: True if this
    call marked it, False if it already was (the first reason and time stand)."""
    if not reason or not reason.strip():
        raise UnusableReasonMissing(f"dataset {dataset_version}: marking it unusable needs the reason")
    with db.transaction() as session:
        row = session.scalars(
            select(TrainingDataset).where(TrainingDataset.dataset_version == dataset_version).with_for_update()
        ).one_or_none()
        if row is None:
            raise DatasetNotRegistered(f"dataset {dataset_version}: not registered")
        if row.unusable_at is not None:
            return False
        row.unusable_reason = reason.strip()[:4000]
        row.unusable_at = utcnow()
    log.warning("dataset marked unusable", extra={"dataset_version": dataset_version, "reason": reason[:500]})
    return True


def choose_usable_dataset(db: Database, objects: ObjectStore) -> tuple[TrainingDataset | None, list[str]]:
    """The latest eligible dataset whose artifact verifies, and what was skipped on the way: each
    eligible dataset that fails its check is marked unusable (``"<version>: <reason>"`` in the
    list) and the next one is tried. (None, skipped) when none is left."""
    skipped: list[str] = []
    tried: set[str] = set()
    while True:
        with db.read() as session:
            dataset = latest_eligible_dataset(session)
        if dataset is None or dataset.dataset_version in tried:
            return None, skipped
        tried.add(dataset.dataset_version)
        try:
            check_dataset(objects, dataset.dataset_version)
            return dataset, skipped
        except IntegrityFailure as failure:
            mark_dataset_unusable(db, dataset.dataset_version, str(failure))
            skipped.append(f"{dataset.dataset_version}: {failure}")


def no_usable_dataset_reason(skipped: list[str]) -> str:
    """Why a training request started no run: no eligible dataset, or none that verifies."""
    if not skipped:
        return "no eligible training dataset: no run started"
    return (
        "no usable eligible training dataset: no run started; marked unusable now: "
        + "; ".join(skipped)
        + " (build a new dataset: `opsbench generate-dataset`)"
    )
