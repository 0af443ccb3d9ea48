"""A session's timeline (request to end, what ran with verdicts, detections) and its recorded keystrokes.

Every moment inside the recording carries its offset (seconds from the recording's start), so the page can
link it to that point of the player or the transcript.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gateway.recording import schema
from gateway.recording.reader import statements, terminal_events
from gateway.recording.schema import Statement
from gateway.review.detections import DETECTION
from gateway.review.sanitize import marker, unsafe_char
from gateway.store import SessionRecord, Store

VIOLATION = "violation"
"""The kind of a moment that is a refusal or a kill (what 'next violation' jumps to)."""
_SSH_MOMENTS = {schema.COMMAND: "command", schema.BLOCKED: VIOLATION, schema.KILL: VIOLATION,
                schema.WARNING: "warning", schema.SFTP: "sftp"}  # fmt: skip
AUDIT_SQL = 2000  # how much of a refused statement its `statement.denied` audit event keeps
MAX_KEYSTROKE_LINES = 2000
MAX_LINE = 500


@dataclass(frozen=True, slots=True)
class Moment:
    """One line of a session's timeline; `offset` is where it is in the recording (None: outside it)."""

    t: float
    kind: str
    text: str
    verdict: str = ""
    offset: float | None = None


@dataclass(frozen=True, slots=True)
class Keystrokes:
    """What the engineer typed up to one Enter, as inert text, and when it began (seconds into the recording)."""

    offset: float
    text: str


def offset_of(t: float, started_at: float) -> float:
    """A recording time as seconds from the start (legacy recordings stored wall-clock times)."""
    return t - started_at if t > 1e9 else t


def statement_text(st: Statement) -> str:
    """A transcript line: the SQL, its row count and why it was refused."""
    parts = [st.sql]
    if st.rows is not None:
        parts.append(f"({st.rows} rows)")
    if st.reason:
        parts.append(f"— {st.reason}")
    return " ".join(parts)


async def timeline(store: Store, s: SessionRecord, path: Path | None) -> list[Moment]:
    """Request, approvals, grant, connect, what ran (with verdicts), detections, alerts, end: in time order."""
    out: list[Moment] = []
    g = await store.get_grant(s.grant_id)
    if g is not None:
        req = await store.get_request(g.request_id) if g.request_id else None
        if req is not None:
            out.append(Moment(req.created_at, "request", f"{req.requester} asked for {req.scope}: {req.reason}"))
            for a in req.approvals:
                out.append(Moment(float(a.get("at", 0)), "approval", f"{a.get('by')} approved: {a.get('comment', '')}"))
        what = "break-glass grant" if g.break_glass else "grant issued"
        out.append(
            Moment(g.issued_at, "grant", f"{what} {g.id} until {time.strftime('%H:%M:%S', time.gmtime(g.expires_at))}")
        )
    recorded, refused = recording_moments(s, path) if path is not None else ([], set())
    for e in await store.events(session=s.id):
        if e.type in ("session.start", "session.end"):
            continue  # shown from the session row itself
        if recorded and (e.type == "command" or (e.type == "statement.denied" and str(e.data.get("sql")) in refused)):
            continue  # what ran is listed once, from the recording, in order and with its verdict
        if e.type == DETECTION:
            at = e.data.get("offset")
            offset = float(at) if isinstance(at, (int, float)) else None
            when = s.started_at + offset if offset is not None else e.ts
            text = f"{e.data.get('rule', '?')}: {e.data.get('explanation', '')}"
            out.append(Moment(when, "detection", text, e.severity, offset))
            continue
        detail = e.data.get("reason") or e.data.get("message") or e.data.get("command") or ""
        out.append(Moment(e.ts, e.type, f"{e.actor}: {detail}" if detail else e.actor, e.severity))
    out.append(Moment(s.started_at, "connect", f"{s.user} connected from {s.client_addr}", offset=0.0))
    out += recorded
    if s.ended_at is not None:
        out.append(Moment(s.ended_at, "end", s.end_reason or "ended"))
    return sorted(out, key=lambda m: m.t)


def recording_moments(s: SessionRecord, path: Path) -> tuple[list[Moment], set[str]]:
    """What ran, from the recording: statements with verdicts, or the SSH front end's markers; and the refused
    statements' text as their audit events hold it (its first AUDIT_SQL characters)."""
    out: list[Moment] = []
    refused: set[str] = set()
    if s.protocol == "postgres":
        for st in statements(path):
            at = offset_of(st.t, s.started_at)
            what = VIOLATION if st.refused else "statement"
            out.append(Moment(s.started_at + at, what, statement_text(st), "DENIED" if st.refused else st.verdict, at))
            if st.refused:
                refused.add(st.sql[:AUDIT_SQL])
        return out, refused
    for ev in terminal_events(path, []):
        m = ev.marker
        kind = _SSH_MOMENTS.get(m.kind) if m is not None else None
        if m is not None and kind is not None:
            verdict = "DENIED" if m.kind == schema.BLOCKED else "KILL" if m.kind == schema.KILL else ""
            out.append(Moment(s.started_at + ev.t, kind, m.text, verdict, ev.t))
    return out, refused


def keystrokes(path: Path) -> list[Keystrokes]:
    """The input of a terminal recording, a line per Enter, control characters as visible markers."""
    out: list[Keystrokes] = []
    start: float | None = None
    line: list[str] = []
    for ev in terminal_events(path, []):
        if ev.code != "i":
            continue
        for ch in ev.data:
            if start is None:
                start = ev.t
            if ch in "\r\n":
                out.append(Keystrokes(start, "".join(line) + "⏎"))
                start, line = None, []
                if len(out) >= MAX_KEYSTROKE_LINES:
                    return out
            elif len(line) < MAX_LINE:  # a paste of a file is not shown whole
                line.append(marker(ch) if unsafe_char(ch) else ch)
    if start is not None:
        out.append(Keystrokes(start, "".join(line)))
    return out
