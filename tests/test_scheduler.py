"""The scheduler's decisions on a fake clock (no sleeps), and one real run through a gateway process's App."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.scheduler import Scheduler


class Calls:
    """A job that records the `now` it was called with, and fails when told to."""

    def __init__(self, fail: bool = False) -> None:
        self.at: list[float] = []
        self.fail = fail

    async def __call__(self, now: float) -> None:
        self.at.append(now)
        if self.fail:
            raise RuntimeError("boom")


async def test_jobs_run_when_due_in_order_on_the_injected_clock() -> None:
    s = Scheduler(clock=lambda: 1000.0)
    fast, slow = Calls(), Calls()
    s.every(0.25, "fast", fast)
    s.every(5.0, "slow", slow)
    assert await s.run_due(1000.0) == ["fast", "slow"]  # both at the first pass, in the order added
    assert await s.run_due(1000.1) == []
    assert await s.run_due(1000.25) == ["fast"]
    assert s.next_due() == 1000.5
    for i in range(2, 21):
        await s.run_due(1000.0 + i * 0.25)
    assert await s.run_due(1005.0) == []  # fast ran at 1005.0 in the loop above; slow is due at 1005.0 too
    assert slow.at == [1000.0, 1005.0] and len(fast.at) == 21
    assert fast.at[-1] == 1005.0 and s.jobs["fast"].runs == 21


async def test_a_failing_job_is_counted_and_does_not_stop_the_others() -> None:
    s = Scheduler()
    bad, good = Calls(fail=True), Calls()
    s.every(1.0, "bad", bad)
    s.every(1.0, "good", good)
    for t in (0.0, 1.0, 2.0):
        assert await s.run_due(t) == ["bad", "good"]
    assert s.jobs["bad"].failures == 3 and good.at == [0.0, 1.0, 2.0]


async def test_a_clock_set_back_does_not_park_a_job() -> None:
    s = Scheduler()
    job = Calls()
    s.every(5.0, "expiry", job)
    await s.run_due(10_000.0)
    assert await s.run_due(100.0) == []  # the wall clock went back by hours: due again one interval later
    assert await s.run_due(105.0) == ["expiry"] and job.at == [10_000.0, 105.0]


async def test_a_first_delay_defers_the_first_run() -> None:
    s = Scheduler(clock=lambda: 50.0)
    job = Calls()
    s.every(10.0, "anchors", job, first=10.0)
    assert await s.run_due(50.0) == [] and await s.run_due(60.0) == ["anchors"] and job.at == [60.0]


def test_bad_jobs_are_refused() -> None:
    s = Scheduler()
    s.every(1.0, "a", Calls())
    with pytest.raises(ValueError, match="already scheduled"):
        s.every(1.0, "a", Calls())
    with pytest.raises(ValueError, match="positive"):
        s.every(0, "b", Calls())
    s.cancel("a")
    s.cancel("a")
    assert s.jobs == {} and s.next_due() is None


async def test_real_run_sleeps_until_due_and_wakes_for_a_new_job() -> None:
    s = Scheduler()
    slow, fast = Calls(), Calls()
    s.every(3600.0, "slow", slow)
    s.start()
    try:
        await asyncio.sleep(0.05)
        s.every(0.05, "fast", fast)  # added while the task sleeps an hour: it must wake up for it
        await asyncio.sleep(0.5)
    finally:
        await s.stop()
    assert len(slow.at) == 1 and 5 <= len(fast.at) <= 12, fast.at
    assert all(abs(t - time.time()) < 5 for t in fast.at)  # the real wall clock by default
