"""Two real `gateway run` processes on one real PostgreSQL store with real upstreams (the rig's PostgreSQL and
sshd) and the stock psql and ssh clients: a request asked on A is approved on B; a revoke through A ends a
psql held by A and an ssh held by B; a kill through A ends B's session; the times are measured and printed."""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.replicas import ReplicaSet, exited, stop_client
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer
from tests.storekit import Backend

pytestmark = pytest.mark.slow
TRIES = 10


@pytest.fixture
def replicas(pg_cluster: PgCluster, sshd_server: SshServer, tmp_path: Path) -> Iterator[ReplicaSet]:
    """Replicas gw-a and gw-b running on a fresh store database; stopped (and the chain verified) after."""
    backend = Backend("postgresql", tmp_path, pg_cluster)
    rs = ReplicaSet(tmp_path, backend.url, pg_cluster, sshd_server)
    rs.add("gw-a")
    rs.add("gw-b")
    try:
        rs.start("gw-a")  # first: it makes the shared signing key; B starts on the same key
        rs.start("gw-b")
        yield rs
    finally:
        rs.stop_all()
    rs.verify("gw-b")


async def live_on(rs: ReplicaSet, grant: str) -> str:
    """The node holding the grant's one live session (waits for it)."""
    db = await asyncpg.connect(rs.store_url)
    try:
        for _ in range(400):
            row = await db.fetchrow("SELECT node FROM sessions WHERE grant_id=$1 AND ended_at IS NULL", grant)
            if row is not None:
                return str(row["node"])
            time.sleep(0.05)
    finally:
        await db.close()
    pytest.fail(f"no live session of grant {grant}")


def exit_times(t0: float, clients: dict[str, subprocess.Popen[str]], timeout: float = 5) -> dict[str, float]:
    """Seconds from t0 to each client's exit (fails the test if one is still running after `timeout`)."""
    took: dict[str, float] = {}
    while len(took) < len(clients) and time.monotonic() - t0 < timeout:
        for name, proc in clients.items():
            if name not in took and exited(proc):
                took[name] = time.monotonic() - t0
        time.sleep(0.005)
    missing = set(clients) - set(took)
    assert not missing, f"still running {timeout:g} s after the call: {sorted(missing)}"
    return took


async def test_revoke_on_a_ends_psql_on_a_and_ssh_on_b(replicas: ReplicaSet) -> None:
    rs = replicas
    pg_token, pg_grant = rs.request_approved("gw-a", "gw-b", "orders", "read")  # asked on A, approved on B
    ssh_token, ssh_grant = rs.request_approved("gw-b", "gw-a", "rig", "ops")
    psql = rs.psql("gw-a", pg_token, "SELECT pg_sleep(60)")
    ssh = rs.ssh("gw-b", ssh_token, "sleep 60")
    try:
        assert await live_on(rs, pg_grant) == "gw-a"
        assert await live_on(rs, ssh_grant) == "gw-b"
        time.sleep(0.3)  # both commands are running upstream
        t0 = time.monotonic()
        rs.api("gw-a", "POST", f"/v1/grants/{pg_grant}/revoke", {"reason": "e2e"})
        rs.api("gw-a", "POST", f"/v1/grants/{ssh_grant}/revoke", {"reason": "e2e"})
        took = exit_times(t0, {"psql": psql, "ssh": ssh})
        t_psql, t_ssh = took["psql"], took["ssh"]
    finally:
        out_psql, out_ssh = stop_client(psql), stop_client(ssh)
    print(f"revoke through A: psql held by A exited {t_psql:.3f} s, ssh held by B {t_ssh:.3f} s after the calls")
    assert psql.returncode != 0 and ssh.returncode != 0, (out_psql, out_ssh)
    assert "revoked" in out_psql or "terminat" in out_psql, out_psql
    assert t_psql < 1.0 and t_ssh < 1.0, took


async def test_kill_through_a_ends_a_session_held_by_b(replicas: ReplicaSet) -> None:
    rs = replicas
    token, grant = rs.grant("gw-a", "rig", "ops")
    ssh = rs.ssh("gw-b", token, "sleep 60")
    try:
        assert await live_on(rs, grant) == "gw-b"
        sid = rs.api("gw-a", "GET", f"/v1/sessions?grant={grant}&live=true")["sessions"][0]["id"]
        time.sleep(0.3)  # the command is running upstream
        t0 = time.monotonic()
        answer = rs.api("gw-a", "POST", f"/v1/sessions/{sid}/kill", {"reason": "e2e kill"})
        took = exit_times(t0, {"ssh": ssh})["ssh"]
    finally:
        out = stop_client(ssh)
    print(f"kill through A of B's ssh session: exited {took:.3f} s after the call")
    assert answer["killed_here"] is False and answer["requested"] is True
    assert ssh.returncode != 0, out
    assert took < 1.0
    db = await asyncpg.connect(rs.store_url)
    try:
        for _ in range(100):  # the client is cut first; the end is recorded right after
            ends = await db.fetch("SELECT node, data FROM audit WHERE type='session.end' AND session=$1", sid)
            if ends:
                break
            time.sleep(0.05)
    finally:
        await db.close()
    assert [r["node"] for r in ends] == ["gw-b"] and "e2e kill" in ends[0]["data"]


async def test_revoke_latency_across_replicas(replicas: ReplicaSet) -> None:
    """Revoke through A's API -> psql held by B exits, TRIES times."""
    rs = replicas
    latencies: list[float] = []
    for _ in range(TRIES):
        token, gid = rs.grant("gw-a", "orders", "read")
        psql = rs.psql("gw-b", token, "SELECT pg_sleep(60)")
        try:
            assert await live_on(rs, gid) == "gw-b"
            time.sleep(0.3)  # the statement is running upstream
            t0 = time.monotonic()
            rs.api("gw-a", "POST", f"/v1/grants/{gid}/revoke", {"reason": "e2e"})
            latencies.append(exit_times(t0, {"psql": psql})["psql"])
        finally:
            stop_client(psql)
        assert psql.returncode != 0
    db = await asyncpg.connect(rs.store_url)
    try:
        nodes = {r[0] for r in await db.fetch("SELECT DISTINCT node FROM audit")}
    finally:
        await db.close()
    assert {"gw-a", "gw-b"} <= nodes  # one chain, both replicas writing
    print(f"cross-replica revoke -> psql exit: p50 {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")
    assert max(latencies) < 1.0, latencies
