"""Access requests: create, list, get, approve, deny, cancel, and the approved request's token."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import duration, free_text, q_bool, q_choice, query, read_json, text
from gateway.api.context import caller, ctx, no_store
from gateway.api.views import request_json
from gateway.control.errors import conflict
from gateway.control.rules import REQUEST_STATES, approvals_needed
from gateway.store import RequestRecord

routes = web.RouteTableDef()

_COMMENT = {"comment": (free_text, False)}


def _view(request: web.Request, req: RequestRecord) -> dict[str, object]:
    c = ctx(request)
    policy = c.services.policies.scope(req.target, req.scope)
    return request_json(req, needs=approvals_needed(policy) if policy else None, now=c.clock())


@routes.post("/v1/requests")
async def create(request: web.Request) -> web.Response:
    """Ask for access: target, scope, ttl (seconds or "15m"), reason."""
    body = await read_json(
        request, {"target": (text, True), "scope": (text, True), "ttl": (duration, True), "reason": (free_text, True)}
    )
    c = ctx(request)
    req = await c.workflow.create(
        caller(request),
        target=body["target"],
        scope=body["scope"],
        ttl=body["ttl"],
        reason=body["reason"],
        now=c.clock(),
    )
    return web.json_response(_view(request, req), status=201)


@routes.get("/v1/requests")
async def list_requests(request: web.Request) -> web.Response:
    """Requests the caller may see; filters: state, target, requester, mine, pending."""
    q = query(
        request,
        {
            "state": q_choice(*REQUEST_STATES),
            "target": lambda _n, v: str(v),
            "requester": lambda _n, v: str(v),
            "mine": q_bool,
            "pending": q_bool,
        },
    )
    who = caller(request)
    state = "pending" if q.get("pending") else q.get("state")
    requester = who.name if q.get("mine") else q.get("requester")
    c = ctx(request)
    rows = await c.workflow.visible(who, now=c.clock(), state=state, target=q.get("target"), requester=requester)
    return web.json_response({"requests": [_view(request, r) for r in rows]})


@routes.get("/v1/requests/{id}")
async def get(request: web.Request) -> web.Response:
    """One request."""
    c = ctx(request)
    req = await c.workflow.load(request.match_info["id"], caller(request), c.clock())
    return web.json_response(_view(request, req))


@routes.post("/v1/requests/{id}/approve")
async def approve(request: web.Request) -> web.Response:
    """Add the caller's approval (never their own request; only approvers the policy names)."""
    body = await read_json(request, _COMMENT)
    c = ctx(request)
    req = await c.workflow.approve(
        caller(request), request.match_info["id"], comment=body.get("comment", ""), now=c.clock()
    )
    return web.json_response(_view(request, req))


@routes.post("/v1/requests/{id}/deny")
async def deny(request: web.Request) -> web.Response:
    """Deny: final."""
    body = await read_json(request, _COMMENT)
    c = ctx(request)
    req = await c.workflow.deny(
        caller(request), request.match_info["id"], comment=body.get("comment", ""), now=c.clock()
    )
    return web.json_response(_view(request, req))


@routes.post("/v1/requests/{id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    """The requester withdraws a pending request."""
    body = await read_json(request, _COMMENT)
    c = ctx(request)
    req = await c.workflow.cancel(
        caller(request), request.match_info["id"], comment=body.get("comment", ""), now=c.clock()
    )
    return web.json_response(_view(request, req))


@routes.get("/v1/requests/{id}/token")
async def token(request: web.Request) -> web.Response:
    """The approval token of the caller's approved request."""
    c = ctx(request)
    who = caller(request)
    req = await c.workflow.load(request.match_info["id"], who, c.clock())
    if req.state != "approved" or req.grant_id is None:
        raise conflict(f"request {req.id} is {req.state}; a token exists only once it is approved")
    grant, tok = await c.workflow.token(who, req.grant_id, now=c.clock())
    return no_store(web.json_response({"token": tok, "grant": grant.id, "expires_at": grant.expires_at}))
