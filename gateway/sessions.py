"""Live sessions: each lives in one block its task enters; the registry ends them (deadlines, kills, revocations)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.config import Login, Target
from gateway.detect.engine import Detector
from gateway.policy import ScopePolicy
from gateway.store import SessionRecord, Store
from gateway.tokens import Claims

log = logging.getLogger(__name__)

WarnFn = Callable[[str], None]
Clock = Callable[[], float]

EXPIRED = "access window expired"
END_LIMIT = 15.0
"""Bound on one session's teardown (closing sides, the detached sweep): a hung peer cannot hold an end."""


class SessionEnded(Exception):
    """Raised inside a session's block to end it with `reason` (an upstream that failed, a refused setup)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sides(Protocol):
    """A front end's connections: `close` tells the client, ends the upstream side and closes both."""

    async def close(self, reason: str) -> None: ...


class Sealable(Protocol):
    """A session's recording: `seal` writes its end and returns its SHA-256 (raises when it cannot)."""

    async def seal(self, reason: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """What an end-listener receives: the session as it ended, why, when, and its recording's hash."""

    session: LiveSession
    reason: str
    ended_at: float
    recording_sha256: str | None
    killed_by: str | None


EndListener = Callable[[SessionEnd], Awaitable[None]]


@dataclass(eq=False)
class LiveSession:
    """One connection through the gateway; its life is `lifetime()`, entered once by the task that serves it.

    A kill, revocation or expiry cancels that task; leaving the block (for any reason) runs `_end` once:
    close both sides (ending the upstream side), seal the recording, write `session.end`, call the end-listeners.
    """

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
    killed_by: str | None = None
    sides: Sides | None = None
    recording: Sealable | None = None
    _warn: WarnFn | None = None
    _owner: asyncio.Task[Any] | None = None
    _cancelled = False  # we cancelled the owner (a kill): that cancellation ends here, not in the caller
    _ending = False  # the owner is in _end: a late kill must not cancel the teardown
    _ended: asyncio.Future[SessionEnd] | None = None
    _kill_audit: asyncio.Future[None] | None = None  # session.kill being written; session.end waits for it
    _timers: list[asyncio.TimerHandle] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _after: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

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
        """True once the session is ending (its reason is fixed)."""
        return self.end_reason is not None

    @property
    def killed(self) -> bool:
        """True when a kill, revocation or expiry ended it (the client is told why)."""
        return self.killed_by is not None

    def attach(self, *, sides: Sides | None = None, recording: Sealable | None = None,
               warn: WarnFn | None = None) -> None:  # fmt: skip
        """The front end names what the end closes and seals, and how to warn the user (each replaces the last)."""
        if sides is not None:
            self.sides = sides
        if recording is not None:
            self.recording = recording
        if warn is not None:
            self._warn = warn

    def after_end(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work` once the end is recorded and waiters are told (checks that must not delay the end)."""
        self._after.append(work)

    def ending(self, reason: str) -> None:
        """Say why the block is about to return (client left, upstream closed); the first reason given wins."""
        if self.end_reason is None:
            self.end_reason = reason

    async def __aenter__(self) -> LiveSession:
        """Enter the session's block in the task that serves it: its timers start, kills cancel this task."""
        self._owner = asyncio.current_task()
        self._ended = asyncio.get_running_loop().create_future()
        if self.end_reason is None:
            self.registry._arm(self)
        else:  # killed during admission, before anything could be cancelled: end at the first await
            self._cancelled = True
            assert self._owner is not None
            self._owner.cancel()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        """End the session once, whatever ended the block; True when the block's exception ends here."""
        return await self._exit(exc)

    async def _exit(self, exc: BaseException | None) -> bool:
        if isinstance(exc, asyncio.CancelledError):
            if not self._cancelled:  # cancelled from outside (shutdown of the task itself): end, then pass it on
                await self._end_shielded("session task cancelled")
                return False
            if self._owner is not None and self._owner.cancelling():
                self._owner.uncancel()
            reason = "session killed"
        elif isinstance(exc, SessionEnded):
            reason = exc.reason
        elif isinstance(exc, Exception):
            log.error("session %s failed", self.id, exc_info=exc)
            reason = f"gateway error ({type(exc).__name__})"
        elif exc is not None:
            await self._end_shielded("gateway stopped")
            return False
        else:
            reason = "session ended"
        await self._end_shielded(reason)
        return True

    async def _end_shielded(self, reason: str) -> None:
        # A cancellation from outside (shutdown) during the teardown must not leave it half-done.
        await asyncio.shield(asyncio.ensure_future(self._end(reason)))

    async def _end(self, fallback: str) -> None:
        """Close both sides, seal the recording, record the end, tell the end-listeners. Runs once."""
        if self._ending:
            return
        self._ending = True
        self.ending(fallback)
        for t in self._timers:
            t.cancel()
        reason = self.end_reason or fallback
        if self.sides is not None:
            try:
                await asyncio.wait_for(self.sides.close(reason), END_LIMIT)
            except Exception as exc:
                log.error("session %s: closing its connections failed: %r", self.id, exc)
        sha: str | None = None
        if self.recording is not None:
            try:
                sha = await self.recording.seal(reason)
            except Exception as exc:
                reason = f"{reason}; recording failed: {exc}"
        self.end_reason = reason
        self.registry._forget(self)
        now = self.registry.clock()
        data = {
            "reason": reason,
            "duration": round(now - self.started_at, 3),
            "stats": self.stats,
            "recording": str(self.recording_path),
            "recording_sha256": sha,
        }
        first = True
        try:
            first = await self.store.end_session(
                self.id, ended_at=now, reason=reason, recording_sha256=sha, stats=self.stats
            )
        except Exception as exc:  # a shared store keeps it in its spool; the event is still tried on its own
            log.error("session %s: could not store its end: %s", self.id, type(exc).__name__)
        if self._kill_audit is not None:
            await asyncio.shield(self._kill_audit)
        try:
            # Ended already: a surviving replica reaped it while this one was cut off (frozen, partitioned).
            # One session.end per session; this replica's own teardown (its recording hash) is session.closed.
            await self.store.append(
                "session.end" if first else "session.closed",
                actor=self.user,
                session=self.id,
                grant=self.claims.jti,
                target=self.target.name,
                data=self._with_workload(data),
            )
        except Exception as exc:
            log.error("session %s: could not record its end: %s", self.id, type(exc).__name__)
        end = SessionEnd(self, reason, now, sha, self.killed_by)
        for listener in list(self.registry.end_listeners):
            try:
                await listener(end)
            except Exception:
                log.exception("session %s: end-listener failed", self.id)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(end)
        if self._after:
            finishing = asyncio.get_running_loop().create_future()
            self.registry.finishing.add(finishing)  # a shutdown waits for it before closing the store
            try:
                for work in self._after:
                    try:
                        await asyncio.wait_for(work(), END_LIMIT)
                    except Exception as exc:
                        log.error("session %s: after-end work failed: %r", self.id, exc)
            finally:
                finishing.set_result(None)
                self.registry.finishing.discard(finishing)
        pending = [t for t in self._tasks if t is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=END_LIMIT)

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

    def kill_soon(self, reason: str) -> None:
        """Kill from a callback (a verdict, a tripwire, a failed recording) without waiting."""
        self._spawn(self.kill(reason))

    async def _audit_kill(self, reason: str, by: str) -> None:
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

    async def kill(self, reason: str, *, by: str = "gateway") -> None:
        """End the session now: audit the kill, cancel the session's task; returns once it has ended."""
        if self.end_reason is None:
            self.end_reason, self.killed_by = reason, by
            # The cut does not wait for the audit chain (many kills at once queue on its lock); session.end
            # waits for this row, so the chain still reads kill, then end.
            self._kill_audit = asyncio.ensure_future(self._audit_kill(reason, by))
            self.alert("session.killed", f"session {self.id} of {self.user} on {self.target.name} killed: {reason}",
                       reason=reason)  # fmt: skip
            if self._owner is not None and not self._ending and not self._owner.done():
                self._cancelled = True
                self._owner.cancel()
        if self._owner is None or self._owner is asyncio.current_task() or self._ended is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._ended), END_LIMIT + 5)
        except TimeoutError:
            log.warning("session %s: did not end within %s s of its kill", self.id, END_LIMIT + 5)


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
        self.end_listeners: list[EndListener] = []
        """Called once per session, after its `session.end` is stored, with the final SessionEnd (receipts)."""
        self.finishing: set[asyncio.Future[None]] = set()
        """Ended sessions still doing their after-end work (the detached-process sweep)."""

    def __len__(self) -> int:
        return len(self._live)

    def add(self, s: LiveSession) -> None:
        """Register a session (its timers start when its block is entered)."""
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
            s.kill_soon(EXPIRED)
            return
        if left > self.warn_before:
            s._timers.append(loop.call_later(left - self.warn_before, self._warn, s))
        s._timers.append(loop.call_later(left, s.kill_soon, EXPIRED))

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
        """One pass: pick up revocations and kill requests made by other processes (CLI, other replicas).

        The process's scheduler runs it every 0.25 s (the `revocation-sweep` job, app.py).
        """
        if not self._live:
            return
        grants = {s.claims.jti for s in self._live.values()}
        revoked = sorted(await self.store.revoked_grant_ids(grants))
        kills = await self.store.kill_requests(list(self._live))
        # All at once: one at a time, a hundred revocations would wait on each other's session ends.
        await asyncio.gather(*(self._revoked(gid) for gid in revoked))
        await asyncio.gather(*(self.kill(sid, reason, by="gateway") for sid, reason in kills.items()))

    async def _revoked(self, gid: str) -> None:
        g = await self.store.get_grant(gid)
        why = f"grant revoked: {g.revoke_reason}" if g and g.state == "revoked" else "grant ended"
        await self.revoke(gid, why, by=(g.revoked_by or "gateway") if g else "gateway")

    async def close_all(self, reason: str) -> None:
        """Shutdown: end every live session (each through its own block's exit), then wait for their
        after-end work, which still writes to the store."""
        await asyncio.gather(*(s.kill(reason) for s in list(self._live.values())), return_exceptions=True)
        if self.finishing:
            await asyncio.wait(list(self.finishing), timeout=END_LIMIT)


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
