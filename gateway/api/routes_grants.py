"""Grants: list, get, revoke (ends live sessions), and the owner's token."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import free_text, q_choice, query, read_json
from gateway.api.context import caller, ctx, no_store
from gateway.api.views import grant_json
from gateway.control.actions import revoke_grant
from gateway.control.errors import not_found
from gateway.control.rules import may_manage_grant

routes = web.RouteTableDef()


@routes.get("/v1/grants")
async def list_grants(request: web.Request) -> web.Response:
    """Own grants (admins: everyone's); filters: user, state, target."""
    q = query(
        request,
        {
            "user": lambda _n, v: str(v),
            "state": q_choice("active", "revoked", "expired"),
            "target": lambda _n, v: str(v),
        },
    )
    who = caller(request)
    if not who.admin and q.get("user") not in (None, who.name):
        return web.json_response({"grants": []})  # others' grants are invisible, as if there were none
    user = q.get("user") if who.admin else who.name
    rows = await ctx(request).services.store.list_grants(user=user, state=q.get("state"))
    target = q.get("target")
    return web.json_response({"grants": [grant_json(g) for g in rows if target is None or g.target == target]})


@routes.get("/v1/grants/{id}")
async def get(request: web.Request) -> web.Response:
    """One grant (never its token)."""
    g = await ctx(request).services.store.get_grant(request.match_info["id"])
    if g is None or not may_manage_grant(g, caller(request)):
        raise not_found(f"no grant {request.match_info['id']!r}")
    return web.json_response(grant_json(g))


@routes.post("/v1/grants/{id}/revoke")
async def revoke(request: web.Request) -> web.Response:
    """Revoke: refuse new connections, end every live session of the grant (here now, elsewhere within 1 s)."""
    body = await read_json(request, {"reason": (free_text, True)})
    c = ctx(request)
    svc = c.services
    grant, killed = await revoke_grant(
        svc.store,
        svc.registry,
        svc.alerts,
        caller(request),
        request.match_info["id"],
        reason=body["reason"],
        now=c.clock(),
    )
    return web.json_response({**grant_json(grant), "sessions_ended": killed})


@routes.get("/v1/grants/{id}/token")
async def token(request: web.Request) -> web.Response:
    """The token of the caller's own live grant."""
    c = ctx(request)
    grant, tok = await c.workflow.token(caller(request), request.match_info["id"], now=c.clock())
    return no_store(web.json_response({"token": tok, "grant": grant.id, "expires_at": grant.expires_at}))
