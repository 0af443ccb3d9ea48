"""This replica in a shared store: push-woken revocation sweeps, heartbeats, and reaping replicas that went silent."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway import __version__
from gateway.services import Services
from gateway.store import REPLICA_LOST, NodeRecord

log = logging.getLogger(__name__)


class Replica:
    """Heartbeat and reaper passes as plain methods with the clock passed in (the scheduler runs `tick`)."""

    def __init__(self, svc: Services, *, clock: Callable[[], float] = time.time) -> None:
        self.svc = svc
        self.clock = clock
        self.started_at = clock()
        self._sweeping: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        """Listen for other replicas' revocations and kills (a no-op on SQLite, where the poll does it)."""
        await self.svc.store.listen(self.wake)

    def wake(self, _payload: str) -> None:
        """A revocation or kill was pushed: sweep now (coalesced: one sweep runs, at most one more follows)."""
        if self._sweeping is not None and not self._sweeping.done():
            self._again = True
            return
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        while True:
            self._again = False
            try:
                await self.svc.registry.sweep()
            except Exception:
                log.exception("pushed sweep failed; the reconcile poll retries")
            if not self._again:
                return

    async def beat(self, now: float) -> None:
        """Say this replica is alive, with its live session count."""
        node = NodeRecord(self.svc.store.node, __version__, self.started_at, now, len(self.svc.registry))
        await self.svc.store.heartbeat(node)

    async def reap(self, now: float) -> int:
        """End the sessions of replicas silent for longer than lost_after (exactly one survivor claims each)."""
        claimed = await self.svc.store.claim_lost_nodes(older_than=now - self.svc.config.lost_after, now=now)
        ended = 0
        for node, sessions in claimed.items():
            await self.svc.alerts.emit(
                "replica.lost",
                f"replica {node} stopped heartbeating; {len(sessions)} of its session(s) marked ended",
                severity="critical",
                data={"node": node, "sessions": [s.id for s in sessions]},
            )
            for s in sessions:
                ended += 1
                await self.svc.store.append(
                    "session.end",
                    actor=s.user,
                    session=s.id,
                    grant=s.grant_id,
                    target=s.target,
                    severity="warning",
                    data={"reason": REPLICA_LOST, "node": node, "recording": s.recording_path},
                )
        return ended

    async def stopped(self) -> None:
        """A clean stop: the row says so, and no survivor reaps this replica."""
        now = self.clock()
        node = NodeRecord(self.svc.store.node, __version__, self.started_at, now, 0, "stopped")
        await self.svc.store.heartbeat(node)

    async def tick(self, now: float) -> None:
        """One scheduler pass: heartbeat, then reap."""
        await self.beat(now)
        await self.reap(now)
