"""The approver's and security lead's pages: home, waiting requests (approve/deny), grants (revoke)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.control.actions import revoke_grant
from gateway.control.caller import Caller
from gateway.control.rules import approver_refusal
from gateway.review.detections import detections
from gateway.store import AuditEvent, RequestRecord, SessionRecord
from gateway.web.core import Console, console, form_text, see_other, signed_in
from gateway.web.queries import SessionFilter, page_sessions, violations
from gateway.web.websessions import WebSession

routes = web.RouteTableDef()
HISTORY = 30 * 86400.0  # how far back a request's background looks (seconds)
HISTORY_ROWS = 5


@routes.get("/")
@signed_in
async def home(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """What waits for me, what I hold."""
    c = console(request)
    now = c.clock()
    waiting = await _waiting(c, ws.caller, now)
    grants = await c.api.services.store.list_grants(user=None if ws.caller.admin else ws.caller.name, state="active")
    return c.render("home.html", ws, waiting=sum(1 for _r, why in waiting if why is None), grants=len(grants))


async def _waiting(c: Console, who: Caller, now: float) -> list[tuple[Any, str | None]]:
    rows = await c.api.workflow.visible(who, now=now, state="pending")
    out: list[tuple[Any, str | None]] = []
    for r in rows:
        policy = c.api.services.policies.scope(r.target, r.scope)
        out.append((r, "the scope no longer exists" if policy is None else approver_refusal(r, policy, who)))
    return out


@dataclass(frozen=True, slots=True)
class Background:
    """What an approver weighs beside a request: the requester's recent requests, sessions and detections."""

    requests: list[RequestRecord]
    sessions: list[SessionRecord] | None  # None: the caller may not list the requester's sessions (not an admin)
    detections: list[AuditEvent]


async def background(c: Console, who: Caller, r: RequestRecord, recent: list[AuditEvent], now: float) -> Background:
    """The requester's last requests the caller may see; their sessions and recent detections for admins (the
    API's rule), for others only the detections about this request."""
    store = c.api.services.store
    earlier = [x for x in await c.api.workflow.visible(who, now=now, requester=r.requester) if x.id != r.id]
    about = [d for d in recent if d.data.get("request") == r.id or (who.admin and d.actor == r.requester)]
    sessions = None
    if who.admin:
        sessions = await page_sessions(store, SessionFilter(user=r.requester), offset=0, limit=HISTORY_ROWS)
    return Background(earlier[:HISTORY_ROWS], sessions, about[-HISTORY_ROWS:])


@routes.get("/requests")
@signed_in
async def requests_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Pending requests the caller may see, each with its background; a button where they may decide, the
    reason where not."""
    c = console(request)
    now = c.clock()
    waiting = await _waiting(c, ws.caller, now)
    recent = await detections(c.api.services.store, since=now - HISTORY) if waiting else []
    rows = [(r, why, await background(c, ws.caller, r, recent, now)) for r, why in waiting]
    return c.render("requests.html", ws, rows=rows, violations=violations)


@routes.post("/requests/{id}/{action:approve|deny}")
@signed_in
async def decide(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Approve or deny, with a comment (the workflow applies the API's rules: no self-approval)."""
    c = console(request)
    comment = await form_text(request, "comment") or f"{request.match_info['action']}d in the console"
    act = c.api.workflow.approve if request.match_info["action"] == "approve" else c.api.workflow.deny
    await act(ws.caller, request.match_info["id"], comment=comment, now=c.clock())
    return see_other("/requests")


@routes.get("/grants")
@signed_in
async def grants_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Active grants the caller manages (admins: all, others: their own) with a Revoke form each."""
    c = console(request)
    who = ws.caller
    rows = await c.api.services.store.list_grants(user=None if who.admin else who.name, state="active")
    return c.render("grants.html", ws, rows=rows)


@routes.post("/grants/{id}/revoke")
@signed_in
async def revoke(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Revoke a grant: its live sessions end (here at once, other replicas within 1 s)."""
    c = console(request)
    svc = c.api.services
    reason = await form_text(request, "reason") or f"revoked in the console by {ws.caller.name}"
    await revoke_grant(
        svc.store, svc.registry, svc.alerts, ws.caller, request.match_info["id"], reason=reason, now=c.clock()
    )
    return see_other("/grants")
