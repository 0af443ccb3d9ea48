"""The whole flow over HTTP: request, approve by another user, token, session, revoke, kill."""

from __future__ import annotations

import asyncio
import time

from gateway.access import AccessDenied
from gateway.sessions import LiveSession
from tests.control.conftest import Running
from tests.held import hold, release


async def _session(
    gw: Running, token: str, target: str = "orders-db", protocol: str = "postgres"
) -> tuple[LiveSession, asyncio.Event]:
    """Open a live session with the token as a front end would; the event is set once a kill has ended it."""
    s = await hold(gw.services.access, token=token, target=target, protocol=protocol)
    killed = asyncio.Event()
    gw.services.registry.end_listeners.append(lambda end: _set_if(end.session is s and end.killed_by, killed))
    return s, killed


async def _set_if(cond: object, event: asyncio.Event) -> None:
    if cond:
        event.set()


async def test_request_approve_token_connect(gw: Running) -> None:
    req = await gw.ok(
        "alice",
        "POST",
        "/v1/requests",
        {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "INC-1234: refund stuck"},
    )
    assert req["state"] == "pending" and req["requester"] == "alice" and req["approvals_needed"] == 1
    pending = await gw.ok("bob", "GET", "/v1/requests", params={"pending": "true"})
    assert [r["id"] for r in pending["requests"]] == [req["id"]]
    # no token before approval
    status, err = await gw.call("alice", "GET", f"/v1/requests/{req['id']}/token")
    assert status == 409 and "pending" in err["error"]["message"]
    done = await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "ok"})
    assert done["state"] == "approved" and done["grant"].startswith("g_")
    assert done["approvals"][0]["by"] == "bob"
    tok = await gw.ok("alice", "GET", f"/v1/requests/{req['id']}/token")
    assert tok["grant"] == done["grant"]
    # the token is alice's alone: bob (the approver) and erin (admin) cannot fetch it
    for other in ("bob", "erin"):
        status, _ = await gw.call(other, "GET", f"/v1/grants/{done['grant']}/token")
        assert status in (403, 404)
    s, _ = await _session(gw, tok["token"])
    assert s.user == "alice" and s.claims.approvers == ("bob",)
    await release(s, "done")
    types = [e.type for e in await gw.services.store.events()]
    for t in ("request.created", "request.approval", "grant.issued", "request.approved", "grant.token_fetched"):
        assert t in types


async def test_self_approval_refused_and_audited(gw: Running) -> None:
    req = await gw.ok(
        "alice", "POST", "/v1/requests", {"target": "orders-db", "scope": "read", "ttl": 600, "reason": "INC-1"}
    )
    status, err = await gw.call("alice", "POST", f"/v1/requests/{req['id']}/approve", {})
    assert status == 403 and "own request" in err["error"]["message"]
    assert (await gw.ok("alice", "GET", f"/v1/requests/{req['id']}"))["state"] == "pending"
    ev = [e for e in await gw.services.store.events(types=["api.forbidden"])]
    assert ev and ev[-1].actor == "alice"


async def test_two_approvals_from_dba(gw: Running) -> None:
    req = await gw.ok(
        "alice",
        "POST",
        "/v1/requests",
        {"target": "orders-db", "scope": "write", "ttl": "10m", "reason": "INC-2: fix row"},
    )
    assert req["approvals_needed"] == 2
    status, err = await gw.call("bob", "POST", f"/v1/requests/{req['id']}/approve", {})
    assert status == 403 and "group dba" in err["error"]["message"]
    one = await gw.ok("carol", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "first"})
    assert one["state"] == "pending" and len(one["approvals"]) == 1
    status, err = await gw.call("carol", "POST", f"/v1/requests/{req['id']}/approve", {})
    assert status == 409 and "already approved" in err["error"]["message"]
    two = await gw.ok("dave", "POST", f"/v1/requests/{req['id']}/approve", {"comment": "second"})
    assert two["state"] == "approved"
    grant = await gw.ok("alice", "GET", f"/v1/grants/{two['grant']}")
    assert grant["approvers"] == ["carol", "dave"] and grant["scope"] == "write"


async def test_requester_not_allowed_by_policy(gw: Running) -> None:
    status, err = await gw.call(
        "mallory", "POST", "/v1/requests", {"target": "orders-db", "scope": "read", "ttl": "5m", "reason": "curious"}
    )
    assert status == 403 and "does not let mallory" in err["error"]["message"]
    assert await gw.services.store.list_requests() == []


