"""Dynamic batching: requests that arrive together are merged into one model call.

A request submits its items (images, or rows of a V2 tensor); one worker thread takes the oldest
request, then takes the requests already queued and those that arrive within ``max_delay_s`` of it
while the merged batch stays within ``max_batch`` items, and runs ``run_batch`` once on all of them.
It waits for late arrivals only while some request is on its way (announced with ``coming()``: its
body is being read or decoded): a lone request is not delayed, and under load the queue fills while
the model runs. A request is never split: one larger than ``max_batch`` runs alone. ``max_batch=1``
turns batching off (one call per request, in arrival order, on the same single worker: the
comparison the benchmark makes).

One worker thread means one model call at a time: the model's own threads (ONNX Runtime's intra-op
pool, PyTorch's) use the cores, and requests do not compete for them.

If a merged call fails, each request of it is run again alone, so a bad request fails by itself
and the requests merged with it still get their answers.
"""
from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field


@dataclass
class _Job:
    items: list
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """``run_batch(items) -> results`` (one result per item, in order) on merged requests."""

    def __init__(self, run_batch, *, max_batch: int = 16, max_delay_s: float = 0.002, on_batch=None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.run_batch, self.max_batch, self.max_delay_s = run_batch, int(max_batch), max(0.0, float(max_delay_s))
        self.on_batch = on_batch  # called with the number of items of every model call (metrics)
        self._queue: queue.Queue = queue.Queue()
        self._held: _Job | None = None  # taken from the queue but did not fit the previous batch
        self._thread: threading.Thread | None = None
        self._incoming, self._lock = 0, threading.Lock()  # requests on their way (coming())

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "Batcher":
        if not self.running:
            self._thread = threading.Thread(target=self._work, name="classifier-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the requests already queued, then stop the worker."""
        if self.running:
            self._queue.put(None)
            self._thread.join(timeout)

    @contextlib.contextmanager
    def coming(self):
        """Around the reading and decoding of a request that will submit: a batch waits for it (up to
        ``max_delay_s``) rather than leaving without it."""
        with self._lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._lock:
                self._incoming -= 1

    def submit(self, items: list) -> Future:
        """Queue ``items``; the future holds their results (or the exception of their call)."""
        job = _Job(list(items))
        if not self.running:
            job.future.set_exception(RuntimeError("the batcher is not running"))
        else:
            self._queue.put(job)
        return job.future

    async def run(self, items: list, timeout: float | None = None) -> list:
        """``submit`` from a coroutine; after ``timeout`` seconds the request is dropped from the queue
        (if not yet running) and ``asyncio.TimeoutError`` is raised."""
        future = self.submit(items)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    # --- the worker
    def _work(self) -> None:
        while True:
            first = self._held or self._queue.get()
            self._held = None
            if first is None:
                return
            jobs, stopping = self._gather(first)
            self._run(jobs)
            if stopping:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and those that join it within the delay, up to max_batch items."""
        jobs, size = [first], len(first.items)
        deadline = first.arrived + self.max_delay_s
        while size < self.max_batch:
            wait = deadline - time.monotonic() if self._incoming else 0.0
            try:
                job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            if size + len(job.items) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            size += len(job.items)
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]  # timed-out requests are dropped
        if not jobs:
            return
        try:
            results = self._call([item for j in jobs for item in j.items])
        except Exception as err:  # noqa: BLE001 - handed to the request(s) that caused it
            if len(jobs) == 1:
                jobs[0].future.set_exception(err)
                return
            for job in jobs:  # find the culprit: every request alone
                try:
                    job.future.set_result(self._call(job.items))
                except Exception as single:  # noqa: BLE001
                    job.future.set_exception(single)
            return
        start = 0
        for job in jobs:
            job.future.set_result(results[start:start + len(job.items)])
            start += len(job.items)

    def _call(self, items: list) -> list:
        if self.on_batch is not None:
            self.on_batch(len(items))
        results = list(self.run_batch(items))
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        return results
