"""The engineer's page (/me: request, own requests and grants, the token on click, give back) and /audit."""

from __future__ import annotations

from aiohttp import web

from gateway.control.errors import forbidden, invalid
from gateway.durations import parse_duration
from gateway.web.core import Console, console, form_text, see_other, signed_in
from gateway.web.websessions import WebSession

routes = web.RouteTableDef()


def _kinds(c: Console) -> dict[str, str]:
    """Target name -> kind (postgres | ssh): the connect line's client."""
    return {name: t.kind for name, t in c.api.services.config.targets.items()}


@routes.get("/me")
@signed_in
async def me(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """My requests, my active grants (connect line, token, give back), and the request form."""
    c = console(request)
    who = ws.caller
    now = c.clock()
    mine = await c.api.workflow.visible(who, now=now, requester=who.name)
    grants = await c.api.services.store.list_grants(user=who.name, state="active")
    return c.render("me.html", ws, requests=mine[:50], grants=grants, kinds=_kinds(c), token=None)


@routes.post("/me/request")
@signed_in
async def ask(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Ask for access: the CLI's and the API's rules (check_create) decide."""
    c = console(request)
    try:
        ttl = parse_duration(await form_text(request, "ttl", "15m"))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    await c.api.workflow.create(
        ws.caller,
        target=await form_text(request, "target"),
        scope=await form_text(request, "scope"),
        ttl=ttl,
        reason=await form_text(request, "reason"),
        now=c.clock(),
    )
    return see_other("/me")


@routes.post("/me/grants/{id}/token")
@signed_in
async def token(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """The token of my live grant, shown on this one response (never cached)."""
    c = console(request)
    grant, tok = await c.api.workflow.token(ws.caller, request.match_info["id"], now=c.clock())
    who = ws.caller
    mine = await c.api.workflow.visible(who, now=c.clock(), requester=who.name)
    grants = await c.api.services.store.list_grants(user=who.name, state="active")
    return c.render("me.html", ws, requests=mine[:50], grants=grants, kinds=_kinds(c), token=(grant.id, tok))


@routes.get("/audit")
@signed_in
async def audit(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Chain status (admins, as in the API); POST runs the verification."""
    c = console(request)
    if not ws.caller.admin:
        raise forbidden("the audit log is for admins")
    return c.render("audit.html", ws, verdict=None)


@routes.post("/audit/verify")
@signed_in
async def verify(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Walk the chain and the signed checkpoints now."""
    c = console(request)
    if not ws.caller.admin:
        raise forbidden("the audit log is for admins")
    v = await c.api.services.store.verify()
    return c.render("audit.html", ws, verdict=v)
