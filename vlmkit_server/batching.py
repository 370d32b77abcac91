"""Dynamic batching: requests that arrive within a short window share one model call.

One :class:`DynamicBatcher` serves one (model, task). Requests wait in a bounded queue; a worker
thread takes the first, waits up to ``window_ms`` for more (up to ``max_batch``), and runs the batch
function once for all of them. A full queue refuses new work at once (:class:`QueueFull`, which the
server answers with 429) instead of letting latency grow without bound. When a batch fails, its
items are retried one by one, so one bad input fails only its own request.

Models are not guaranteed to be thread-safe, so batchers of one model share its lock. A model that
lives elsewhere (Ray Serve replicas, a remote server) takes several calls at once: its batchers run
``workers`` threads and no lock, so that many batches are in flight together.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DynamicBatcher", "QueueFull", "ShuttingDown"]


class QueueFull(Exception):
    """The batcher's queue is at capacity."""


class ShuttingDown(Exception):
    """The batcher no longer takes work."""


@dataclass
class _Job:
    item: Any
    future: Future[Any] = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(
        self,
        fn: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch: int = 16,
        window_ms: float = 5.0,
        max_queue: int = 256,
        lock: contextlib.AbstractContextManager[Any] | None = None,
        name: str = "batcher",
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or window_ms < 0 or workers < 1:
            raise ValueError("max_batch, max_queue and workers must be >= 1 and window_ms >= 0")
        self.fn, self.max_batch, self.window = fn, max_batch, window_ms / 1000.0
        self.lock = lock or threading.Lock()
        self.name = name
        self.on_batch = on_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._closing = threading.Lock()  # no job can be queued behind the worker's stop signal
        self._workers = [
            threading.Thread(target=self._run, name=f"vlmkit-batch-{name}-{i}", daemon=True) for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def submit(self, item: Any) -> Future[Any]:
        """Queue one item; the future resolves to its result (or raises its error)."""
        job = _Job(item)
        with self._closing:
            if self._closed:
                raise ShuttingDown(f"{self.name} is shutting down")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self.name}: {self._queue.maxsize} requests already waiting") from None
        return job.future

    async def __call__(self, item: Any) -> Any:
        return await asyncio.wrap_future(self.submit(item))

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, finish what is queued, and stop the worker."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
        for _ in self._workers:
            self._queue.put(None)  # one stop signal a worker; a worker that takes one stops taking work
        deadline = time.perf_counter() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.perf_counter()))

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.window
            stop = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            self._execute(batch)
            if stop:  # every job was queued before the stop signals, so the other workers take what is left
                return

    def _execute(self, batch: list[_Job]) -> None:
        live = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self.on_batch is not None:
            self.on_batch(len(live))
        try:
            with self.lock:
                results = list(self.fn([job.item for job in live]))
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(live)} items")
        except Exception as failure:  # noqa: BLE001 - find the failing item(s): run each alone
            if len(live) == 1:
                self._settle(live[0], None, failure)
                return
            for job in live:
                try:
                    with self.lock:
                        (result,) = self.fn([job.item])
                except Exception as error:  # noqa: BLE001
                    self._settle(job, None, error)
                else:
                    self._settle(job, result, None)
            return
        for job, result in zip(live, results, strict=True):
            self._settle(job, result, None)

    @staticmethod
    def _settle(job: _Job, result: Any, error: BaseException | None) -> None:
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

