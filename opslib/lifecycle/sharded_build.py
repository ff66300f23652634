"""Encode a candidate index shard by shard (``opslib.control.shards``), alongside any other worker.

``work_shards`` is what every participant runs: stage 50's driver and any worker that finds a
candidate index being built. Each claimed shard is encoded with ``index_chunks`` under two
write guards — the release is still building this index, and the shard is still this worker's —
while a heartbeat keeps the claim. ``finish_shards`` is the driver's: work, then wait for the
shards other live workers hold (taking over any whose holder stops beating) until all are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from sqlalchemy.orm import Session
from tqdm.auto import tqdm

from opslib.control.shards import (
    claim_shard,
    complete_shard,
    renew_shard,
    shard_progress,
    shard_still_ours,
)
from opslib.corpus.indexing import index_chunks
from opslib.corpus.ingest import still_reindexing
from opslib.errors import Conflict
from opslib.infra.embedding import Purpose
from opslib.infra.heartbeat import heartbeating
from opslib.infra.logs import get_logger
from opslib.infra.workspace import Workspace

log = get_logger(__name__)


class ReindexError(Conflict):
    """The release moved on while the candidate index was being built (lost the race)."""


@dataclass
class ShardWork:
    shards: list[int] = field(default_factory=list)  # shard numbers this worker completed
    embedded: int = 0
    reused: int = 0
    lost: list[int] = field(default_factory=list)  # claims taken over while working them


def work_shards(
    ws: Workspace,
    index_name: str,
    holder: str,
    *,
    on_batch: Callable[[int], None] | None = None,
    bar: tqdm | None = None,  # type: ignore[type-arg]
) -> ShardWork:
    """Claim and encode shards of ``index_name`` until none is left to claim."""
    settings = ws.settings
    building = still_reindexing(index_name)
    work = ShardWork()
    while (claim := claim_shard(ws.db, index_name, holder, stale_after_s=settings.lease_stale_after_s)) is not None:
        ours = shard_still_ours(claim)

        def guard(session: Session, ours: Callable[[Session], bool] = ours) -> bool:
            return building(session) and ours(session)

        started = time.perf_counter()
        with heartbeating(
            partial(renew_shard, ws.db, claim),
            settings.heartbeat_interval_s,
            name=f"shard-{claim.shard_no}",
            context={"index_name": index_name, "shard": claim.shard_no},
        ):
            report = index_chunks(
                ws,
                claim.chunk_ids,
                index_name=index_name,
                model_version=claim.model_version,
                purpose=Purpose.REINDEX,
                batch_size=settings.reindex_batch_size,
                guard=guard,
                on_batch=on_batch,
            )
        if report.stopped:
            with ws.db.read() as session:
                if not building(session):
                    raise ReindexError("the release left CANDIDATE_REINDEXING while the index was being built")
            work.lost.append(claim.shard_no)  # taken over: its new holder finishes it
            continue
        seconds = time.perf_counter() - started
        if complete_shard(ws.db, claim, embedded=report.embedded, reused=report.reused, seconds=seconds):
            work.shards.append(claim.shard_no)
            work.embedded += report.embedded
            work.reused += report.reused
            if bar is not None:
                bar.update(len(claim.chunk_ids))
        else:
            work.lost.append(claim.shard_no)
        log.info(
            "shard encoded",
            extra={"index_name": index_name, "shard": claim.shard_no, "holder": holder, "seconds": round(seconds, 2)},
        )
    return work


def finish_shards(
    ws: Workspace,
    index_name: str,
    holder: str,
    *,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
) -> ShardWork:
    """Work shards, then wait for those other live workers hold, until every shard is done."""
    stale_after = ws.settings.lease_stale_after_s
    state = shard_progress(ws.db, index_name, stale_after_s=stale_after)
    bar = tqdm(
        total=state.chunks,
        initial=state.chunks_done,
        desc=f"shards of {index_name}",
        unit="chunk",
        disable=not progress,
    )
    total = ShardWork()
    building = still_reindexing(index_name)
    try:
        while True:
            work = work_shards(ws, index_name, holder, on_batch=on_batch, bar=bar)
            total.shards += work.shards
            total.embedded += work.embedded
            total.reused += work.reused
            total.lost += work.lost
            state = shard_progress(ws.db, index_name, stale_after_s=stale_after)
            bar.n = state.chunks_done
            bar.refresh()
            if state.finished:
                return total
            with ws.db.read() as session:
                if not building(session):
                    raise ReindexError("the release left CANDIDATE_REINDEXING while the index was being built")
            time.sleep(poll_s)  # others hold the rest; a holder that stops beating is taken over
    finally:
        bar.close()
