"""Keeping teachers fed: one driver thread per teacher, requests in through an inbox, results out.

A driver fills its teacher up to `max_in_flight` requests, polls it, and hands each finished request
to whoever asked: the pipeline (through the job's `deliver`) or a caller of `generate` on any thread
(a judge that shares the teacher's engine). It never waits for a batch to drain: as soon as a
request finishes, the next one from the inbox takes its place.

It also keeps the numbers that say whether the engine was fed: requests in flight over time
(time-weighted mean and 10th percentile), the share of wall time with something generating, tokens.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from typing import Any

from synthkiln.engine.config import SamplingConfig
from synthkiln.engine.errors import SynthkilnError, TeacherError
from synthkiln.engine.teachers import Completion, EngineDied, Finished, GenerationRequest, Teacher

_IDLE_WAIT_S = 0.05  # how long an idle driver waits for work before checking whether to stop
_RESTARTS = 1  # a dead engine is started again once; a second death stops the run


@dataclass(frozen=True)
class Job:
    """A request for a teacher and where its `Finished` goes (called on the driver's thread)."""

    request: GenerationRequest
    sampling: SamplingConfig
    deliver: Callable[[Finished], None]


class Occupancy:
    """Requests in flight over time, as a time-weighted distribution, and the busy share."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # recorded by the driver, read by the pipeline
        self._last = time.monotonic()
        self._level = 0
        self._seconds_at: dict[int, float] = {}  # in-flight level -> seconds spent at it

    def record(self, level: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._seconds_at[self._level] = self._seconds_at.get(self._level, 0.0) + now - self._last
            self._last, self._level = now, level

    def busy_seconds(self) -> float:
        """Seconds so far with at least one request in flight."""
        self.record(self._level)
        with self._lock:
            return sum(seconds for level, seconds in self._seconds_at.items() if level > 0)

    def summary(self) -> dict[str, float | None]:
        self.record(self._level)
        with self._lock:
            seconds_at = dict(self._seconds_at)
        total = sum(seconds_at.values())
        if total <= 0:
            return {"mean_in_flight": None, "p10_in_flight": None, "busy_share": None, "busy_seconds": 0.0}
        mean = sum(level * seconds for level, seconds in seconds_at.items()) / total
        p10, below = 0, 0.0
        for level in sorted(seconds_at):
            below += seconds_at[level]
            if below >= 0.1 * total:
                p10 = level
                break
        busy = total - seconds_at.get(0, 0.0)
        return {
            "mean_in_flight": round(mean, 2),
            "p10_in_flight": p10,
            "busy_share": round(busy / total, 4),
            "busy_seconds": round(busy, 3),
        }


class TeacherDriver:
    """Feeds one teacher from its own thread (see the module docstring). Start it, `put` jobs or call
    `generate`, then `close`; a teacher failure is raised by `check` (and by `generate`)."""

    def __init__(self, teacher: Teacher, max_in_flight: int | None = None) -> None:
        self.teacher = teacher
        self.max_in_flight = max_in_flight or teacher.default_in_flight
        self._inbox: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._cancel, self._cancelled = threading.Event(), threading.Event()
        self._failure: BaseException | None = None
        self._keys = itertools.count()
        self._pending = 0  # requests in flight, as last seen by the driver thread
        self.occupancy = Occupancy()
        self.requests = self.refused = self.restarts = 0
        self.prompt_tokens = self.completion_tokens = 0
        self._thread = threading.Thread(
            target=self._loop, name=f"synthkiln-teacher-{teacher.name}", daemon=True
        )
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing waiting: the teacher is not generating."""
        return self._pending == 0 and self._inbox.empty()

    def put(self, job: Job) -> None:
        self._await_cancel()  # else the cancel in progress would drop this job too
        self.check()
        self._inbox.put(job)

    def check(self) -> None:
        """Raise the teacher's failure, if it failed: a TeacherError as the user should read it, or
        anything else as the bug it is (its traceback chained)."""
        if isinstance(self._failure, SynthkilnError):
            raise TeacherError(str(self._failure)) from self._failure
        if self._failure is not None:
            raise RuntimeError(f"the driver of teacher '{self.teacher.name}' failed") from self._failure

    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig) -> list[list[Completion]]:
        """Completions for `requests`, in order, through the driver (safe from any thread)."""
        futures: list[Future[Finished]] = []
        for request in requests:
            future: Future[Finished] = Future()
            futures.append(future)
            key = f"shared-{next(self._keys)}"
            self.put(Job(replace(request, key=key), sampling, future.set_result))
        results = []
        for future in futures:
            while True:
                try:
                    finished = future.result(timeout=_IDLE_WAIT_S)
                    break
                except FutureTimeout:  # not the builtin TimeoutError before Python 3.11
                    self.check()
            if finished.refused is not None:
                raise TeacherError(f"teacher '{self.teacher.name}' refused a request: {finished.refused}")
            results.append(finished.completions)
        return results

    def stats(self) -> dict[str, Any]:
        summary = self.occupancy.summary()
        busy = summary["busy_seconds"] or 0.0
        return {
            "max_in_flight": self.max_in_flight,
            "requests": self.requests,
            "refused": self.refused,
            "restarts": self.restarts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens_per_busy_second": round(self.completion_tokens / busy, 1) if busy else None,
            **summary,
        }

    def cancel(self, wait: bool = True) -> None:
        """Drop every job not delivered yet (a run that stops early); the driver stays usable.

        Without `wait` (Ctrl-C: the commit should not wait for a batch to finish generating) the
        jobs are dropped once the teacher's current poll returns; a job `put` meanwhile waits for that.
        """
        self._cancelled.clear()
        self._cancel.set()
        if wait:
            self._await_cancel()

    def _await_cancel(self) -> None:
        while self._cancel.is_set() and not self._cancelled.wait(_IDLE_WAIT_S):
            if self._failure is not None or not self._thread.is_alive():
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        pending: dict[str, Job] = {}
        try:
            while not self._stop.is_set():
                if self._cancel.is_set():
                    self.teacher.abort()
                    pending.clear()
                    self._drain_inbox()
                    self._cancel.clear()
                    self._cancelled.set()
                while len(pending) < self.max_in_flight:
                    try:
                        job = (
                            self._inbox.get(timeout=_IDLE_WAIT_S) if not pending else self._inbox.get_nowait()
                        )
                    except queue.Empty:
                        break
                    self.teacher.submit(job.request, job.sampling)
                    pending[job.request.key] = job
                    self.requests += 1
                self._pending = len(pending)
                self.occupancy.record(len(pending))
                if not pending:
                    continue
                for finished in self._poll():
                    job = pending.pop(finished.key, None)  # type: ignore[assignment]
                    if job is None:  # a request of a cancelled run, finished as it was aborted
                        continue
                    self.refused += finished.refused is not None
                    for completion in finished.completions:
                        self.completion_tokens += completion.completion_tokens
                    self.prompt_tokens += finished.completions[0].prompt_tokens if finished.completions else 0
                    job.deliver(finished)
                self._pending = len(pending)
                self.occupancy.record(len(pending))
        except BaseException as exc:  # raised to the pipeline by `check`
            self._failure = exc
        finally:
            self.occupancy.record(0)

    def _drain_inbox(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self._inbox.get_nowait()

    def _poll(self) -> list[Finished]:
        try:
            return self.teacher.poll()
        except EngineDied as exc:
            if self.restarts >= _RESTARTS:
                raise TeacherError(
                    f"{exc}; it was restarted {self.restarts} time(s) already, so the run stops here "
                    "(everything committed so far is kept: run the same command again to resume)"
                ) from exc
            self.restarts += 1
            self.teacher.restart()
            return []
