"""Signed termination receipts on real psql and ssh sessions, ended by client exit, revocation and expiry."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
from pathlib import Path

import pytest

from gateway.control.grants import issue_grant
from gateway.receipts import ReceiptError, verify_receipt
from gateway.tokens import TokenError, verify_token
from tests.control.conftest import Running
from tests.control.test_e2e_clients import _cli, _done, _env, _live
from tests.control.test_e2e_clients import full_gw as full_gw  # the fixture: every listener on the rig
from tests.rig.postgres import PgCluster

pytestmark = pytest.mark.slow


async def _receipt(gw: Running, user: str, sid: str) -> dict[str, object]:
    deadline = time.monotonic() + 15
    while True:
        status, out = await gw.call(user, "GET", f"/v1/sessions/{sid}/receipt")
        if status == 200:
            assert isinstance(out, dict)
            return out
        assert status in (404, 409) and time.monotonic() < deadline, (status, out)
        await asyncio.sleep(0.1)


async def _session_of(gw: Running, grant: str) -> str:
    deadline = time.monotonic() + 30
    while not (rows := (await gw.ok("erin", "GET", "/v1/sessions", params={"grant": grant}))["sessions"]):
        assert time.monotonic() < deadline, "no session"
        await asyncio.sleep(0.1)
    return str(rows[0]["id"])


async def _gateway(gw: Running, *argv: str) -> tuple[int, str, str]:
    """A reviewer command on the gateway's own files."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", *argv,
        env={**os.environ, "GATEWAY_CONFIG": str(gw.services.config.path)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await _done(proc, 30)


def claims_kid(jws: str) -> str:
    """The kid in a JWS header."""
    head = jws.strip().split(".")[0]
    return str(json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"])


def _tamper(jws: str, **changes: object) -> str:
    head, payload, sig = jws.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


async def test_receipts_for_client_exit_revoke_and_expiry(full_gw: Running, tmp_path: Path) -> None:
    gw = full_gw
    svc = gw.services
    # 1. psql, the client exits
    _, pg_grant, _ = await gw.approved_grant("alice", "bob", "orders-db", "read")
    code, out, err = await _done(await _cli(gw, "alice", "psql", "orders-db", "--", "-At", "-c", "select 1", "-c",
                                            "select count(*) from customers"))  # fmt: skip
    assert code == 0, err
    sid = await _session_of(gw, pg_grant)
    got = await _receipt(gw, "alice", sid)
    claims = got["claims"]
    assert isinstance(claims, dict)
    record = await svc.store.get_session(sid)
    assert record is not None
    [end] = await svc.store.events(session=sid, types=["session.end"])
    assert claims["session"] == sid and claims["grant"] == pg_grant and claims["user"] == "alice"
    assert (claims["target"], claims["scope"], claims["protocol"]) == ("orders-db", "read", "postgres")
    assert claims["ended_by"] == "client" and claims["approvers"] == ["bob"]
    assert claims["recording_sha256"] == record.recording_sha256 and record.recording_sha256
    assert claims["counts"] == record.stats and claims["counts"]
    assert claims["audit"] == {"origin": "gateway/audit", "seq": end.seq, "hash": end.hash}
    assert claims["started_at"] == record.started_at and claims["ended_at"] == record.ended_at
    # never an approval token
    c = svc.config
    with pytest.raises(TokenError):
        verify_token(str(got["receipt"]), svc.ring, issuer=c.issuer, audience=c.audience, leeway=30)
    # another user does not see it
    assert (await gw.call("mallory", "GET", f"/v1/sessions/{sid}/receipt"))[0] == 404

    # the CLI prints it; it verifies offline with the JWKS; an altered copy is refused
    code, jws, err = await _gateway(gw, "receipt", sid)
    assert code == 0, err
    assert jws.strip() == got["receipt"] and "ended" in err
    code, jwks, err = await _gateway(gw, "keys", "jwks")
    assert code == 0, err
    (tmp_path / "jwks.json").write_text(jwks)
    (tmp_path / "r.jws").write_text(jws)
    code, out, err = await _gateway(
        gw, "receipt", "verify", str(tmp_path / "r.jws"), "--jwks", str(tmp_path / "jwks.json")
    )
    assert code == 0 and out.startswith("receipt valid: session " + sid), (out, err)
    (tmp_path / "altered.jws").write_text(_tamper(jws.strip(), end_reason="nothing to see", counts={}))
    code, out, _ = await _gateway(
        gw, "receipt", "verify", str(tmp_path / "altered.jws"), "--jwks", str(tmp_path / "jwks.json")
    )
    assert code == 1 and "receipt INVALID" in out and "altered" in out
    code, out, err = await _gateway(gw, "show", sid)
    assert code == 0 and f"session.receipt    signed (key {claims_kid(jws)}), covers audit #{end.seq}" in out, (
        out,
        err,
    )

    # 2. ssh, revoked by an admin while running
    _, ssh_grant, _ = await gw.approved_grant("alice", "bob", "web-1", "shell")
    ssh = await _cli(gw, "alice", "ssh", "web-1", "--", "sleep", "60")
    try:
        deadline = time.monotonic() + 30
        while await _live(gw, ssh_grant) != 1:
            assert time.monotonic() < deadline, "ssh session did not start"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # the exec channel is open and recording
        await gw.ok("erin", "POST", f"/v1/grants/{ssh_grant}/revoke", {"reason": "incident over"})
        await _done(ssh, 20)
    finally:
        if ssh.returncode is None:
            ssh.kill()
            await ssh.wait()
    ssh_sid = await _session_of(gw, ssh_grant)
    claims = (await _receipt(gw, "erin", ssh_sid))["claims"]
    assert isinstance(claims, dict)
    assert claims["protocol"] == "ssh" and claims["ended_by"] == "erin"
    assert "grant revoked: incident over" in str(claims["end_reason"])
    ssh_record = await svc.store.get_session(ssh_sid)
    assert ssh_record is not None and ssh_record.recording_sha256
    assert claims["recording_sha256"] == ssh_record.recording_sha256

    # 3. psql, the access window closes under a running query
    issued = await issue_grant(
        svc.config, svc.ring, svc.store, svc.policies, user="alice", target="orders-db", scope="read", ttl=3,
        reason="INC-9: short", approvers=("bob",), now=time.time(),
    )  # fmt: skip
    pg: PgCluster = gw.extra["pg"]
    proc = await asyncio.create_subprocess_exec(
        "psql", f"host=127.0.0.1 port={svc.config.listen_postgres.port} user=alice dbname=orders-db sslmode=require",
        "-c", "select pg_sleep(30)",
        env={**_env(gw, "alice"), "PGPASSWORD": issued.token, "PATH": f"{pg.bin_dir}:{os.environ['PATH']}"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    code, _, _ = await _done(proc, 30)
    assert code != 0
    claims = (await _receipt(gw, "alice", await _session_of(gw, issued.grant.id)))["claims"]
    assert isinstance(claims, dict)
    assert claims["ended_by"] == "gateway" and claims["end_reason"] == "access window expired"
    # verification refuses a receipt from another gateway's key and a bare approval token
    with pytest.raises(ReceiptError, match="typ"):
        verify_receipt(issued.token, svc.ring)
