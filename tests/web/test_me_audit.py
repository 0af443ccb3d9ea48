"""/me (request with the API's rules, the token on click, give back) and /audit (admins; verify on click)."""

from __future__ import annotations

import aiohttp

from gateway.config import Config
from tests.control.conftest import Running
from tests.web.test_console_http import browser, csrf_of


async def test_request_token_and_give_back(gw: Running, config: Config) -> None:
    alice = await browser(gw, config, "alice")
    async with alice:
        async with alice.get(gw.url + "/me") as resp:
            page = await resp.text()
        form = {"csrf": csrf_of(page), "target": "orders-db", "scope": "read", "ttl": "10m", "reason": "INC-9"}
        async with alice.post(gw.url + "/me/request", data=form) as resp:
            assert resp.status == 200 and "INC-9" in await resp.text()
        # the same rule as the CLI and the API: a scope the policy does not let alice ask for
        async with alice.post(gw.url + "/me/request", data={**form, "scope": "nope"}) as resp:
            assert resp.status == 422
        rid = (await gw.ok("alice", "GET", "/v1/requests"))["requests"][0]["id"]
        await gw.ok("bob", "POST", f"/v1/requests/{rid}/approve", {"comment": "ok"})
        gid = (await gw.ok("alice", "GET", f"/v1/requests/{rid}"))["grant"]
        async with alice.get(gw.url + "/me") as resp:
            page = await resp.text()
        assert f"gateway psql orders-db --grant {gid}" in page and 'id="token"' not in page
        async with alice.post(f"{gw.url}/me/grants/{gid}/token", data={"csrf": csrf_of(page)}) as resp:
            shown = await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
        assert 'id="token"' in shown and "eyJ" in shown
        async with alice.post(f"{gw.url}/grants/{gid}/revoke", data={"csrf": csrf_of(page), "reason": "done"}) as resp:
            assert resp.status == 200
        assert (await gw.ok("alice", "GET", f"/v1/grants/{gid}"))["state"] == "revoked"


async def test_audit_page_is_for_admins(gw: Running, config: Config) -> None:
    alice, erin = await browser(gw, config, "alice"), await browser(gw, config, "erin")
    async with alice, erin:
        async with alice.get(gw.url + "/audit") as resp:
            assert resp.status == 403
        async with erin.get(gw.url + "/audit") as resp:
            page = await resp.text()
        async with erin.post(gw.url + "/audit/verify", data={"csrf": csrf_of(page)}) as resp:
            out = await resp.text()
        assert resp.status == 200 and 'id="verdict" class="ok"' in out
    async with aiohttp.ClientSession() as anon, anon.post(gw.url + "/audit/verify") as resp:
        assert resp.status == 401
