"""What every console page shares: the Console state, the signed-in/CSRF wrapper, rendering."""

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
from gateway.control.caller import Caller
from gateway.control.errors import WorkflowError
from gateway.web.links import UsedLinks
from gateway.web.oidc import OidcSignIn
from gateway.web.websessions import COOKIE, WebSession, WebSessions

FLOW_COOKIE = "gw_oidc_flow"

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# The first path segment of every console page: the API's auth middleware lets these through to the console's own.
ROOTS = frozenset(
    {"", "signin", "signout", "static", "requests", "grants", "live", "sessions", "search", "audit", "me"}
)
STATUS = {"invalid": 422, "forbidden": 403, "not-found": 404, "conflict": 409}


def is_console_path(path: str) -> bool:
    """Whether `path` is served by the console (its own sign-in), not the API (bearer credentials)."""
    return path.split("/", 2)[1] in ROOTS


@dataclass
class Console:
    """The console's state: who is signed in, which links were used, the templates."""

    api: ApiContext
    clock: Callable[[], float] = time.time
    sessions: WebSessions = field(init=False)
    links: UsedLinks = field(init=False)
    oidc: OidcSignIn | None = None
    env: jinja2.Environment = field(
        default_factory=lambda: jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined
        )
    )

    def __post_init__(self) -> None:
        # Sign-ins and used links live in the store: every replica behind a load balancer shares them.
        self.sessions = WebSessions(self.api.services.store)
        self.links = UsedLinks(self.api.services.store)
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
            await self.sessions.open(who, now=self.clock()),
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
        ws = await c.sessions.get(request.cookies.get(COOKIE), now=c.clock())
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
