"""Signing in and out: one-time links, OIDC (code + PKCE + state + nonce), sign-out."""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.web.core import FLOW_COOKIE, console, see_other, signed_in
from gateway.web.links import LinkRefused
from gateway.web.oidc import SignInRefused
from gateway.web.websessions import COOKIE, WebSession

log = logging.getLogger(__name__)
routes = web.RouteTableDef()


@routes.get("/signin")
async def signin(request: web.Request) -> web.Response:
    """Redeem a one-time sign-in link: a session cookie, then home."""
    c = console(request)
    try:
        user = await c.links.redeem(c.api.services.ring, request.query.get("t", ""), now=c.clock())
    except LinkRefused as exc:
        return c.render("error.html", None, 403, message=str(exc))
    who = c.caller_for(user)
    if who is None:
        return c.render("error.html", None, 403, message="this user is not configured on the gateway")
    return await c.sign_in(request, who, "link")


@routes.get("/signin/oidc")
async def signin_oidc(request: web.Request) -> web.Response:
    """Send the browser to the IdP (code flow, PKCE, state bound to this browser by a Lax flow cookie)."""
    c = console(request)
    if c.oidc is None:
        return c.render("error.html", None, 404, message="OIDC is not configured on this gateway")
    redirect_uri = f"{request.scheme}://{request.host}/signin/callback"
    try:
        state, url = await c.oidc.start(redirect_uri, now=c.clock())
    except SignInRefused as exc:
        return c.render("error.html", None, 502, message=str(exc))
    resp = web.Response(status=303, headers={"Location": url})
    # Lax, not Strict: the IdP's redirect back is a cross-site navigation and must carry it.
    resp.set_cookie(
        FLOW_COOKIE, state, httponly=True, samesite="Lax", secure=request.secure, path="/signin", max_age=600
    )
    return resp


@routes.get("/signin/callback")
async def signin_callback(request: web.Request) -> web.Response:
    """The IdP's redirect: the code for a verified ID token (state, PKCE, nonce), then a session."""
    c = console(request)
    if c.oidc is None:
        return c.render("error.html", None, 404, message="OIDC is not configured on this gateway")
    try:
        user, groups = await c.oidc.finish(dict(request.query), request.cookies.get(FLOW_COOKIE), now=c.clock())
    except SignInRefused as exc:
        log.warning("console OIDC sign-in refused from %s: %s", request.remote, exc)
        return c.render("error.html", None, 403, message=str(exc))
    return await c.sign_in(request, c.caller_of(user, groups, "oidc"), "oidc")


@routes.post("/signout")
@signed_in
async def signout(request: web.Request, ws: WebSession) -> web.StreamResponse:
    """Forget the session server-side and the cookie client-side."""
    await console(request).sessions.close(request.cookies.get(COOKIE))
    resp = see_other("/")
    resp.del_cookie(COOKIE, path="/")
    return resp
