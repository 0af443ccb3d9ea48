"""Sign-in links and console sessions: one use, short life, forged or expired refused; server-side expiry. Both
live in the store (SQLite and real PostgreSQL): a sign-in and a used link hold on every replica of one store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.control.caller import Caller
from gateway.store import Store
from gateway.tokens import KeyRing
from gateway.web.links import LinkRefused, UsedLinks, make_link_token
from gateway.web.websessions import WebSessions
from tests.storekit import KINDS, Backend, backend_for


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return backend_for(request, tmp_path)


@pytest.fixture
async def two(backend: Backend) -> AsyncIterator[tuple[Store, Store]]:
    """Two store objects on one store: two replicas."""
    a, b = await backend.make(node="gw-a").open(), await backend.make(node="gw-b").open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_link_works_once_and_expires(tmp_path: Path, two: tuple[Store, Store]) -> None:
    ring = KeyRing.load_or_create(tmp_path)
    on_a, on_b = UsedLinks(two[0]), UsedLinks(two[1])
    token = make_link_token(ring, "bob", now=1000.0, ttl=60)
    assert await on_a.redeem(ring, token, now=1001.0) == "bob"
    for used in (on_a, on_b):  # used once means once on every replica
        with pytest.raises(LinkRefused, match="already used"):
            await used.redeem(ring, token, now=1002.0)
    late = make_link_token(ring, "bob", now=1000.0, ttl=60)
    with pytest.raises(LinkRefused, match="expired"):
        await on_a.redeem(ring, late, now=1060.0)


async def test_forged_and_foreign_links_refused(tmp_path: Path, two: tuple[Store, Store]) -> None:
    ring = KeyRing.load_or_create(tmp_path / "a")
    other = KeyRing.load_or_create(tmp_path / "b")
    used = UsedLinks(two[0])
    payload, kid, sig = make_link_token(ring, "bob", now=0.0).split(".")
    forged = make_link_token(ring, "erin", now=0.0).split(".")[0]
    for bad in (f"{forged}.{kid}.{sig}", make_link_token(other, "bob", now=0.0), "x", "a.b.c", "." * 2):
        with pytest.raises(LinkRefused):
            await used.redeem(ring, bad, now=1.0)
    # a bare key signature of the same bytes (no link context) is no link either
    k2, s2 = ring.sign_bytes(payload.encode())
    with pytest.raises(LinkRefused, match="not signed"):
        await used.redeem(ring, f"{payload}.{k2}.{s2}", now=1.0)


async def test_sessions_expire_server_side_and_hold_across_replicas(backend: Backend, two: tuple[Store, Store]) -> None:
    on_a, on_b = WebSessions(two[0], ttl=100), WebSessions(two[1], ttl=100)
    sid = await on_a.open(Caller("bob", frozenset({"admins"}), admin=True, via="oidc"), now=0.0)
    ws = await on_b.get(sid, now=99.0)  # signed in through A, served by B
    assert ws is not None and (ws.caller.name, ws.caller.groups, ws.caller.admin, ws.caller.via) == (
        "bob", frozenset({"admins"}), True, "oidc")  # fmt: skip
    assert ws.csrf_ok(ws.csrf) and not ws.csrf_ok(None) and not ws.csrf_ok(ws.csrf + "x")
    assert await on_a.get(sid, now=100.0) is None
    sid = await on_a.open(Caller("bob"), now=0.0)
    await on_b.close(sid)  # signed out on B: gone on A too
    assert await on_a.get(sid, now=1.0) is None
    assert "csrf" not in repr(await on_a.get(await on_a.open(Caller("bob"), now=0.0), now=0.0))
    # the store holds a hash of the cookie, never the cookie
    sid = await on_a.open(Caller("carol"), now=0.0)
    rows = await backend.raw("SELECT key FROM web_sessions")
    assert rows and all(sid not in str(r) for r in rows)
