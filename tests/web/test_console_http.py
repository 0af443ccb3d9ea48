"""The console over HTTP (aiohttp client): sign-in link, cookie and CSP, approve/deny, self-approval, CSRF, revoke."""

from __future__ import annotations

import re

import aiohttp
import yarl

from gateway.cli.console import console_link
from gateway.config import Config
from tests.control.conftest import Running

XSS = 'INC-1 <script>alert(1)</script> "><img src=x onerror=alert(2)> javascript:alert(3)'


async def browser(gw: Running, config: Config, user: str) -> aiohttp.ClientSession:
    """A client signed in as `user` through a fresh sign-in link."""
    s = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    link = console_link(config, user).replace(f":{config.listen_http.port}", f":{gw.port}")
    try:
        async with s.get(link, allow_redirects=False) as resp:
            assert resp.status == 200, await resp.text()
    except BaseException:
        await s.close()
        raise
    return s


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m is not None
    return m.group(1)


async def test_signin_link_cookie_and_headers(gw: Running, config: Config) -> None:
    link = console_link(config, "bob").replace(f":{config.listen_http.port}", f":{gw.port}")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(gw.url + "/") as resp:
            assert resp.status == 401 and "console-link" in await resp.text()
        async with s.get(link, allow_redirects=False) as resp:
            assert resp.status == 200 and 'http-equiv="refresh"' in await resp.text()
            cookie = resp.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie  # plain HTTP
        async with s.get(gw.url + "/") as resp:
            page = await resp.text()
            assert resp.status == 200 and "Hello bob" in page
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "unsafe-inline" not in csp
            assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Frame-Options"] == "DENY"
        async with s.get(link, allow_redirects=False) as resp:
            assert resp.status == 403 and "already used" in await resp.text()
        # sign-out ends the session on the server: the old cookie no longer works
        old = {c.key: c.value for c in s.cookie_jar}
        async with s.post(gw.url + "/signout", data={"csrf": csrf_of(page)}, allow_redirects=False) as resp:
            assert resp.status == 303
    async with aiohttp.ClientSession(cookies=old) as s2, s2.get(gw.url + "/") as resp:
        assert resp.status == 401
    # the API still wants its bearer credentials: a console cookie is no API credential
    async with aiohttp.ClientSession(cookies=old) as s3, s3.get(gw.url + "/v1/requests") as resp:
        assert resp.status == 401


async def test_approve_self_approval_csrf_and_escaping(gw: Running, config: Config) -> None:
    req = await gw.ok(
        "alice", "POST", "/v1/requests", {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": XSS}
    )
    rid = req["id"]
    alice = await browser(gw, config, "alice")
    bob = await browser(gw, config, "bob")
    async with alice, bob:
        async with alice.get(gw.url + "/requests") as resp:
            page = await resp.text()
        assert "nobody approves their own request" in page and f"/requests/{rid}/approve" not in page
        assert "<script>alert" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
        # a forged POST (with alice's own valid CSRF token) is refused by the workflow's rule
        async with alice.post(f"{gw.url}/requests/{rid}/approve", data={"csrf": csrf_of(page)}) as resp:
            assert resp.status == 403 and "own request" in await resp.text()
        async with bob.get(gw.url + "/requests") as resp:
            page = await resp.text()
        assert f'action="/requests/{rid}/approve"' in page and "<script>alert" not in page
        async with bob.post(f"{gw.url}/requests/{rid}/approve", data={"comment": "ok"}) as resp:
            assert resp.status == 403 and "CSRF" in await resp.text()
        async with bob.post(f"{gw.url}/requests/{rid}/approve", data={"csrf": "x" * 43}) as resp:
            assert resp.status == 403
        assert (await gw.ok("alice", "GET", f"/v1/requests/{rid}"))["state"] == "pending"
        form = {"csrf": csrf_of(page), "comment": "looks fine"}
        async with bob.post(f"{gw.url}/requests/{rid}/approve", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        got = await gw.ok("alice", "GET", f"/v1/requests/{rid}")
        assert got["state"] == "approved"
        # bob (not an admin) sees no grant of alice's; alice gives hers back on her grants page
        async with bob.get(gw.url + "/grants") as resp:
            assert "No active grants" in await resp.text()
        async with alice.get(gw.url + "/grants") as resp:
            page = await resp.text()
        gid = got["grant"]
        assert f"/grants/{gid}/revoke" in page and "Give back" in page and "<script>alert" not in page
        async with bob.post(f"{gw.url}/grants/{gid}/revoke", data={"csrf": csrf_of(page)}) as resp:
            assert resp.status == 403  # alice's token is not bob's
        async with bob.get(gw.url + "/grants") as resp:
            bob_csrf = csrf_of(await resp.text())
        async with bob.post(f"{gw.url}/grants/{gid}/revoke", data={"csrf": bob_csrf}) as resp:
            assert resp.status == 404  # not his to see, as in the API
        form = {"csrf": csrf_of(page), "reason": "done early"}
        async with alice.post(f"{gw.url}/grants/{gid}/revoke", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
        assert (await gw.ok("alice", "GET", f"/v1/grants/{gid}"))["state"] == "revoked"


async def test_vendored_assets_served_with_licenses(gw: Running) -> None:
    async with aiohttp.ClientSession() as s:
        for path in (
            "/static/vendor/htmx/htmx.min.js",
            "/static/vendor/asciinema-player/asciinema-player.min.js",
            "/static/vendor/asciinema-player/LICENSE",
            "/static/vendor/htmx/LICENSE",
            "/static/console.css",
        ):
            async with s.get(gw.url + path) as resp:
                assert resp.status == 200, path
                assert len(await resp.read()) > 100
        for escape in ("/static/..%2fgateway.toml", "/static/%2e%2e/gateway.toml"):
            async with s.get(yarl.URL(gw.url + escape, encoded=True)) as resp:
                assert resp.status in (403, 404), escape


async def test_every_console_route_has_the_headers_and_every_form_needs_csrf(gw: Running, config: Config) -> None:
    """Walk the console's route tables: each page carries the CSP (signed in or not); each POST is refused
    without a session and, signed in, without the CSRF token, before its handler runs."""
    from aiohttp import web as aioweb

    from gateway.web import mine, pages, review, search, signin, stream

    defs = [r for m in (mine, pages, review, search, signin, stream) for r in m.routes]
    routes = [(r.method, r.path) for r in defs if isinstance(r, aioweb.RouteDef)]
    posts = [p for m, p in routes if m == "POST"]
    gets = [p for m, p in routes if m == "GET"]
    assert "/search" in gets and "/requests/{id}/{action:approve|deny}" in posts and len(posts) >= 6

    def concrete(path: str) -> str:
        return re.sub(r"\{(\w+)(:[^}]*)?\}", lambda m: "approve" if m.group(1) == "action" else "x1", path)

    erin = await browser(gw, config, "erin")
    async with erin, aiohttp.ClientSession() as anon:
        for path in gets:
            async with erin.get(gw.url + concrete(path), allow_redirects=False) as resp:
                assert "script-src 'self' 'wasm-unsafe-eval'" in resp.headers["Content-Security-Policy"], path
                assert resp.headers["X-Frame-Options"] == "DENY", path
        for path in posts:
            async with anon.post(gw.url + concrete(path), data={"csrf": "x"}, allow_redirects=False) as resp:
                assert resp.status == 401, path
            async with erin.post(gw.url + concrete(path), data={}, allow_redirects=False) as resp:
                assert resp.status == 403 and "CSRF" in await resp.text(), path
