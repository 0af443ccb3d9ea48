"""The approver's and security lead's pages: home, waiting requests (approve/deny), grants (revoke)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.control.actions import revoke_grant
from gateway.control.caller import Caller
from gateway.control.rules import approver_refusal
from gateway.web.core import Console, console, form_text, see_other, signed_in
from gateway.web.websessions import WebSession

routes = web.RouteTableDef()


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


@routes.get("/requests")
@signed_in
async def requests_page(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Pending requests the caller may see; a button where they may decide, the reason where not."""
    c = console(request)
    return c.render("requests.html", ws, rows=await _waiting(c, ws.caller, c.clock()))


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
