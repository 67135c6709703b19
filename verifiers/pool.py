"""The verifier pool: sandboxed jobs on a fixed set of workers, with async and batch entry points.

Each worker is a thread that starts one fresh sandboxed process per job (nothing untrusted outlives its
job, and no state leaks between jobs; the cost is about 5-10 ms per job here). The queue is bounded, so a
caller producing faster than the workers blocks instead of piling up memory. A job whose sandbox fails to
start (not the job's fault) is retried once, then reported as `error`; a job never hangs the pool: the
wall clock is enforced by killing the job's process group.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from synthkiln.verifiers.checks import HARNESS, Job, Verdict, Verifier
from synthkiln.verifiers.sandbox import RESULT_FD, Execution, Limits, Mode, Sandbox


class VerifierPool:
    def __init__(
        self,
        workers: int | None = None,
        sandbox: Mode = "bubblewrap",
        limits: Limits | None = None,
        queue: int = 256,
    ) -> None:
        self.sandbox = Sandbox(sandbox, limits)
        self.workers = workers or os.cpu_count() or 1
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="synthkiln-verify")
        self._slots = threading.BoundedSemaphore(queue)
        self._harness = HARNESS.read_text()
        self.retried = 0

    def describe(self) -> dict[str, Any]:
        return {**self.sandbox.describe(), "workers": self.workers}

    # -- entry points ------------------------------------------------------------------------------

    def submit(self, verifier: Verifier, row: dict[str, Any]) -> Future[Verdict]:
        """Queue one check (blocks while the queue is full)."""
        self._slots.acquire()
        future = self._executor.submit(self._check, verifier, row)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def check_batch(self, verifier: Verifier, rows: Sequence[dict[str, Any]]) -> list[Verdict]:
        if verifier.batched:  # models judge a batch at once, in this process
            return verifier.verdicts(list(rows))
        if verifier.rows_per_job > 1 and len(rows) > 1:
            size = verifier.rows_per_job
            groups = [list(rows[i : i + size]) for i in range(0, len(rows), size)]
            futures = [self._executor.submit(self._check_group, verifier, group) for group in groups]
            return [verdict for future in futures for verdict in future.result()]
        return [future.result() for future in [self.submit(verifier, row) for row in rows]]

    async def check(self, verifier: Verifier, row: dict[str, Any]) -> Verdict:
        """Await one check from asyncio code (the event loop is never blocked on the sandbox)."""
        if verifier.batched:
            return (await asyncio.to_thread(verifier.verdicts, [row]))[0]
        return await asyncio.wrap_future(await asyncio.to_thread(self.submit, verifier, row))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work --------------------------------------------------------------------------------------

    def _check(self, verifier: Verifier, row: dict[str, Any]) -> Verdict:
        try:
            job = verifier.job(row)
        except Exception as exc:  # a malformed row is that row's problem, not the pool's
            return Verdict(verifier.name, "error", f"{type(exc).__name__}: {exc}"[:300])
        if isinstance(job, Verdict):
            return job
        execution = self._run(job)
        if isinstance(execution, str):
            return Verdict(verifier.name, "error", execution, sandbox=self.sandbox.mode)
        verdict = verifier.decide(row, job, execution)
        verdict.sandbox = self.sandbox.mode
        return verdict

    def _check_group(self, verifier: Verifier, rows: list[dict[str, Any]]) -> list[Verdict]:
        decided, job = verifier.group(rows)
        pending = [i for i, verdict in enumerate(decided) if verdict is None]
        if job is None:
            return decided  # type: ignore[return-value]
        execution = self._run(job)
        if isinstance(execution, str) or (execution.timed_out and len(pending) > 1):
            # one pathological row must not fail the others: they are checked one by one
            verdicts = [self._check(verifier, rows[i]) for i in pending]
        else:
            verdicts = verifier.decide_group([rows[i] for i in pending], job, execution)
            for verdict in verdicts:
                verdict.sandbox = self.sandbox.mode
        for index, verdict in zip(pending, verdicts, strict=True):
            decided[index] = verdict
        return decided  # type: ignore[return-value]

    def _run(self, job: Job) -> Execution | str:
        """The job's execution, starting the sandbox a second time if it failed to start; else why not."""
        for attempt in range(2):
            execution = self.sandbox.run(
                ["python", "-I", "-S", "-B", "harness.py", job.mode, RESULT_FD],
                {"harness.py": self._harness},
                job.stdin(),
                mounts=job.mounts,
            )
            if execution.sandbox_error is None:
                return execution
            self.retried += attempt == 0
        return f"sandbox failed twice: {execution.sandbox_error}"[:300]
