"""Sign-in links and console sessions: one use, short life, forged or expired refused; server-side expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.control.caller import Caller
from gateway.tokens import KeyRing
from gateway.web.links import LinkRefused, UsedLinks, make_link_token
from gateway.web.websessions import WebSessions


def test_link_works_once_and_expires(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path)
    used = UsedLinks()
    token = make_link_token(ring, "bob", now=1000.0, ttl=60)
    assert used.redeem(ring, token, now=1001.0) == "bob"
    with pytest.raises(LinkRefused, match="already used"):
        used.redeem(ring, token, now=1002.0)
    late = make_link_token(ring, "bob", now=1000.0, ttl=60)
    with pytest.raises(LinkRefused, match="expired"):
        used.redeem(ring, late, now=1060.0)


def test_forged_and_foreign_links_refused(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path / "a")
    other = KeyRing.load_or_create(tmp_path / "b")
    used = UsedLinks()
    payload, kid, sig = make_link_token(ring, "bob", now=0.0).split(".")
    forged = make_link_token(ring, "erin", now=0.0).split(".")[0]
    for bad in (f"{forged}.{kid}.{sig}", make_link_token(other, "bob", now=0.0), "x", "a.b.c", "." * 2):
        with pytest.raises(LinkRefused):
            used.redeem(ring, bad, now=1.0)
    # a bare key signature of the same bytes (no link context) is no link either
    k2, s2 = ring.sign_bytes(payload.encode())
    with pytest.raises(LinkRefused, match="not signed"):
        used.redeem(ring, f"{payload}.{k2}.{s2}", now=1.0)


def test_sessions_expire_server_side() -> None:
    s = WebSessions(ttl=100)
    sid = s.open(Caller("bob"), now=0.0)
    ws = s.get(sid, now=99.0)
    assert ws is not None and ws.caller.name == "bob"
    assert ws.csrf_ok(ws.csrf) and not ws.csrf_ok(None) and not ws.csrf_ok(ws.csrf + "x")
    assert s.get(sid, now=100.0) is None
    assert s.get(sid, now=1.0) is None  # forgotten, not only hidden
    sid = s.open(Caller("bob"), now=0.0)
    s.close(sid)
    assert s.get(sid, now=1.0) is None
    assert "csrf" not in repr(s.get(s.open(Caller("bob"), now=0.0), now=0.0))
