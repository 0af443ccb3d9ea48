"""Sessions: list live and past, get one, kill one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api.body import free_text, q_bool, q_number, query, read_json
from gateway.api.context import caller, ctx
from gateway.control.actions import default_kill_reason, kill_session
from gateway.control.errors import conflict, not_found
from gateway.receipts import stored_receipt, verify_receipt
from gateway.store import SessionRecord

routes = web.RouteTableDef()


def session_json(s: SessionRecord) -> dict[str, Any]:
    """The API view of a session."""
    return {
        "id": s.id,
        "grant": s.grant_id,
        "user": s.user,
        "target": s.target,
        "scope": s.scope,
        "protocol": s.protocol,
        "client": s.client_addr,
        "started_at": s.started_at,
        "ended_at": s.ended_at,
        "live": s.ended_at is None,
        "end_reason": s.end_reason,
        "recording_sha256": s.recording_sha256,
        "stats": s.stats,
        "kill_requested": s.kill_requested is not None,
    }


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """Own sessions (admins: everyone's); filters: user, target, grant, live, since."""
    q = query(
        request,
        {
            "user": lambda _n, v: str(v),
            "target": lambda _n, v: str(v),
            "grant": lambda _n, v: str(v),
            "live": q_bool,
            "since": q_number,
        },
    )
    who = caller(request)
    user = q.get("user") if who.admin else who.name
    if not who.admin and q.get("user") not in (None, who.name):
        return web.json_response({"sessions": []})
    rows = await ctx(request).services.store.list_sessions(
        user=user, target=q.get("target"), since=q.get("since"), live=q.get("live"), grant_id=q.get("grant")
    )
    return web.json_response({"sessions": [session_json(s) for s in rows]})


@routes.get("/v1/sessions/{id}")
async def get(request: web.Request) -> web.Response:
    """One session."""
    who = caller(request)
    s = await ctx(request).services.store.get_session(request.match_info["id"])
    if s is None or not (who.admin or who.name == s.user):
        raise not_found(f"no session {request.match_info['id']!r}")
    return web.json_response(session_json(s))


@routes.get("/v1/sessions/{id}/receipt")
async def receipt(request: web.Request) -> web.Response:
    """The signed termination receipt of an ended session (JWS; verify with /.well-known/jwks.json)."""
    who = caller(request)
    svc = ctx(request).services
    s = await svc.store.get_session(request.match_info["id"])
    if s is None or not (who.admin or who.name == s.user):
        raise not_found(f"no session {request.match_info['id']!r}")
    if s.ended_at is None:
        raise conflict(f"session {s.id} is live; its receipt is issued when it ends")
    jws = await stored_receipt(svc.store, s.id)
    if jws is None:
        raise not_found(f"session {s.id} has no receipt (it ended before receipts were issued, or signing failed)")
    return web.json_response({"session": s.id, "receipt": jws, "claims": verify_receipt(jws, svc.ring)})


@routes.post("/v1/sessions/{id}/kill")
async def kill(request: web.Request) -> web.Response:
    """End one live session (admins: any; engineers: their own)."""
    body = await read_json(request, {"reason": (free_text, False)})
    who = caller(request)
    svc = ctx(request).services
    s, here = await kill_session(
        svc.store, svc.registry, who, request.match_info["id"], reason=body.get("reason") or default_kill_reason(who)
    )
    return web.json_response({"id": s.id, "killed_here": here, "requested": True})
