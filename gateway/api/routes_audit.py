"""Audit log: query and verify (admins only)."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import q_limit, q_number, q_types, query
from gateway.api.context import caller, ctx
from gateway.control.errors import forbidden

routes = web.RouteTableDef()


def _admin_only(request: web.Request) -> None:
    if not caller(request).admin:
        raise forbidden("the audit log is for admins")


@routes.get("/v1/audit")
async def events(request: web.Request) -> web.Response:
    """Events in chain order; filters: since, until (timestamps), type (repeatable), session, limit."""
    _admin_only(request)
    q = query(
        request,
        {"since": q_number, "until": q_number, "type": q_types, "session": lambda _n, v: str(v), "limit": q_limit},
    )
    rows = await ctx(request).services.store.events(
        since=q.get("since"),
        until=q.get("until"),
        types=q.get("type", []),
        session=q.get("session"),
        limit=q.get("limit", 1000),
    )
    return web.json_response({"events": [e.to_json() for e in rows]})


@routes.get("/v1/audit/verify")
async def verify(request: web.Request) -> web.Response:
    """Walk the chain and the signed checkpoints."""
    _admin_only(request)
    query(request, {})
    v = await ctx(request).services.store.verify()
    return web.json_response(
        {
            "ok": v.ok,
            "checked": v.checked,
            "first_bad_seq": v.first_bad_seq,
            "problem": v.problem,
            "last_checkpoint": v.last_checkpoint,
            "last_checkpoint_at": v.last_checkpoint_ts,
            "unsigned_tail": v.unsigned_tail if v.ok else None,
            "summary": v.describe(),
        }
    )
