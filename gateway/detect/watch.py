"""One live session's watch: every statement or command line is a few set lookups; flags carry session and offset.

The front ends call it through gateway/detect/hooks.py: `sql(insp, decision)` and `command(line, decision)`
before a statement or command line runs (they return the decision to enforce: a rule whose action is deny or
kill replaces an allowing one), `large_result` when a statement returned many rows, `failed` on an upstream
error. The session's start (first target, usual hours, bursts of sessions, a grant from a new address) is
judged when the watch is made, its volumes when it ends (Detector.on_session_end).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from gateway.detect import exfil
from gateway.detect.baseline import ANY_TARGET, Seen
from gateway.detect.model import FIRST_COMMAND, FIRST_SCHEMA, FIRST_SHAPE, FIRST_TABLE, FIRST_TARGET, Detection
from gateway.detect.settings import DENY, KILL, NO_OVERRIDES, Overrides, Rules
from gateway.policy import Decision, Verdict

if TYPE_CHECKING:
    from gateway.detect.engine import Detector
    from gateway.pg.sql.inspector import Inspection

_KNOWN = Seen.KNOWN
_NOVEL = Seen.NOVEL
_PASS = (Verdict.ALLOW, Verdict.ALERT)  # Decision.allowed, without the property call
NEVER = sys.maxsize  # large_rows of a watch that does not look at results
_WHAT = {
    FIRST_TABLE: "read or wrote table",
    FIRST_SCHEMA: "used schema",
    FIRST_SHAPE: "ran a statement shaped like",
    FIRST_COMMAND: "ran",
}


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Sql(Protocol):
    @property
    def sensitive_tables(self) -> frozenset[str]: ...


class _Policy(Protocol):
    @property
    def sql(self) -> _Sql | None: ...
    @property
    def detection(self) -> Overrides: ...


class _Claims(Protocol):
    @property
    def jti(self) -> str: ...


class Watched(Protocol):
    """What the detector needs of a live session."""

    id: str
    started_at: float
    client_addr: str

    @property
    def user(self) -> str: ...
    @property
    def target(self) -> _Named: ...
    @property
    def policy(self) -> _Policy: ...
    @property
    def claims(self) -> _Claims: ...

    def kill_soon(self, reason: str) -> None: ...


class Watch:
    """One session's view of its baselines, windows and shapes."""

    __slots__ = ("__weakref__", "_shapes", "detector", "large_rows", "limits", "rules", "seen", "sensitive", "session",
                 "target", "user")  # fmt: skip

    def __init__(self, detector: Detector, s: Watched) -> None:
        self.detector = detector
        self.session = s
        self.user = s.user
        self.target = s.target.name
        policy = s.policy
        scope = getattr(policy, "detection", NO_OVERRIDES)
        self.rules: Rules = detector.settings.rules(scope)
        sql = policy.sql
        self.sensitive = sql.sensitive_tables if sql is not None else frozenset()
        self._shapes: dict[str, tuple[Detection, ...]] = {}  # exfiltration findings per statement shape
        self.seen = detector.baselines.seen
        self.large_rows = detector.settings.large_rows if self.rules.on(exfil.SELECT_STAR_LARGE) else NEVER
        now = detector.clock()
        b = detector.baselines
        found = b.start(self.user, self.target, now)
        if found is not _KNOWN:
            detector.remember(self.user, ANY_TARGET, "target", self.target)
        if found is _NOVEL:
            targets = sum(1 for k in b.seen if k[0] == self.user and k[1] == ANY_TARGET) - 1
            before = b.of(self.user, ANY_TARGET).sessions - 1
            why = f"first time {self.user} used {self.target}, after {before} sessions on {targets} other targets"
            self._session_flag(Detection(FIRST_TARGET, "warning", why, self.user, self.target, s.id))
        for d in detector.usual.started(self.user, self.target, s.id, now, hours=self.rules.hours):
            self._session_flag(d)
        for d in detector.bursts.opened(self.user, self.target, s.id, s.claims.jti, s.client_addr, now):
            self._session_flag(d)
        self.limits = detector.usual.limits(self.user, self.target)  # what its end is compared with

    # --- the hot path ---------------------------------------------------------------------------------

    def sql(self, insp: Inspection, decision: Decision) -> Decision:
        """A statement text the relay inspected, with its policy decision; returns the decision to enforce."""
        seen = self.seen  # the baselines' set, looked up inline: the hot path is three lookups a statement
        user, target = self.user, self.target
        flagged: list[Detection] | None = None
        fp = insp.fingerprint
        if (user, target, "shape", fp) not in seen:
            flagged = self._new(FIRST_SHAPE, "shape", fp, "info", flagged)
        for st in insp.statements:
            for table in st.tables:
                if (user, target, "table", table) not in seen:
                    flagged = self._new(FIRST_TABLE, "table", table, "warning", flagged)
                schema, dot, _ = table.rpartition(".")
                if dot and (user, target, "schema", schema) not in seen:
                    flagged = self._new(FIRST_SCHEMA, "schema", schema, "warning", flagged)
        if self.sensitive:
            shapes = self._shapes
            found = shapes.get(fp)
            if found is None:  # judged once per statement shape of the session (its tables come with the shape)
                tables = [t for st in insp.statements for t in st.tables]
                found = shapes[fp] = tuple(
                    d for d in exfil.before_run(fp, tables, self.sensitive, user=user, target=target,
                                                session=self.session.id)
                    if self.rules.on(d.rule)
                )  # fmt: skip
            if found:
                flagged = [*(flagged or ()), *found]
        if decision.verdict not in _PASS:
            self.denied()
        return decision if flagged is None else self._judge(flagged, decision)

    def command(self, line: str, decision: Decision) -> Decision:
        """A shell command line the SSH relay judged: its command name (argv[0] without its path)."""
        name = command_name(line)
        flagged = None
        if name and (self.user, self.target, "command", name) not in self.seen:
            flagged = self._new(FIRST_COMMAND, "command", name, "warning", None)
        if decision.verdict not in _PASS:
            self.denied()
        return decision if flagged is None else self._judge(flagged, decision)

    def large_result(self, fingerprint: str, tables: tuple[str, ...] | list[str], rows: int) -> None:
        """A statement returned at least `large_rows` rows."""
        for d in exfil.after_run(fingerprint, tables, rows, user=self.user, target=self.target,
                                 session=self.session.id, large=self.large_rows):  # fmt: skip
            self._session_flag(d)

    def failed(self) -> None:
        """A statement failed upstream."""
        for d in self.detector.bursts.failed(self.user, self.target, self.session.id, self.detector.clock()):
            self._session_flag(d)

    def denied(self) -> None:
        """A statement or command line was refused."""
        for d in self.detector.bursts.denied(self.user, self.target, self.session.id, self.detector.clock()):
            self._session_flag(d)

    # --- flagging ---------------------------------------------------------------------------------------

    def _new(
        self, rule: str, kind: str, value: str, severity: str, flagged: list[Detection] | None
    ) -> list[Detection] | None:
        """Something new to this user here: remember it; after warm-up (and when the rule is on) flag it."""
        d = self.detector
        self.seen.add((self.user, self.target, kind, value))
        d.remember(self.user, self.target, kind, value)
        h = d.baselines.of(self.user, self.target)
        if h.sessions <= d.baselines.warmup or not self.rules.on(rule):
            return flagged
        days = (d.clock() - (h.since or d.clock())) / 86_400
        shown = value if len(value) <= 120 else value[:117] + "..."
        why = (
            f"first time {self.user} {_WHAT[rule]} {shown!r} on {self.target} "
            f"in {h.sessions - 1} sessions over {days:.0f} days"
        )
        return [*(flagged or ()), Detection(rule, severity, why, self.user, self.target, self.session.id)]

    def _judge(self, flagged: list[Detection], decision: Decision) -> Decision:
        """Raise each detection; the first whose action is deny or kill refuses an allowed statement."""
        out = decision
        for d in flagged:
            self._raise(d)
            action = self.rules.action(d.rule)
            if out.allowed and action in (DENY, KILL):
                reason = f"unusual activity: {d.explanation}"
                out = Decision.deny(d.rule, reason) if action == DENY else Decision.kill(d.rule, reason)
        if not decision.allowed or out.allowed:
            return out
        self.denied()
        return out

    def _session_flag(self, d: Detection) -> None:
        """A detection about the session as a whole: raise it; its action may end the session."""
        if not self.rules.on(d.rule):
            return
        self._raise(d)
        if self.rules.action(d.rule) == KILL:
            self.session.kill_soon(f"detection {d.rule}: {d.explanation}")

    def _raise(self, d: Detection) -> None:
        offset = round(self.detector.clock() - self.session.started_at, 3)
        self.detector.found(replace(d, session=self.session.id, offset=offset))


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
