"""Query encoding for concurrent requests: micro-batched on a bounded pool of threads.

A request thread hands its query to ``BatchingEncoder.encode`` and waits. One dispatcher thread
takes the first waiting query, gathers whatever else arrives within ``wait_s`` (up to
``max_batch``) — but waits only while other requests are under way (``expecting``): a lone request
is encoded at once — and sends each model version's queries to the pool as one encode call: under
load, one forward pass serves many requests, and never more than ``workers`` run at once. The asyncio
event loop is never blocked: request handlers run in the server's thread pool.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from opslib.infra.embedding import EmbeddingEndpoint, Purpose


@dataclass
class _Pending:
    text: str
    model_version: str
    future: Future[np.ndarray]


class BatchingEncoder:
    def __init__(
        self,
        embeddings: EmbeddingEndpoint,
        *,
        workers: int,
        wait_s: float,
        max_batch: int = 64,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.observe = observe  # told each encode call's batch size (the endpoint's histogram)
        self.wait_s = wait_s
        self.max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode")
        self._slots = threading.BoundedSemaphore(workers)  # the dispatcher waits for a free worker
        self.batches = 0
        self.encoded = 0
        self._expected = 0  # requests under way that may encode soon
        self._expected_lock = threading.Lock()
        self._thread = threading.Thread(target=self._dispatch, name="encode-dispatch", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark a request under way (it will encode a query): batches wait for such requests only."""
        with self._expected_lock:
            self._expected += 1
        try:
            yield
        finally:
            with self._expected_lock:
                self._expected -= 1

    def encode(self, text: str, model_version: str) -> np.ndarray:
        """The query's vector (blocks the calling thread, not the event loop); raises what the
        endpoint raises (e.g. ``EmbeddingRefused`` when the model no longer serves)."""
        pending = _Pending(text, model_version, Future())
        self._queue.put(pending)
        return pending.future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True)

    def _gather(self, first: _Pending) -> tuple[list[_Pending], bool]:
        batch, deadline = [first], time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            if len(batch) >= self._expected and self._queue.empty():
                break  # nobody else is on the way: waiting would only add latency
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _dispatch(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._gather(first)
            by_model: dict[str, list[_Pending]] = {}
            for item in batch:
                by_model.setdefault(item.model_version, []).append(item)
            for model_version, items in by_model.items():
                self._slots.acquire()
                self._pool.submit(self._run, model_version, items)

    def _run(self, model_version: str, items: list[_Pending]) -> None:
        try:
            vectors = self.embeddings.embed([i.text for i in items], model_version, Purpose.SEARCH)
        except BaseException as error:  # every waiting request gets the same answer
            for item in items:
                item.future.set_exception(error)
        else:
            self.batches += 1
            self.encoded += len(items)
            if self.observe is not None:
                self.observe(len(items))
            for item, vector in zip(items, vectors, strict=True):
                item.future.set_result(vector)
        finally:
            self._slots.release()
