"""Grants: list, get, revoke (ends live sessions), and the owner's token."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import duration, free_text, q_choice, query, read_json, text
from gateway.api.context import caller, ctx, no_store
from gateway.api.errors import ApiError
from gateway.api.views import grant_json
from gateway.control.actions import revoke_grant
from gateway.control.errors import not_found
from gateway.control.rules import may_manage_grant
from gateway.workload.verify import WorkloadRefused

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


TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a type name, not a secret


@routes.post("/v1/grants/exchange")
async def exchange(request: web.Request) -> web.Response:
    """Token exchange (RFC 8693 style): a pipeline's OIDC token for a grant token, by policy workload rule."""
    body = await read_json(
        request,
        {
            "subject_token": (text, True),
            "subject_token_type": (text, False),
            "target": (text, True),
            "scope": (text, True),
            "ttl": (duration, False),
            "request": (text, False),
        },
    )
    if body.get("subject_token_type") not in (None, TOKEN_TYPE_JWT, "urn:ietf:params:oauth:token-type:id_token"):
        raise ApiError("bad-request", "subject_token_type must be a JWT or ID token type")
    c = ctx(request)
    try:
        out = await c.exchanger.exchange(
            body["subject_token"],
            target=body["target"],
            scope=body["scope"],
            ttl=body.get("ttl"),
            request_id=body.get("request"),
            client=request.remote or "",
            now=c.clock(),
        )
    except WorkloadRefused as exc:
        status = 503 if exc.code == "issuer-unavailable" else 403
        raise ApiError(f"workload-{exc.code}", exc.reason, status=status) from None
    if out.grant is None or out.token is None:
        assert out.request is not None
        pending = {"request": out.request.id, "state": out.request.state, "approvals_needed": out.needs}
        return web.json_response(pending, status=202)
    g = out.grant
    return no_store(
        web.json_response(
            {
                "access_token": out.token,
                "issued_token_type": TOKEN_TYPE_JWT,
                "token_type": "N_A",
                "grant": g.id,
                "subject": g.user,
                "target": g.target,
                "scope": g.scope,
                "expires_at": g.expires_at,
                "request": g.request_id,
            }
        )
    )


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
