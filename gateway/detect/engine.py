"""The detector: baselines loaded from the store, one Watch per session, detections audited and alerted."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from gateway.alerts import Alerts
from gateway.detect.baseline import ANY_TARGET, Baselines, Seen
from gateway.detect.model import (
    FIRST_COMMAND,
    FIRST_SCHEMA,
    FIRST_SHAPE,
    FIRST_TABLE,
    FIRST_TARGET,
    Detection,
)
from gateway.detect.settings import DetectionSettings
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.pg.sql.inspector import Inspection

log = logging.getLogger(__name__)

_KNOWN = Seen.KNOWN
FLUSH_DELAY = 1.0  # seconds new baseline rows wait, to be written together
_WHAT = {
    FIRST_TABLE: "read or wrote table",
    FIRST_SCHEMA: "used schema",
    FIRST_SHAPE: "ran a statement shaped like",
    FIRST_COMMAND: "ran",
}


class _Target(Protocol):
    @property
    def name(self) -> str: ...


class Watched(Protocol):
    """What the detector needs of a live session."""

    id: str
    started_at: float

    @property
    def user(self) -> str: ...
    @property
    def target(self) -> _Target: ...


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
        self._watches: weakref.WeakKeyDictionary[Any, Watch] = weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsaved: list[tuple[str, str, str, str, float]] = []
        self._flush: asyncio.TimerHandle | None = None

    async def load(self) -> Detector:
        """Read the baselines the store holds (sessions per user and target, everything seen)."""
        self.baselines.load(await self.store.session_history(), await self.store.baseline_seen())
        return self

    def watch(self, s: Watched) -> Watch:
        """The session's watch; the first call counts the session and checks whether its target is new."""
        w = self._watches.get(s)
        if w is None:
            w = self._watches[s] = Watch(self, s)
        return w

    def found(self, d: Detection) -> None:
        """Audit and alert a detection without waiting (the hot path never awaits)."""
        self._spawn(self.emit(d))

    async def emit(self, d: Detection, *, grant: str = "") -> None:
        """One `detection` audit event, then the alert (which the sinks and alert file get)."""
        try:
            ev = await self.store.append(
                "detection", actor=d.user, session=d.session, grant=grant, target=d.target, severity=d.severity,
                data=d.data(),
            )  # fmt: skip
        except Exception as exc:
            log.error("detection %s could not be audited: %s", d.rule, type(exc).__name__)
            return
        await self.alerts.emit(
            "detection", d.explanation, severity=d.severity, actor=d.user, session=d.session, grant=grant,
            target=d.target, data={"rule": d.rule, "detection_seq": ev.seq, "offset": d.offset},
        )  # fmt: skip

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


class Watch:
    """One session's view of its baseline: every statement or command line is a few set lookups."""

    __slots__ = ("__weakref__", "detector", "session", "target", "user")

    def __init__(self, detector: Detector, s: Watched) -> None:
        self.detector = detector
        self.session = s
        self.user = s.user
        self.target = s.target.name
        b = detector.baselines
        found = b.start(self.user, self.target, detector.clock())
        if found is not _KNOWN:
            detector.remember(self.user, ANY_TARGET, "target", self.target)
        if found is Seen.NOVEL and detector.settings.on(FIRST_TARGET):
            targets = sum(1 for k in b.seen if k[0] == self.user and k[1] == ANY_TARGET) - 1
            before = b.of(self.user, ANY_TARGET).sessions - 1
            why = f"first time {self.user} used {self.target}, after {before} sessions on {targets} other targets"
            self._flag(FIRST_TARGET, "warning", why)

    def sql(self, insp: Inspection) -> None:
        """A statement text the relay inspected: its shape, tables and schemas."""
        note = self.detector.baselines.note
        user, target = self.user, self.target
        found = note(user, target, "shape", insp.fingerprint)
        if found is not _KNOWN:
            self._new(FIRST_SHAPE, "shape", insp.fingerprint, "info", found)
        for st in insp.statements:
            for table in st.tables:
                found = note(user, target, "table", table)
                if found is not _KNOWN:
                    self._new(FIRST_TABLE, "table", table, "warning", found)
                schema, dot, _ = table.rpartition(".")
                if dot:
                    found = note(user, target, "schema", schema)
                    if found is not _KNOWN:
                        self._new(FIRST_SCHEMA, "schema", schema, "warning", found)

    def command(self, line: str) -> None:
        """A shell command line the SSH relay judged: its command name (argv[0] without its path)."""
        name = command_name(line)
        if name:
            found = self.detector.baselines.note(self.user, self.target, "command", name)
            if found is not _KNOWN:
                self._new(FIRST_COMMAND, "command", name, "warning", found)

    def _new(self, rule: str, kind: str, value: str, severity: str, found: Seen) -> None:
        d = self.detector
        d.remember(self.user, self.target, kind, value)
        if found is Seen.NOVEL and d.settings.on(rule):
            h = d.baselines.of(self.user, self.target)
            days = (d.clock() - (h.since or d.clock())) / 86_400
            shown = value if len(value) <= 120 else value[:117] + "..."
            why = (
                f"first time {self.user} {_WHAT[rule]} {shown!r} on {self.target} "
                f"in {h.sessions - 1} sessions over {days:.0f} days"
            )
            self._flag(rule, severity, why)

    def _flag(self, rule: str, severity: str, why: str) -> None:
        s = self.session
        offset = round(self.detector.clock() - s.started_at, 3)
        self.detector.found(Detection(rule, severity, why, self.user, self.target, s.id, offset))


def command_name(line: str) -> str:
    """argv[0] of a command line without its folder, skipping VAR=value prefixes and sudo/env wrappers."""
    for word in line.split():
        if "=" in word.split("/")[0] and not word.startswith(("=", "/")):
            continue
        name = word.rsplit("/", 1)[-1]
        if name in ("sudo", "env", "nohup", "time", "exec") or name.startswith("-"):  # a wrapper or its flags
            continue
        return name
    return ""
