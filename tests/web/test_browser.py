"""The console in a real headless Chromium, signing in through a real OIDC provider (node's oidc-provider)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_config
from tests.control.conftest import Running, start_gateway, write_config
from tests.rig.idp import NodeIdp, start_idp
from tests.rig.ports import free_ports
from tests.web.browser import Browser, chrome

pytestmark = pytest.mark.slow

CLIENT = "gateway-console"
IDP_USERS = {
    "alice": {"password": "alice-pw", "groups": ["engineers"]},
    "bob": {"password": "bob-pw", "groups": ["engineers"]},
}


@pytest.fixture(scope="module")
def ports() -> tuple[int, int]:
    """(IdP port, the gateway's HTTP port): the IdP must know the console's redirect URI before it starts."""
    idp, http = free_ports(2)
    return idp, http


@pytest.fixture(scope="module")
def idp(ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeIdp]:
    """node oidc-provider with alice and bob, one public client: the console (PKCE required)."""
    redirect = f"http://127.0.0.1:{ports[1]}/signin/callback"
    log = tmp_path_factory.mktemp("idp") / "idp.log"
    p = start_idp(ports[0], [{"client_id": CLIENT, "redirect_uris": [redirect]}], IDP_USERS, log)
    yield p
    p.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One browser for the module; screenshots under the test output folder."""
    driver = chrome()
    yield Browser(driver, tmp_path_factory.mktemp("screenshots"))
    driver.quit()


@pytest.fixture
async def console_gw(
    tmp_path: Path, api_keys: dict[str, str], idp: NodeIdp, ports: tuple[int, int]
) -> AsyncIterator[Running]:
    """A gateway (HTTP) whose [oidc] is the node IdP, on the port the IdP redirects to."""
    extra = f'[oidc]\nissuer = "{idp.issuer}"\naudience = "{CLIENT}"\njwks_url = "{idp.jwks_url}"\n'
    path = write_config(tmp_path, api_keys, extra=extra)
    path.write_text(re.sub(r'http = "127\.0\.0\.1:\d+"', f'http = "127.0.0.1:{ports[1]}"', path.read_text()))
    config = load_config(path, need_secrets=False)
    svc, port, stop = await start_gateway(config)
    async with aiohttp.ClientSession() as session:
        yield Running(svc, port, api_keys, session, stop)
    await stop()


async def oidc_sign_in(b: Browser, gw: Running, user: str) -> None:
    """Sign in on the console through the IdP's real login page."""
    await b.do(b.driver.delete_all_cookies)
    await b.get(gw.url + "/")
    await b.click("#signin-oidc")
    await b.type("#idp-user", user)
    await b.type("#idp-password", str(IDP_USERS[user]["password"]))
    await b.click("#idp-submit")
    await b.wait_text(f"Hello {user}")


async def test_oidc_sign_in_and_out(browser: Browser, console_gw: Running) -> None:
    b, gw = browser, console_gw
    await oidc_sign_in(b, gw, "bob")
    await b.shot("home")
    assert b.driver.current_url == gw.url + "/"
    cookies = {c["name"]: c for c in await b.do(b.driver.get_cookies)}
    assert cookies["gw_console"]["httpOnly"] and cookies["gw_console"]["sameSite"] == "Strict"
    events = await gw.services.store.events(types=["console.signin"])
    assert [(e.actor, e.data["via"]) for e in events] == [("bob", "oidc")]
    await b.click("button[type=submit]")  # sign out
    await b.wait_text("Sign in")
    await b.get(gw.url + "/requests")
    await b.wait_text("Sign in")
