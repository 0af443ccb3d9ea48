"""Bad input gets a 4xx with a clear message, and nothing changes (no request, no grant, no audit event)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.control.conftest import Running

GOOD = {"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "INC-1"}


async def _snapshot(gw: Running) -> tuple[Any, ...]:
    st = gw.services.store
    return (
        await st.list_requests(),
        await st.list_grants(),
        len(await st.events()),
    )


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'"text"', 400, "must be a JSON object"),
        (
            b'{"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "x", "admin": true}',
            400,
            "unknown field 'admin'",
        ),
        (b'{"target": 5, "scope": "read", "ttl": "15m", "reason": "x"}', 400, "'target' must be a string"),
        (b'{"target": "orders-db", "scope": "read", "ttl": true, "reason": "x"}', 400, "'ttl'"),
        (b'{"target": "orders-db", "scope": "read", "ttl": -5, "reason": "x"}', 400, "more than zero"),
        (b'{"target": "orders-db", "scope": "read", "ttl": "forever", "reason": "x"}', 400, "invalid duration"),
        (b'{"target": "orders-db", "scope": "read", "ttl": "15m"}', 400, "'reason' is required"),
        (b'{"target": "orders-db", "scope": "read", "ttl": "15m", "reason": "   "}', 422, "reason is required"),
        (b'{"target": "nope", "scope": "read", "ttl": "15m", "reason": "x"}', 422, "unknown target"),
        (b'{"target": "orders-db", "scope": "root", "ttl": "15m", "reason": "x"}', 422, "no scope 'root'"),
        (b'{"target": "orders-db", "scope": "read", "ttl": "2h", "reason": "x"}', 422, "exceeds the policy's max_ttl"),
        (b'{"target": "orders-db", "scope": "read", "ttl": "15m", "reason": null}', 400, "must be a string"),
    ],
)
async def test_create_bad_input(gw: Running, raw: bytes, status: int, words: str) -> None:
    before = await _snapshot(gw)
    got, body = await gw.call("alice", "POST", "/v1/requests", raw=raw)
    assert got == status, body
    assert words in body["error"]["message"]
    assert await _snapshot(gw) == before


async def test_huge_body_refused(gw: Running) -> None:
    before = await _snapshot(gw)
    got, body = await gw.call("alice", "POST", "/v1/requests", raw=b'{"reason": "' + b"x" * 200_000 + b'"}')
    assert got == 413, body
    assert await _snapshot(gw) == before


async def test_wrong_content_type(gw: Running) -> None:
    got, body = await gw.call("alice", "POST", "/v1/requests", raw=b"target=x", headers={"Content-Type": "text/plain"})
    assert got == 415 and "JSON" in body["error"]["message"]


async def test_unknown_ids(gw: Running) -> None:
    before = await _snapshot(gw)
    for method, path, body in [
        ("GET", "/v1/requests/r_nope", None),
        ("POST", "/v1/requests/r_nope/approve", {}),
        ("POST", "/v1/requests/r_nope/deny", {}),
        ("POST", "/v1/requests/r_nope/cancel", {}),
        ("GET", "/v1/requests/r_nope/token", None),
        ("GET", "/v1/grants/g_nope", None),
        ("POST", "/v1/grants/g_nope/revoke", {"reason": "x"}),
        ("GET", "/v1/grants/g_nope/token", None),
        ("GET", "/v1/sessions/s_nope", None),
        ("POST", "/v1/sessions/s_nope/kill", {}),
    ]:
        got, out = await gw.call("erin", method, path, body)
        assert got == 404, (path, out)
        assert "nope" in out["error"]["message"]
    got, _ = await gw.call("erin", "GET", "/v1/nothing-here")
    assert got == 404
    got, out = await gw.call("erin", "DELETE", "/v1/requests")
    assert got == 405 and out["error"]["code"] == "method-not-allowed"
    assert await _snapshot(gw) == before


async def test_bad_query_parameters(gw: Running) -> None:
    for params in ({"stat": "pending"}, {"state": "bogus"}, {"mine": "maybe"}):
        got, out = await gw.call("alice", "GET", "/v1/requests", params=params)
        assert got == 400, out
    got, out = await gw.call("erin", "GET", "/v1/audit", params={"limit": "0"})
    assert got == 400 and "limit" in out["error"]["message"]
    got, out = await gw.call("erin", "GET", "/v1/sessions", params={"since": "yesterday"})
    assert got == 400


async def test_illegal_transitions_change_nothing(gw: Running) -> None:
    rid, grant, _ = await gw.approved_grant()
    before = await _snapshot(gw)
    for user, verb in (("carol", "approve"), ("carol", "deny"), ("alice", "cancel")):
        got, out = await gw.call(user, "POST", f"/v1/requests/{rid}/{verb}", {})
        assert got == 409 and "already approved" in out["error"]["message"], out
    got, out = await gw.call("bob", "POST", f"/v1/requests/{rid}/approve", {"comment": 5})
    assert got == 400
    got, out = await gw.call("alice", "POST", f"/v1/grants/{grant}/revoke", {})
    assert got == 400 and "'reason' is required" in out["error"]["message"]
    assert await _snapshot(gw) == before


async def test_bad_credentials(gw: Running, caplog: pytest.LogCaptureFixture) -> None:
    secret = "gw_" + "s3cr3t" * 8
    got, out = await gw.call(None, "GET", "/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert got == 401 and secret not in str(out) and "s3cr3t" not in caplog.text
    for header in ("", "Basic YWxpY2U6eA==", "Bearer ", "Bearer gw_wrong", "Bearer not-a-jwt"):
        got, out = await gw.call(None, "GET", "/v1/whoami", headers={"Authorization": header} if header else {})
        assert got == 401, (header, out)
        assert "gw_wrong" not in out["error"]["message"]
