"""The console's routes: sign-in, waiting requests, grants; each action goes through gateway/control."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from gateway.api.context import ApiContext
from gateway.control.actions import revoke_grant
from gateway.control.caller import Caller
from gateway.control.errors import WorkflowError
from gateway.control.rules import approver_refusal
from gateway.web.headers import security_headers
from gateway.web.links import LinkRefused, UsedLinks
from gateway.web.oidc import OidcSignIn, SignInRefused
from gateway.web.websessions import COOKIE, WebSession, WebSessions

FLOW_COOKIE = "gw_oidc_flow"

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# The first path segment of every console page: the API's auth middleware lets these through to the console's own.
ROOTS = frozenset({"", "signin", "signout", "static", "requests", "grants"})
STATUS = {"invalid": 422, "forbidden": 403, "not-found": 404, "conflict": 409}


def is_console_path(path: str) -> bool:
    """Whether `path` is served by the console (its own sign-in), not the API (bearer credentials)."""
    return path.split("/", 2)[1] in ROOTS


@dataclass
class Console:
    """The console's state: who is signed in, which links were used, the templates."""

    api: ApiContext
    clock: Callable[[], float] = time.time
    sessions: WebSessions = field(default_factory=WebSessions)
    links: UsedLinks = field(default_factory=UsedLinks)
    oidc: OidcSignIn | None = None
    env: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
    )

    def __post_init__(self) -> None:
        self.env.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"

    def render(self, name: str, ws: WebSession | None, status: int = 200, **values: Any) -> web.Response:
        """A page, every value autoescaped."""
        html = self.env.get_template(name).render(
            me=ws.caller if ws else None, csrf=ws.csrf if ws else "", oidc=self.oidc is not None, **values
        )
        return web.Response(text=html, status=status, content_type="text/html")

    def caller_for(self, user: str) -> Caller | None:
        """The console caller of a configured user, with the API's admin rule; None when not configured."""
        u = self.api.services.config.users.get(user)
        if u is None:
            return None
        return self.caller_of(u.name, u.groups, "console-link")

    def caller_of(self, name: str, groups: frozenset[str], via: str) -> Caller:
        """A caller with the API's admin rule (admin_groups)."""
        return Caller(name, groups, admin=bool(groups & self.api.settings.admin_groups), via=via)

    async def sign_in(self, request: web.Request, who: Caller, via: str) -> web.Response:
        """Open a session: the cookie, then a same-site step home (a Strict cookie is not sent on a redirect
        chain that began at the IdP, so the browser follows a meta refresh from this page instead)."""
        await self.api.services.store.append("console.signin", actor=who.name, data={"via": via})
        resp = self.render("signedin.html", None)
        resp.set_cookie(
            COOKIE,
            self.sessions.open(who, now=self.clock()),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
            max_age=int(self.sessions.ttl),
        )
        resp.del_cookie(FLOW_COOKIE, path="/signin")
        return resp


CONSOLE = web.AppKey("gateway_console", Console)
Page = Callable[[web.Request, WebSession], Awaitable[web.StreamResponse]]


def console(request: web.Request) -> Console:
    """The app's console."""
    return request.app[CONSOLE]


def signed_in(handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Pages for a signed-in browser; POSTs must also carry the session's CSRF token."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        c = console(request)
        ws = c.sessions.get(request.cookies.get(COOKIE), now=c.clock())
        if ws is None:
            if request.method != "GET":
                return c.render("error.html", None, 401, message="sign in first")
            return c.render("signin.html", None, 401)
        if request.method == "POST":
            form = await request.post()
            sent = form.get("csrf")
            if not ws.csrf_ok(sent if isinstance(sent, str) else None):
                log.warning("console POST %s by %s refused: missing or wrong CSRF token", request.path, ws.caller.name)
                return c.render("error.html", ws, 403, message="this form is stale or forged (CSRF token); reload")
        try:
            return await handler(request, ws)
        except WorkflowError as exc:
            return c.render("error.html", ws, STATUS.get(exc.code, 400), message=exc.message)

    return wrapped


def see_other(location: str) -> web.Response:
    """After a POST: back to a page (303, so a reload does not repeat the action)."""
    return web.Response(status=303, headers={"Location": location})


async def form_text(request: web.Request, name: str, default: str = "") -> str:
    """One text field of the (already read) form."""
    value = (await request.post()).get(name, default)
    return value if isinstance(value, str) else default


routes = web.RouteTableDef()


@routes.get("/signin")
async def signin(request: web.Request) -> web.Response:
    """Redeem a one-time sign-in link: a session cookie, then home."""
    c = console(request)
    try:
        user = c.links.redeem(c.api.services.ring, request.query.get("t", ""), now=c.clock())
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
    console(request).sessions.close(request.cookies.get(COOKIE))
    resp = see_other("/")
    resp.del_cookie(COOKIE, path="/")
    return resp


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


def mount(app: web.Application, api: ApiContext) -> Console:
    """Add the console's pages and static files to the API's app."""
    verifier = api.auth.oidc
    c = Console(api, clock=api.clock, oidc=OidcSignIn(verifier) if verifier is not None else None)
    app[CONSOLE] = c

    async def close(_app: web.Application) -> None:
        if c.oidc is not None:
            await c.oidc.close()

    app.on_cleanup.append(close)
    app.add_routes(routes)
    app.router.add_static("/static/", HERE / "static", append_version=False)
    app.on_response_prepare.append(security_headers(is_console_path))
    return c
