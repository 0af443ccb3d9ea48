"""Workload identities: a real local issuer (JWKS over HTTP), exchanges by rule, approvals, refusals, psql."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.config import load_config
from tests.control.conftest import Running, start_gateway, write_config, write_rig_config
from tests.rig.issuer import LocalIssuer
from tests.rig.postgres import PgCluster

AUD = "https://gateway.test"
POLICY = """\
target: orders-db
scopes:
  read:
    max_ttl: 1h
    requesters: {groups: [engineers, dba]}
    approvals: {count: 1}
    sql: {mode: read}
  write:
    max_ttl: 30m
    requesters: {groups: [dba]}
    approvals: {count: 2, groups: [dba]}
    sql: {mode: write}
  stats:
    max_ttl: 10m
    auto_approve: true
    sql: {mode: read}
workloads:
  - name: orders-deploy
    issuer: ci
    claims: {repository: acme/orders, ref: refs/heads/main, environment: production}
    scopes: [write, read]
    max_ttl: 10m
    approval: auto
  - name: acme-branches
    issuer: ci
    claims: {repository: "acme/*", ref: "refs/heads/*"}
    scopes: [read]
    max_ttl: 15m
    approval: required
"""


def _workloads_toml(issuer: LocalIssuer) -> str:
    return (
        f'[workloads.ci]\nissuer = "{issuer.url}"\njwks_url = "{issuer.jwks_url}"\n'
        f'audience = "{AUD}"\nalgorithms = ["RS256"]\n'
    )


@pytest.fixture
async def issuer() -> AsyncIterator[LocalIssuer]:
    """A real OIDC issuer on a free port."""
    iss = await LocalIssuer().start()
    yield iss
    await iss.stop()


@pytest.fixture
async def wgw(tmp_path: Path, api_keys: dict[str, str], issuer: LocalIssuer) -> AsyncIterator[Running]:
    """A gateway (API only) that trusts the local issuer for workloads."""
    path = write_config(tmp_path, api_keys, extra=_workloads_toml(issuer))
    (tmp_path / "policies" / "orders-db.yaml").write_text(POLICY)
    svc, port, stop = await start_gateway(load_config(path, need_secrets=False))
    async with aiohttp.ClientSession() as session:
        yield Running(svc, port, api_keys, session, stop, {"issuer": issuer})
    await stop()


async def _exchange(gw: Running, token: str, scope: str = "write", **extra: object) -> tuple[int, dict[str, object]]:
    status, out = await gw.call(None, "POST", "/v1/grants/exchange", {"subject_token": token, "target": "orders-db",
                                                                        "scope": scope, **extra})  # fmt: skip
    assert isinstance(out, dict), out
    return status, out


async def _events(gw: Running, type_: str) -> list[dict[str, object]]:
    return [e.to_json() for e in await gw.services.store.events(types=[type_])]


async def test_exchange_by_rule_auto_approved(wgw: Running, issuer: LocalIssuer) -> None:
    t0 = time.perf_counter()
    status, out = await _exchange(wgw, issuer.mint(AUD, run_id="9001"), ttl="5m")
    latency = time.perf_counter() - t0
    assert status == 200, out
    assert out["subject"] == "workload:acme/orders@main" and out["scope"] == "write"
    assert out["issued_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    grant = await wgw.services.store.get_grant(str(out["grant"]))
    assert grant is not None and grant.workload is not None
    assert grant.workload["run_id"] == "9001" and grant.workload["workflow"] == "deploy"
    assert grant.approvers == () and grant.expires_at - grant.issued_at == 300
    # the grant token verifies like anyone's and carries the run
    from gateway.tokens import verify_token

    c = wgw.services.config
    claims = verify_token(str(out["access_token"]), wgw.services.ring, issuer=c.issuer, audience=c.audience, leeway=0)
    assert claims.sub == "workload:acme/orders@main" and claims.workload is not None
    assert claims.workload["run_id"] == "9001"
    [ev] = await _events(wgw, "workload.exchanged")
    assert ev["data"]["workload"]["run_id"] == "9001" and ev["data"]["rule"] == "orders-deploy"  # type: ignore[index]
    # a second exchange of a fresh token reuses the cached JWKS
    status, _ = await _exchange(wgw, issuer.mint(AUD), scope="read")
    assert status == 200 and issuer.jwks_fetches == 1
    print(f"exchange latency (first, JWKS fetched): {latency * 1000:.1f} ms")


async def test_exchange_waits_for_an_approver(wgw: Running, issuer: LocalIssuer) -> None:
    token = issuer.mint(AUD, ref="refs/heads/feature-x", run_id="77")
    status, out = await _exchange(wgw, token, scope="read")
    assert status == 202 and out["state"] == "pending" and out["approvals_needed"] == 1, out
    req = str(out["request"])
    # polling with the same token (and with a fresh one of the same run) is not a replay; still pending
    assert (await _exchange(wgw, token, scope="read", request=req))[0] == 202
    assert (await _exchange(wgw, issuer.mint(AUD, ref="refs/heads/feature-x", run_id="77"), "read", request=req))[
        0
    ] == 202
    # another run cannot collect it
    status, out = await _exchange(wgw, issuer.mint(AUD, ref="refs/heads/feature-x", run_id="78"), "read", request=req)
    assert status == 403 and out["error"]["code"] == "workload-not-yours"  # type: ignore[index]
    pending = await wgw.ok("bob", "GET", "/v1/requests", params={"state": "pending"})
    [r] = pending["requests"]
    assert r["requester"] == "workload:acme/orders@feature-x" and r["workload"]["run_id"] == "77"
    await wgw.ok("bob", "POST", f"/v1/requests/{req}/approve", {"comment": "ok, deploy"})
    status, out = await _exchange(wgw, token, scope="read", request=req)
    assert status == 200, out
    grant = await wgw.services.store.get_grant(str(out["grant"]))
    assert grant is not None and grant.approvers == ("bob",) and grant.workload is not None
    assert grant.workload["run_id"] == "77"


async def test_refusals_are_clear_audited_and_alerted(wgw: Running, issuer: LocalIssuer, tmp_path: Path) -> None:
    token = issuer.mint(AUD)
    assert (await _exchange(wgw, token))[0] == 200
    cases = {
        "workload-replayed": token,
        "workload-audience": issuer.mint("https://other.example"),
        "workload-no-rule": issuer.mint(AUD, repository="evil/orders"),
        "workload-expired": issuer.mint(AUD, iat=int(time.time()) - 600, exp=int(time.time()) - 300),
        "workload-signature": issuer.mint(AUD, key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    }
    for code, tok in cases.items():
        status, out = await _exchange(wgw, tok)
        assert status == 403, (code, out)
        assert out["error"]["code"] == code, out  # type: ignore[index]
    other = LocalIssuer()  # never started: its tokens name an issuer the gateway does not know
    status, out = await _exchange(wgw, other.mint(AUD))
    assert status == 403 and out["error"]["code"] == "workload-unknown-issuer"  # type: ignore[index]
    # the policy refuses more than the rule's max_ttl
    status, out = await _exchange(wgw, issuer.mint(AUD), ttl="1h")
    assert out["error"]["code"] == "workload-ttl" and "10m" in out["error"]["message"]  # type: ignore[index]
    refused = await _events(wgw, "workload.refused")
    assert [e["data"]["code"] for e in refused] == [  # type: ignore[index]
        "replayed",
        "audience",
        "no-rule",
        "expired",
        "signature",
        "unknown-issuer",
        "ttl",
    ]
    assert all(e["severity"] == "warning" for e in refused)
    assert not await _events(wgw, "api.forbidden")  # audited once, as workload.refused
    assert "no workload rule" in refused[2]["data"]["reason"]  # type: ignore[index]
    alerts = [json.loads(line) for line in (tmp_path / "var" / "alerts.jsonl").read_text().splitlines()]
    assert any(a["type"] == "workload.refusals" and a["severity"] == "critical" for a in alerts)
    # the token never reaches the audit log
    assert token not in json.dumps([e.to_json() for e in await wgw.services.store.events()])


@pytest.mark.slow
async def test_psql_with_an_exchanged_token(
    tmp_path: Path,
    api_keys: dict[str, str],
    issuer: LocalIssuer,
    pg_cluster: PgCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GW_TEST_RO_PASSWORD", pg_cluster.passwords["app_ro"])
    monkeypatch.setenv("GW_TEST_RW_PASSWORD", pg_cluster.passwords["app_rw"])
    path = write_rig_config(tmp_path, api_keys, pg_cluster, _NoSsh())
    path.write_text(path.read_text() + "\n" + _workloads_toml(issuer))
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ops").write_text("")  # the unused ssh target's key file must exist
    (tmp_path / "policies" / "orders-db.yaml").write_text(POLICY)
    svc, port, stop = await start_gateway(load_config(path, need_secrets=True), enable=("postgres", "http"))
    try:
        env = {
            **os.environ,
            "GATEWAY_URL": f"http://127.0.0.1:{port}",
            "GATEWAY_OIDC_TOKEN": issuer.mint(AUD, run_id="31337"),
            "PATH": f"{pg_cluster.bin_dir}:{os.environ.get('PATH', '')}",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "exchange", "--target", "orders-db", "--scope", "write", "--for", "5m",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        token = out.decode().strip()
        assert "workload:acme/orders@main" in err.decode()
        pg_port = svc.config.listen_postgres.port
        proc = await asyncio.create_subprocess_exec(
            "psql", "-XAt", f"host=127.0.0.1 port={pg_port} user=workload:acme/orders@main dbname=orders-db "
            "sslmode=require", "-c", "select count(*) from customers",
            env={**env, "PGPASSWORD": token}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        assert out.decode().strip() == "50"
        deadline = time.monotonic() + 10
        while not (ends := await svc.store.events(types=["session.end"])):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        [start] = await svc.store.events(types=["session.start"])
        for ev in (start, ends[0]):
            assert ev.actor == "workload:acme/orders@main" and ev.data["workload"]["run_id"] == "31337"
        [sess] = await svc.store.list_sessions()
        assert sess.recording_path is not None
        header = json.loads(Path(sess.recording_path).read_text().splitlines()[0])
        assert header["workload"]["run_id"] == "31337" and header["workload"]["workflow"] == "deploy"
    finally:
        await stop()


class _NoSsh:
    """write_rig_config wants an sshd; this test has none (the ssh target is never dialled)."""

    port = 9
    host_key_line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPUTTHEKEYHERE"
    user = "ops"
    client_key_path = "keys/ops"
