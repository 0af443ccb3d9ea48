"""The one scheduler of a gateway process's periodic work, on one injected clock.

Jobs (the revocation sweep, grant expiry, pending-request expiry) are async functions of `now` run every
`every` seconds. `run_due(now)` is the whole decision: which jobs are due at `now`, run in the order they
were added, each failure logged and counted without stopping the others; `run()` only sleeps until the next
one is due. Tests drive `run_due` with a fake clock and need no sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Work = Callable[[float], Awaitable[object]]


@dataclass
class Job:
    """One periodic job: what it runs, how often, when next, and how it went."""

    name: str
    every: float
    work: Work
    next_at: float
    runs: int = 0
    failures: int = 0


class Scheduler:
    """Runs every job whose time has come; one task for all of them."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:  # fmt: skip
        self.clock = clock
        self._sleep = sleep
        self.jobs: dict[str, Job] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def every(self, seconds: float, name: str, work: Work, *, first: float = 0.0) -> Job:
        """Run `work(now)` every `seconds`; the first time `first` seconds from now (0: at the next pass)."""
        if seconds <= 0:
            raise ValueError(f"job {name}: the interval must be positive")
        if name in self.jobs:
            raise ValueError(f"job {name} is already scheduled")
        job = self.jobs[name] = Job(name, seconds, work, next_at=self.clock() + first if first else float("-inf"))
        self._wake.set()
        return job

    def cancel(self, name: str) -> None:
        """Stop scheduling a job (nothing if there is none by that name)."""
        self.jobs.pop(name, None)

    def next_due(self) -> float | None:
        """When the next job is due (None: no jobs)."""
        return min((j.next_at for j in self.jobs.values()), default=None)

    async def run_due(self, now: float) -> list[str]:
        """Run the jobs due at `now` (in the order they were added); returns their names."""
        ran: list[str] = []
        for job in list(self.jobs.values()):
            # A wall clock set back must not park a job until it catches up: never more than one interval ahead.
            if job.next_at > now + job.every:
                job.next_at = now + job.every
            if job.next_at > now:
                continue
            job.next_at = now + job.every
            job.runs += 1
            ran.append(job.name)
            try:
                await job.work(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                job.failures += 1
                log.exception("periodic job %s failed", job.name)
        return ran

    async def run(self) -> None:
        """Run due jobs forever, sleeping until the next is due."""
        while True:
            await self.run_due(self.clock())
            due = self.next_due()
            self._wake.clear()
            wait = 3600.0 if due is None else max(0.0, due - self.clock())
            sleeper = asyncio.ensure_future(self._sleep(wait))
            woken = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                woken.cancel()

    def start(self) -> None:
        """Start the scheduler's task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="scheduler")

    async def stop(self) -> None:
        """Cancel the task and wait for it (a job in progress is cancelled with it)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
