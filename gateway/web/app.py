"""Mount the console on the API's aiohttp app: its pages, static files and security headers."""

from __future__ import annotations

from aiohttp import web

from gateway.api.context import ApiContext
from gateway.web import mine, pages, review, search, signin, stream
from gateway.web.core import CONSOLE, HERE, Console, is_console_path
from gateway.web.headers import security_headers
from gateway.web.oidc import OidcSignIn

__all__ = ["is_console_path", "mount"]


def mount(app: web.Application, api: ApiContext) -> Console:
    """Add the console's pages and static files to the API's app."""
    verifier = api.auth.oidc
    c = Console(api, clock=api.clock, oidc=OidcSignIn(verifier) if verifier is not None else None)
    app[CONSOLE] = c

    async def close(_app: web.Application) -> None:
        if c.oidc is not None:
            await c.oidc.close()

    app.on_cleanup.append(close)
    for module in (signin, pages, review, search, stream, mine):
        app.add_routes(module.routes)
    app.router.add_static("/static/", HERE / "static", append_version=False)
    app.on_response_prepare.append(security_headers(is_console_path))
    return c
