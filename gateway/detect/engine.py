"""The detector: baselines loaded from the store, one Watch per session, detections audited and alerted."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway.alerts import Alerts
from gateway.detect.baseline import Baselines
from gateway.detect.bursts import Bursts, BurstSettings
from gateway.detect.model import NEVER_USED, Detection
from gateway.detect.settings import DetectionSettings
from gateway.detect.usual import Usual, UsualSettings
from gateway.detect.watch import Watch, Watched
from gateway.store import GrantRecord, Store

if TYPE_CHECKING:
    from gateway.sessions import SessionEnd

log = logging.getLogger(__name__)

FLUSH_DELAY = 1.0  # seconds new baseline rows wait, to be written together
HISTORY_DAYS = 60.0  # how far back a start reads ended sessions to learn hours, volumes and grant addresses


def volumes(protocol: str, stats: Mapping[str, Any], duration: float) -> dict[str, float]:
    """A session's volumes: rows returned and bytes out (Postgres), statements or command lines a minute, length."""
    minutes = max(duration / 60.0, 1.0)  # a 5-second session of 3 statements is not 36 a minute
    if protocol == "postgres":
        return {
            "rows": float(stats.get("rows") or 0),
            "bytes": float(stats.get("bytes_out") or 0),
            "rate": float(stats.get("statements") or 0) / minutes,
            "duration": duration,
        }
    return {"rate": float(stats.get("commands") or 0) / minutes, "duration": duration}


class Detector:
    """Baselines for every (user, target); flags first uses after warm-up and workflow anomalies."""

    def __init__(
        self, settings: DetectionSettings, store: Store, alerts: Alerts, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = store
        self.alerts = alerts
        self.clock = clock
        self.baselines = Baselines(settings.warmup_sessions)
        self.usual = Usual(UsualSettings(factor=settings.volume_factor))
        self.bursts = Bursts(BurstSettings(settings.burst_denials, settings.burst_errors, settings.burst_sessions,
                                           settings.burst_window))  # fmt: skip
        self._watches: weakref.WeakKeyDictionary[Any, Watch] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsaved: list[tuple[str, str, str, str, float]] = []
        self._flush: asyncio.TimerHandle | None = None

    async def load(self) -> Detector:
        """Read what the store holds: sessions per user and target, everything seen, recent sessions' shape."""
        self.baselines.load(await self.store.session_history(), await self.store.baseline_seen())
        # Hours, volumes and grant addresses are learned again from the sessions' own records (oldest first).
        recent = await self.store.list_sessions(since=self.clock() - HISTORY_DAYS * 86_400)
        for r in reversed(recent):
            self.usual.started(r.user, r.target, r.id, r.started_at)
            self.bursts.address_of(r.grant_id, r.client_addr)
            if r.ended_at is not None:
                self.usual.ended(r.user, r.target, r.id, volumes(r.protocol, r.stats, r.ended_at - r.started_at))
        return self

    def watch(self, s: Watched) -> Watch:
        """The session's watch; the first call counts the session and checks whether its target is new."""
        w = self._watches.get(s)
        if w is None:
            w = self._watches[s] = Watch(self, s)
        return w

    async def on_session_end(self, end: SessionEnd) -> None:
        """An end-listener: compare the session's volumes with the limits it started with, then learn them."""
        s = end.session
        w = self._watches.get(s)
        if w is None:
            return
        found = self.usual.ended(
            w.user, w.target, s.id, volumes(s.protocol, s.stats, end.ended_at - s.started_at), w.limits
        )
        for d in found:
            if w.rules.on(d.rule):
                await self.emit(Detection(d.rule, d.severity, d.explanation, d.user, d.target, s.id,
                                          round(end.ended_at - s.started_at, 3)), grant=s.claims.jti)  # fmt: skip

    async def grant_expired(self, g: GrantRecord) -> None:
        """A grant ran out: one approved (or break-glass) and never used was access that was not needed."""
        if not self.settings.on(NEVER_USED) or await self.store.list_sessions(grant_id=g.id):
            return
        hours = (g.expires_at - g.issued_at) / 3600
        how = "break-glass grant" if g.break_glass else f"grant approved by {', '.join(g.approvers) or 'nobody'}"
        why = f"{g.user}'s {how} {g.id} for {g.target}/{g.scope} expired after {hours:.1f} h without being used"
        await self.emit(Detection(NEVER_USED, "info", why, g.user, g.target, request=g.request_id or ""), grant=g.id)

    def found(self, d: Detection) -> None:
        """Audit and alert a detection without waiting (the hot path never awaits)."""
        self._spawn(self.emit(d))

    async def emit(
        self,
        d: Detection,
        *,
        grant: str = "",
        alert: str = "detection",
        actor: str = "",
        data: dict[str, Any] | None = None,
    ) -> int | None:
        """One `detection` audit event, then the alert (type `alert`; the sinks and alert file get it); its seq."""
        try:
            ev = await self.store.append(
                "detection", actor=d.user, session=d.session, grant=grant, target=d.target, severity=d.severity,
                data={**d.data(), **(data or {})},
            )  # fmt: skip
        except Exception as exc:
            log.error("detection %s could not be audited: %s", d.rule, type(exc).__name__)
            return None
        extra = {"rule": d.rule, "detection_seq": ev.seq, "offset": d.offset, "link": d.link(), **(data or {})}
        await self.alerts.emit(
            alert, d.explanation, severity=d.severity, actor=actor or d.user, session=d.session, grant=grant,
            target=d.target, data=extra,
        )  # fmt: skip
        return ev.seq

    def remember(self, user: str, target: str, kind: str, value: str) -> None:
        """Persist something new in a baseline (so a restart keeps it), batched off the hot path."""
        self._unsaved.append((user, target, kind, value, self.clock()))
        if self._flush is None:
            # One write a second at most, never in the middle of the relay's own work (a kill's teardown).
            self._flush = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._save)

    def _save(self) -> None:
        self._flush = None
        rows, self._unsaved = self._unsaved, []
        if rows:
            self._spawn(self._write(rows))

    async def _write(self, rows: list[tuple[str, str, str, str, float]]) -> None:
        try:
            await self.store.add_baseline_seen(rows)
        except Exception as exc:
            # Lost rows are relearned (and may flag once more) after a restart; detection never ends a session.
            log.error("baseline rows could not be stored: %s", type(exc).__name__)

    async def drain(self) -> None:
        """Wait for pending audits and writes (shutdown, tests)."""
        if self._flush is not None:
            self._flush.cancel()
            self._save()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
