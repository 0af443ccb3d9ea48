"""Live sessions: each has a kill handle; the registry enforces deadlines, kills and revocations for every front end."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import Login, Target
from gateway.detect.engine import Detector
from gateway.policy import ScopePolicy
from gateway.store import SessionRecord, Store
from gateway.tokens import Claims

log = logging.getLogger(__name__)

KillFn = Callable[[str], Awaitable[None]]
WarnFn = Callable[[str], None]
Clock = Callable[[], float]

EXPIRED = "access window expired"


@dataclass(eq=False)
class LiveSession:
    """One connection through the gateway. Deliberately not reusable: close() tears it down for good."""

    id: str
    claims: Claims
    target: Target
    login: Login
    policy: ScopePolicy
    protocol: str
    client_addr: str
    started_at: float
    recording_path: Path
    store: Store
    registry: SessionRegistry
    stats: dict[str, Any] = field(default_factory=dict)
    end_reason: str | None = None
    _kill: KillFn | None = None
    _warn: WarnFn | None = None
    _timers: list[asyncio.TimerHandle] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _killing: bool = False

    def __repr__(self) -> str:
        return f"LiveSession({self.id}, {self.claims.sub}@{self.target.name}/{self.claims.scope})"

    @property
    def user(self) -> str:
        """The engineer (the token's subject)."""
        return self.claims.sub

    @property
    def scope(self) -> str:
        """The granted scope."""
        return self.claims.scope

    @property
    def deadline(self) -> float:
        """When the access window closes (the token's exp): the session ends then, whatever it is doing."""
        return float(self.claims.exp)

    @property
    def closed(self) -> bool:
        """True once the session has ended."""
        return self.end_reason is not None

    def bind(self, *, kill: KillFn, warn: WarnFn | None = None) -> None:
        """The front end says how to tear the connection down and how to warn the user; timers start now."""
        self._kill, self._warn = kill, warn
        if self._killing or self.closed:
            # Killed (revoked, expired) between admission and bind: the front end was not listening
            # yet, so tear its connection down now instead of letting it run unrecorded.
            self._spawn(kill(self.end_reason or "session ended before it was set up"))
            return
        self.registry._arm(self)

    async def audit(self, type_: str, *, severity: str = "info", **data: Any) -> None:
        """Append an audit event about this session; if it cannot be written, the session ends (fail closed)."""
        try:
            await self.store.append(
                type_,
                actor=self.user,
                session=self.id,
                grant=self.claims.jti,
                target=self.target.name,
                severity=severity,
                data=self._with_workload(data),
            )
        except Exception as exc:
            log.error("session %s: audit write failed: %s", self.id, type(exc).__name__)
            await self.kill(f"audit log unavailable ({type(exc).__name__})")

    def _with_workload(self, data: dict[str, Any]) -> dict[str, Any]:
        """A pipeline's session names its run and workflow in every event, so a reviewer sees which run did what."""
        wl = self.claims.workload
        return data if wl is None else {**data, "workload": dict(wl)}

    def audit_soon(self, type_: str, *, severity: str = "info", **data: Any) -> None:
        """Schedule an audit event without waiting (for the relay's hot path)."""
        self._spawn(self.audit(type_, severity=severity, **data))

    def alert(self, type_: str, summary: str, *, severity: str = "warning", **data: Any) -> None:
        """Raise an alert (audited and sent to the alert sinks) without waiting."""
        self._spawn(self.registry.alert(self, type_, summary, severity, data))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def warn(self, message: str) -> None:
        """Show the user a warning through the front end (a NoticeResponse, a terminal line)."""
        if self._warn is not None and not self.closed:
            self._warn(message)

    async def kill(self, reason: str, *, by: str = "gateway") -> None:
        """End the session now: audit the kill, then let the front end close both sides. Idempotent."""
        if self._killing or self.closed:
            return
        self._killing = True
        try:
            await self.store.append(
                "session.kill",
                actor=by,
                session=self.id,
                grant=self.claims.jti,
                target=self.target.name,
                severity="warning",
                data=self._with_workload({"reason": reason, "user": self.user}),
            )
        except Exception as exc:
            # The kill goes ahead without its audit row: failing open here would leave the session running.
            log.error("session %s: kill could not be audited: %s", self.id, type(exc).__name__)
        self.alert(
            "session.killed", f"session {self.id} of {self.user} on {self.target.name} killed: {reason}", reason=reason
        )
        if self._kill is not None:
            try:
                await self._kill(reason)
            except Exception:
                log.exception("session %s: front end kill failed", self.id)
        if not self.closed:
            await self.close(reason)

    async def close(self, reason: str, *, recording_sha256: str | None = None) -> None:
        """Record the end (reason, stats, recording hash) once; cancels timers and unregisters."""
        if self.closed:
            return
        self.end_reason = reason
        for t in self._timers:
            t.cancel()
        self.registry._forget(self)
        now = self.registry.clock()
        data = {
            "reason": reason,
            "duration": round(now - self.started_at, 3),
            "stats": self.stats,
            "recording": str(self.recording_path),
            "recording_sha256": recording_sha256,
        }
        try:
            await self.store.end_session(
                self.id, ended_at=now, reason=reason, recording_sha256=recording_sha256, stats=self.stats
            )
            await self.store.append(
                "session.end",
                actor=self.user,
                session=self.id,
                grant=self.claims.jti,
                target=self.target.name,
                data=self._with_workload(data),
            )
        except Exception as exc:
            log.error("session %s: could not record its end: %s", self.id, type(exc).__name__)
        # Wait for pending audit/alert tasks, but not for the task running this close (a deadline kill
        # runs inside one of them: waiting for itself would never finish).
        others = [t for t in self._tasks if t is not asyncio.current_task()]
        if others:
            await asyncio.gather(*others, return_exceptions=True)


AlertFn = Callable[[LiveSession | None, str, str, str, dict[str, Any]], Awaitable[None]]


class SessionRegistry:
    """Every live session of this process; deadlines, kills and revocations all end sessions through here."""

    def __init__(
        self, store: Store, *, clock: Clock = time.time, warn_before: float = 60.0, alert: AlertFn | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.warn_before = warn_before
        self._alert = alert
        self.detector: Detector | None = None  # set by build_services; None: no detection (tests, tools)
        self._live: dict[str, LiveSession] = {}
        # Admission against a session limit, one grant at a time: (lock, coroutines holding or waiting).
        self._admitting: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, s: LiveSession) -> None:
        """Register a session (timers start when the front end binds its kill handle)."""
        self._live[s.id] = s

    def live_count(self, grant_id: str) -> int:
        """How many sessions of this grant are live in this process."""
        return sum(1 for s in self._live.values() if s.claims.jti == grant_id)

    @asynccontextmanager
    async def admitting(self, grant_id: str) -> AsyncIterator[None]:
        """In-process guard: admissions of one grant run one at a time, so count-then-add cannot interleave."""
        lock, users = self._admitting.get(grant_id, (asyncio.Lock(), 0))
        self._admitting[grant_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._admitting[grant_id]
            if users <= 1:
                del self._admitting[grant_id]
            else:
                self._admitting[grant_id] = (lock, users - 1)

    def get(self, session_id: str) -> LiveSession | None:
        """A live session by id."""
        return self._live.get(session_id)

    def live(self) -> list[LiveSession]:
        """All live sessions."""
        return list(self._live.values())

    async def alert(self, s: LiveSession | None, type_: str, summary: str, severity: str, data: dict[str, Any]) -> None:
        """Forward an alert to the alert service (audited there)."""
        if self._alert is not None:
            await self._alert(s, type_, summary, severity, data)

    def _arm(self, s: LiveSession) -> None:
        loop = asyncio.get_running_loop()
        left = s.deadline - self.clock()
        if left <= 0:
            s._spawn(s.kill(EXPIRED))
            return
        if left > self.warn_before:
            s._timers.append(loop.call_later(left - self.warn_before, self._warn, s))
        s._timers.append(loop.call_later(left, lambda: s._spawn(s.kill(EXPIRED))))

    def _warn(self, s: LiveSession) -> None:
        left = max(0, round(s.deadline - self.clock()))
        s.warn(f"access window closes in {left} s; request a new grant to continue")

    def _forget(self, s: LiveSession) -> None:
        self._live.pop(s.id, None)

    async def kill(self, session_id: str, reason: str, *, by: str) -> bool:
        """End one live session of this process; False when it is not here."""
        s = self._live.get(session_id)
        if s is None:
            return False
        await s.kill(reason, by=by)
        return True

    async def revoke(self, grant_id: str, reason: str, *, by: str) -> int:
        """End every live session of a grant here; returns how many."""
        victims = [s for s in self._live.values() if s.claims.jti == grant_id]
        await asyncio.gather(*(s.kill(reason, by=by) for s in victims))
        return len(victims)

    async def sweep(self) -> None:
        """One pass: pick up revocations and kill requests made by other processes (CLI, other replicas)."""
        if not self._live:
            return
        grants = {s.claims.jti for s in self._live.values()}
        for gid in await self.store.revoked_grant_ids(grants):
            g = await self.store.get_grant(gid)
            why = f"grant revoked: {g.revoke_reason}" if g and g.state == "revoked" else "grant ended"
            await self.revoke(gid, why, by=(g.revoked_by or "gateway") if g else "gateway")
        for sid, reason in (await self.store.kill_requests(list(self._live))).items():
            await self.kill(sid, reason, by="gateway")

    async def watch(self, interval: float = 0.25) -> None:
        """Run `sweep` forever; revocation reaches live sessions within `interval` plus a kill."""
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session watcher pass failed")
            await asyncio.sleep(interval)

    async def close_all(self, reason: str) -> None:
        """Shutdown: end every live session."""
        await asyncio.gather(*(s.kill(reason) for s in list(self._live.values())), return_exceptions=True)


def new_session_record(s: LiveSession) -> SessionRecord:
    """The row stored at a session's start."""
    return SessionRecord(
        s.id,
        s.claims.jti,
        s.user,
        s.target.name,
        s.scope,
        s.protocol,
        s.client_addr,
        s.started_at,
        recording_path=str(s.recording_path),
    )
