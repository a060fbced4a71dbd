"""Micro-batching of the heavy stages across concurrent requests.

Requests are put on a bounded queue (:class:`QueueFull` when it holds ``max_queue`` waiting requests: the
server answers 503 + Retry-After). One worker thread takes the first waiting request, waits up to
``max_wait_ms`` for more (at most ``max_batch`` in all), groups them by kind (segment / embed) and class
override, and runs each group as ONE :meth:`tusss.Predictor.predict_batch` / ``embed_batch`` call, so the SAM
encoder and the DBA-CLIP window passes of the group run as single batches. ``max_batch=1`` turns batching off.
When a batch fails, its requests are re-run one by one, so an exception reaches only the request that caused
it; the worker goes on.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from tusss.errors import InputError

__all__ = ["MicroBatcher", "QueueFull", "Job"]


class QueueFull(Exception):
    """The request queue is full (answer 503 with Retry-After)."""


@dataclass
class Job:
    kind: str  # "segment" | "embed"
    image: Any
    classes: Any = None
    future: Future = field(default_factory=Future)
    t_enqueued: float = field(default_factory=time.perf_counter)

    @property
    def group(self) -> tuple:
        c = self.classes
        return (self.kind, tuple(c) if isinstance(c, (list, tuple)) else c)


class MicroBatcher:
    """Bounded queue + one worker thread (module docstring).

    Args:
        predictor: a :class:`tusss.Predictor` (``predict_batch``, ``embed_batch``).
        max_batch: most requests per model call (>= 1).
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: most waiting requests (>= 1).
        on_batch: called with (batch size, queue waits in seconds, results or None) after each model call.
    """

    def __init__(self, predictor: Any, max_batch: int = 8, max_wait_ms: float = 10.0, max_queue: int = 64,
                 on_batch: Callable[[int, list[float], list | None], None] | None = None) -> None:
        if int(max_batch) < 1 or int(max_queue) < 1 or float(max_wait_ms) < 0:
            raise InputError(f"need max_batch >= 1, max_queue >= 1, max_wait_ms >= 0; got {max_batch}, "
                             f"{max_queue}, {max_wait_ms}")
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.on_batch = on_batch
        self._q: queue.Queue[Job | None] = queue.Queue(maxsize=self.max_queue)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tusss-batcher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting (not yet taken by the worker)."""
        return self._q.qsize()

    def submit(self, kind: str, image: Any, classes: Any = None) -> Future:
        """Queue a request; returns a Future of its result. Raises :class:`QueueFull`."""
        if self._stop.is_set():
            raise QueueFull("the server is shutting down")
        job = Job(kind, image, classes)
        try:
            self._q.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.max_queue} requests are already waiting") from None
        return job.future

    def close(self, timeout: float = 60.0) -> None:
        """Finish the queued requests, then stop the worker."""
        self._stop.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ worker
    def _loop(self) -> None:
        while True:
            try:
                job = self._q.get(timeout=0.05)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if job is None:
                continue
            batch = [job]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                try:
                    nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is not None:
                    batch.append(nxt)
            groups: dict[tuple, list[Job]] = {}
            for j in batch:
                groups.setdefault(j.group, []).append(j)
            for (kind, _), jobs in groups.items():
                self._run(kind, jobs)

    def _run(self, kind: str, jobs: list[Job]) -> None:
        t0 = time.perf_counter()
        waits = [t0 - j.t_enqueued for j in jobs]
        res: list | None = None
        try:
            images = [j.image for j in jobs]
            if kind == "segment":
                res = self.predictor.predict_batch(images, classes=jobs[0].classes)
            else:
                res = self.predictor.embed_batch(images)
        except BaseException as e:
            if len(jobs) > 1:  # one bad image must not fail its batch-mates: run them one by one
                for j in jobs:
                    self._run(kind, [j])
                return
            for j in jobs:  # delivered to this request; the worker goes on
                if not j.future.done():
                    j.future.set_exception(e)
        else:
            for j, r in zip(jobs, res):
                j.future.set_result(r)
        if self.on_batch is not None:
            try:
                self.on_batch(len(jobs), waits, res)
            except Exception:  # pragma: no cover - metrics must never stop the worker
                pass
