"""Live sessions (kill), the Sessions list (filters, paging) and one session (timeline, player, transcript)."""

from __future__ import annotations

import calendar
import io
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.control.actions import default_kill_reason, kill_session
from gateway.control.caller import Caller
from gateway.control.errors import invalid, not_found
from gateway.recording.reader import binary_to_asciicast, is_binary, statements
from gateway.store import SessionRecord
from gateway.web.core import Console, console, form_text, see_other, signed_in
from gateway.web.queries import PAGE, SessionFilter, page_sessions, violations
from gateway.web.timeline import keystrokes, offset_of, timeline
from gateway.web.websessions import WebSession

routes = web.RouteTableDef()
MAX_STATEMENTS = 5000  # a transcript page shows this many; the download has them all


async def visible_session(c: Console, who: Caller, sid: str) -> SessionRecord:
    """The session if the caller may see it (the API's rule: admins, or its user); otherwise not found."""
    s = await c.api.services.store.get_session(sid)
    if s is None or not (who.admin or who.name == s.user):
        raise not_found(f"no session {sid!r}")
    return s


def recording_file(c: Console, s: SessionRecord) -> Path | None:
    """The recording's path, only when it exists inside the recordings folder."""
    if not s.recording_path:
        return None
    root = c.api.services.config.recordings_dir.resolve()
    path = Path(s.recording_path).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None


@routes.get("/live")
@signed_in
async def live_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Running sessions the caller may see, each with Kill and Watch."""
    c = console(request)
    who = ws.caller
    rows = await c.api.services.store.list_sessions(user=None if who.admin else who.name, live=True)
    return c.render("live.html", ws, rows=rows, now=c.clock(), violations=violations)


@routes.post("/sessions/{id}/kill")
@signed_in
async def kill(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """End one live session (its end is seen within 1 s on every replica)."""
    c = console(request)
    svc = c.api.services
    reason = await form_text(request, "reason") or default_kill_reason(ws.caller)
    await kill_session(svc.store, svc.registry, ws.caller, request.match_info["id"], reason=reason)
    return see_other("/live")


def _day(value: str, name: str, *, end: bool = False) -> float | None:
    """A YYYY-MM-DD field as a UTC timestamp (the day's end for `until`)."""
    if not value:
        return None
    try:
        ts = float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        raise invalid(f"{name} must be a date, YYYY-MM-DD") from None
    return ts + 86400 if end else ts


def session_filter(q: Any, who: Caller) -> SessionFilter:
    """The filter of the query string; engineers only ever see their own sessions."""
    flag = {"yes": True, "no": False}
    return SessionFilter(
        user=(q.get("user") or None) if who.admin else who.name,
        target=q.get("target") or None,
        protocol=q.get("protocol") if q.get("protocol") in ("ssh", "postgres") else None,
        since=_day(q.get("since", ""), "since"),
        until=_day(q.get("until", ""), "until", end=True),
        violations=flag.get(q.get("violations", "")),
        end_reason=(q.get("end_reason") or "")[:200] or None,
        live=flag.get(q.get("live", "")),
    )


@routes.get("/sessions")
@signed_in
async def sessions_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Past and live sessions, filtered, PAGE at a time."""
    c = console(request)
    q = request.query
    f = session_filter(q, ws.caller)
    try:
        page = max(0, int(q.get("page", "0")))
    except ValueError:
        raise invalid("page must be a number") from None
    rows = await page_sessions(c.api.services.store, f, offset=page * PAGE, limit=PAGE + 1)
    keep = {k: v for k, v in q.items() if k != "page" and v}
    link = {n: "/sessions?" + urlencode({**keep, "page": n}) for n in (page - 1, page + 1)}
    return c.render(
        "sessions.html",
        ws,
        rows=rows[:PAGE],
        q=keep,
        page=page,
        prev=link[page - 1] if page > 0 else None,
        next=link[page + 1] if len(rows) > PAGE else None,
        violations=violations,
    )


@routes.get("/sessions/{id}")
@signed_in
async def session_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """One session: the timeline beside the player (SSH) or the transcript (Postgres); ?t=SECONDS opens
    the recording at that moment (the player starts there, the transcript scrolls to that statement)."""
    c = console(request)
    s = await visible_session(c, ws.caller, request.match_info["id"])
    path = recording_file(c, s)
    try:
        at = max(0.0, float(request.query.get("t", "0"))) if "t" in request.query else None
    except ValueError:
        raise invalid("t must be a number of seconds") from None
    transcript = list(statements(path))[:MAX_STATEMENTS] if path is not None and s.protocol == "postgres" else []
    offsets = [offset_of(st.t, s.started_at) for st in transcript]
    # The statement a link points at: the first at or after `at` (offsets are in the recording's order).
    target = next((i for i, o in enumerate(offsets) if at is not None and o >= at - 1e-6), None)
    typed = keystrokes(path) if path is not None and s.protocol == "ssh" and not is_binary(path) else []
    return c.render(
        "session.html",
        ws,
        s=s,
        recorded=path is not None,
        moments=await timeline(c.api.services.store, s, path),
        transcript=list(zip(transcript, offsets, strict=True)),
        target=target,
        start=at,
        keystrokes=typed,
        violations=violations(s),
    )


@routes.get("/sessions/{id}/recording")
@signed_in
async def recording(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """The recording (.cast for SSH, a binary stream converted; .sql.jsonl for Postgres); ?download for a file."""
    c = console(request)
    s = await visible_session(c, ws.caller, request.match_info["id"])
    path = recording_file(c, s)
    if path is None:
        raise not_found(f"session {s.id} has no recording here")
    await c.api.services.store.append("console.recording_read", actor=ws.caller.name, session=s.id)
    name = f"{s.id}.cast" if s.protocol == "ssh" else f"{s.id}.sql.jsonl"
    if s.protocol == "ssh" and is_binary(path):
        buf = io.StringIO()
        binary_to_asciicast(path, buf)
        body = buf.getvalue().encode()
    else:
        body = path.read_bytes()
    resp = web.Response(
        body=body, content_type="application/x-asciicast" if s.protocol == "ssh" else "application/jsonl"
    )
    if "download" in request.query:
        resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return resp


@routes.get("/sessions/{id}/audit.jsonl")
@signed_in
async def audit_download(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """The session's audit events, one JSON object a line."""
    c = console(request)
    s = await visible_session(c, ws.caller, request.match_info["id"])
    events = await c.api.services.store.events(session=s.id)
    lines = [
        json.dumps({"seq": e.seq, "ts": e.ts, "type": e.type, "actor": e.actor, "severity": e.severity, "data": e.data})
        for e in events
    ]
    resp = web.Response(text="".join(line + "\n" for line in lines), content_type="application/jsonl")
    resp.headers["Content-Disposition"] = f'attachment; filename="{s.id}.audit.jsonl"'
    return resp
