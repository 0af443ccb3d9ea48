"""Search across sessions: `gateway search` (gateway.review.search) over the recordings the caller may see,
each hit linking to its moment in the recording."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from aiohttp import web

from gateway.control.caller import Caller
from gateway.control.errors import invalid
from gateway.durations import parse_duration
from gateway.review.search import compile_regex, search
from gateway.store import SessionRecord
from gateway.web.core import Console, console, signed_in
from gateway.web.review import recording_file
from gateway.web.timeline import offset_of
from gateway.web.websessions import WebSession

routes = web.RouteTableDef()
MAX_HITS = 500
MAX_PATTERN = 200


@dataclass(frozen=True, slots=True)
class Found:
    """One hit as the page shows it: whose session, when, what matched, and the link to that moment."""

    session: SessionRecord
    at: float  # seconds into the recording
    kind: str
    text: str

    @property
    def link(self) -> str:
        """The session page opened at this moment (the player starts there, the transcript scrolls to it)."""
        return f"/sessions/{self.session.id}?t={self.at:.6f}#at"


async def find(c: Console, who: Caller, pattern: str, *, regex: bool, case: bool, since: float | None) -> list[Found]:
    """Hits in the sessions `who` may see (admins: all, others: their own), at most MAX_HITS + 1."""
    rows = await c.api.services.store.list_sessions(user=None if who.admin else who.name, since=since)
    rows.sort(key=lambda s: s.started_at, reverse=True)
    by_id = {s.id: s for s in rows}
    recs: list[tuple[str, Path, str]] = []
    for s in rows:
        path = recording_file(c, s)
        if path is not None:
            recs.append((s.id, path, s.protocol))
    # Reading recordings is file work: a thread, so the loop keeps relaying sessions meanwhile.
    hits = await asyncio.to_thread(
        lambda: list(islice(search(recs, pattern, regex=regex, ignore_case=not case), MAX_HITS + 1))
    )
    return [Found(by_id[h.session_id], offset_of(h.t, by_id[h.session_id].started_at), h.kind, h.text) for h in hits]


@routes.get("/search")
@signed_in
async def search_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """The search form and, given a pattern, its hits (newest sessions first, in recording order within one)."""
    c = console(request)
    q = request.query
    pattern = q.get("q", "")
    # Regular expressions for admins only (RE2, linear time: gateway.review.search).
    regex = q.get("regex") == "on" and ws.caller.admin
    case = q.get("case") == "on"
    since_text = q.get("since", "").strip()
    if len(pattern) > MAX_PATTERN:
        raise invalid(f"the pattern is longer than {MAX_PATTERN} characters")
    try:
        since = c.clock() - parse_duration(since_text) if since_text else None
    except ValueError as exc:
        raise invalid(f"since: {exc}") from None
    if regex:
        try:
            compile_regex(pattern)
        except ValueError as exc:
            raise invalid(str(exc)) from None
    found: list[Found] = []
    if pattern:
        found = await find(c, ws.caller, pattern, regex=regex, case=case, since=since)
        await c.api.services.store.append(
            "console.search", actor=ws.caller.name, data={"pattern": pattern, "regex": regex, "hits": len(found)}
        )
    return c.render(
        "search.html",
        ws,
        pattern=pattern,
        regex=regex,
        case=case,
        since=since_text,
        found=found[:MAX_HITS],
        more=len(found) > MAX_HITS,
    )