async def test_auto_approve_is_audited(gw: Running) -> None:
    req = await gw.ok(
        "mallory", "POST", "/v1/requests", {"target": "orders-db", "scope": "stats", "ttl": "5m", "reason": "dashboard"}
    )
    assert req["state"] == "approved" and req["decided_by"] == "policy:auto-approve"
    assert await gw.services.store.events(types=["request.auto_approved"])


async def test_deny_then_approve_is_conflict(gw: Running) -> None:
    req = await gw.ok(
        "alice", "POST", "/v1/requests", {"target": "web-1", "scope": "shell", "ttl": "5m", "reason": "INC-3"}
    )
    denied = await gw.ok("bob", "POST", f"/v1/requests/{req['id']}/deny", {"comment": "use staging"})
    assert denied["state"] == "denied" and denied["comment"] == "use staging"
    status, err = await gw.call("carol", "POST", f"/v1/requests/{req['id']}/approve", {})
    assert status == 409 and "already denied" in err["error"]["message"]
    status, _ = await gw.call("alice", "POST", f"/v1/requests/{req['id']}/cancel", {})
    assert status == 409


async def test_cancel_only_by_requester(gw: Running) -> None:
    req = await gw.ok(
        "alice", "POST", "/v1/requests", {"target": "web-1", "scope": "shell", "ttl": "5m", "reason": "INC-4"}
    )
    status, _ = await gw.call("bob", "POST", f"/v1/requests/{req['id']}/cancel", {})
    assert status == 403
    assert (await gw.ok("alice", "POST", f"/v1/requests/{req['id']}/cancel", {}))["state"] == "cancelled"


async def test_visibility(gw: Running) -> None:
    req = await gw.ok(
        "alice", "POST", "/v1/requests", {"target": "orders-db", "scope": "write", "ttl": "5m", "reason": "INC-5"}
    )
    # bob may not approve writes (dba only), so he does not see alice's write request; carol and erin do
    status, _ = await gw.call("bob", "GET", f"/v1/requests/{req['id']}")
    assert status == 404
    assert (await gw.ok("bob", "GET", "/v1/requests"))["requests"] == []
    assert [r["id"] for r in (await gw.ok("carol", "GET", "/v1/requests"))["requests"]] == [req["id"]]
    assert [r["id"] for r in (await gw.ok("erin", "GET", "/v1/requests"))["requests"]] == [req["id"]]
    mine = await gw.ok("alice", "GET", "/v1/requests", params={"mine": "true"})
    assert [r["id"] for r in mine["requests"]] == [req["id"]]


async def test_revoke_ends_sessions_within_1s_and_refuses_new(gw: Running) -> None:
    _, grant, token = await gw.approved_grant()
    _s1, k1 = await _session(gw, token)
    _s2, k2 = await _session(gw, token)
    t0 = time.monotonic()
    out = await gw.ok("alice", "POST", f"/v1/grants/{grant}/revoke", {"reason": "done"})
    await asyncio.wait_for(asyncio.gather(k1.wait(), k2.wait()), 1.0)
    assert time.monotonic() - t0 < 1.0
    assert out["state"] == "revoked" and out["sessions_ended"] == 2
    rows = await gw.ok("alice", "GET", "/v1/sessions", params={"grant": grant})
    assert all(not r["live"] and "grant revoked: done" in r["end_reason"] for r in rows["sessions"])
    try:
        await _session(gw, token)
        raise AssertionError("a revoked grant opened a session")
    except AccessDenied as exc:
        assert exc.code == "revoked"
    status, _ = await gw.call("alice", "GET", f"/v1/grants/{grant}/token")
    assert status == 409
    status, _ = await gw.call("alice", "POST", f"/v1/grants/{grant}/revoke", {"reason": "again"})
    assert status == 409
    assert await gw.services.store.events(types=["alert.revocation"])


async def test_revoke_from_another_process_reaches_sessions(gw: Running) -> None:
    """`gateway revoke` with no server writes the store; the watcher (0.25 s) ends the sessions."""
    _, grant, token = await gw.approved_grant()
    _, killed = await _session(gw, token)
    t0 = time.monotonic()
    await gw.services.store.revoke_grant(grant, by="cli:ops", reason="elsewhere", now=time.time())
    await asyncio.wait_for(killed.wait(), 1.0)
    assert time.monotonic() - t0 < 1.0


async def test_revoke_authorisation(gw: Running) -> None:
    _, grant, _ = await gw.approved_grant()
    status, _ = await gw.call("bob", "POST", f"/v1/grants/{grant}/revoke", {"reason": "mine now"})
    assert status == 404  # bob neither owns it nor is admin: invisible
    out = await gw.ok("erin", "POST", f"/v1/grants/{grant}/revoke", {"reason": "admin says"})
    assert out["revoked_by"] == "erin"


async def test_kill_session(gw: Running) -> None:
    _, _, token = await gw.approved_grant()
    s, killed = await _session(gw, token)
    status, _ = await gw.call("bob", "POST", f"/v1/sessions/{s.id}/kill", {})
    assert status == 404
    out = await gw.ok("erin", "POST", f"/v1/sessions/{s.id}/kill", {"reason": "suspicious"})
    assert out["killed_here"] is True
    await asyncio.wait_for(killed.wait(), 1.0)
    got = await gw.ok("alice", "GET", f"/v1/sessions/{s.id}")
    assert got["live"] is False and got["end_reason"] == "suspicious"
    status, _ = await gw.call("erin", "POST", f"/v1/sessions/{s.id}/kill", {})
    assert status == 409


async def test_grants_and_sessions_lists_are_scoped(gw: Running) -> None:
    await gw.approved_grant("alice", "bob")
    await gw.approved_grant("bob", "alice")
    mine = await gw.ok("alice", "GET", "/v1/grants")
    assert {g["user"] for g in mine["grants"]} == {"alice"}
    assert (await gw.ok("alice", "GET", "/v1/grants", params={"user": "bob"}))["grants"] == []
    everyone = await gw.ok("erin", "GET", "/v1/grants")
    assert {g["user"] for g in everyone["grants"]} == {"alice", "bob"}


async def test_audit_is_admin_only(gw: Running) -> None:
    status, _ = await gw.call("alice", "GET", "/v1/audit")
    assert status == 403
    out = await gw.ok("erin", "GET", "/v1/audit", params=[("type", "gateway.start"), ("limit", "5")])
    assert [e["type"] for e in out["events"]] == ["gateway.start"]
    v = await gw.ok("erin", "GET", "/v1/audit/verify")
    assert v["ok"] is True
    # what the signatures cover, in numbers: events after the last checkpoint are only chained, not signed
    cp = v["last_checkpoint"] or 0
    assert v["unsigned_tail"] == v["checked"] - cp and v["unsigned_tail"] > 0
    assert f"({v['unsigned_tail']} of them) are not covered by a signature" in v["summary"] or cp == 0


async def test_public_endpoints(gw: Running) -> None:
    assert (await gw.ok(None, "GET", "/healthz"))["status"] == "ok"
    jwks = await gw.ok(None, "GET", "/.well-known/jwks.json")
    assert jwks["keys"][0]["kty"] == "OKP"
    status, _ = await gw.call(None, "GET", "/v1/requests")
    assert status == 401
    me = await gw.ok("erin", "GET", "/v1/whoami")
    assert me == {"user": "erin", "groups": ["admins"], "admin": True, "via": "api-key"}


async def test_pending_request_alerts(gw: Running) -> None:
    req = await gw.ok("alice", "POST", "/v1/requests", {"target": "web-1", "scope": "shell", "ttl": 60, "reason": "x"})
    ev = await gw.services.store.events(types=["alert.request.pending"])
    assert ev and req["id"] in ev[-1].data["summary"]


async def test_policy_change_never_widens_an_issued_grant(gw: Running) -> None:
    """The token is rebuilt from the stored grant: a later, wider policy changes nothing about it."""
    from gateway.policy import Policies, ScopePolicy, TargetPolicy

    _, grant, before = await gw.approved_grant()
    wide = TargetPolicy("orders-db", {"read": ScopePolicy("read", max_ttl=86400.0)})
    gw.services.policies.replace(Policies({**{t.target: t for t in gw.services.policies.targets()}, "orders-db": wide}))
    after = (await gw.ok("alice", "GET", f"/v1/grants/{grant}/token"))["token"]
    assert after == before
