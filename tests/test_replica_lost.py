"""kill -9 of a replica mid-session, on real processes: the survivor marks its sessions ended (replica_lost, a
critical alert) and ends their upstream sides (the Postgres backend by its tag, the SSH command by the
detached-process sweep); the replica that comes back resurrects nothing, and the chain verifies. And a replica
frozen past lost_after (SIGSTOP) that resumes: reaped meanwhile, it ends what it held without a second end."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from gateway.sandbox.procs import ensure_user, is_root
from tests.replicas import ReplicaSet, exited, stop_client, wait_until
from tests.rig import needs
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer
from tests.storekit import Backend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_sshd() -> Iterator[SshServer]:
    """An sshd logging in a login of this test alone: the sweep ends that login's detached processes."""
    needs(is_root(), "a dedicated login user can only be created as root")
    user = "gwl" + hashlib.sha256(str(Path(__file__).resolve()).encode()).hexdigest()[:8]
    ensure_user(user, ["--create-home", "--user-group", "--shell", "/bin/bash"], ["--password", "*"])
    with SshServer(user) as sshd:
        yield sshd


def pids(command: str) -> list[int]:
    """The remote command's processes (anchored: the ssh client's own command line carries the text too)."""
    out = subprocess.run(["pgrep", "-f", f"^{command}$"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def backends(cluster: PgCluster, session: str) -> int:
    """Upstream backends still tagged with the session."""
    sql = f"SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%:{session}'"
    return int(cluster.psql(sql, db="postgres").strip())


async def test_kill9_replica_survivor_reaps_sessions_and_upstreams(
    pg_cluster: PgCluster, own_sshd: SshServer, tmp_path: Path
) -> None:
    backend = Backend("postgresql", tmp_path, pg_cluster)
    rs = ReplicaSet(tmp_path, backend.url, pg_cluster, own_sshd, detached="kill", lost_after=3.0)
    rs.add("gw-a")
    rs.add("gw-b")
    db = await asyncpg.connect(backend.url)
    sleep = f"sleep {random.randrange(10**7, 10**8)}"
    clients: list[subprocess.Popen[str]] = []
    try:
        rs.start("gw-a")
        rs.start("gw-b")
        pg_token, pg_grant = rs.grant("gw-b", "orders", "read")
        ssh_token, ssh_grant = rs.grant("gw-b", "rig", "ops")
        clients += [rs.psql("gw-a", pg_token, "SELECT pg_sleep(120)"), rs.ssh("gw-a", ssh_token, sleep)]

        async def live_ids() -> dict[str, str]:
            rows = await db.fetch("SELECT grant_id, id FROM sessions WHERE node='gw-a' AND ended_at IS NULL")
            return {str(r["grant_id"]): str(r["id"]) for r in rows}

        for _ in range(400):
            ids = await live_ids()
            if len(ids) == 2 and pids(sleep) and backends(pg_cluster, ids[pg_grant]):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"sessions did not start through A: {[stop_client(c) for c in clients]}")
        pg_sid, ssh_sid = ids[pg_grant], ids[ssh_grant]

        t0 = time.monotonic()
        rs.kill9("gw-a")
        assert backends(pg_cluster, pg_sid) == 1 and pids(sleep), "A's death alone ended the upstream sides"

        async def ended() -> bool:
            n = await db.fetchval("SELECT count(*) FROM sessions WHERE node='gw-a' AND ended_at IS NULL")
            return int(n) == 0

        while not await ended():
            assert time.monotonic() - t0 < 10, "B did not reap A's sessions"
            time.sleep(0.05)
        t_marked = time.monotonic() - t0
        t_backend = t_marked + wait_until(lambda: backends(pg_cluster, pg_sid) == 0, 10, "backend still there")
        t_ssh = t_marked + wait_until(lambda: not pids(sleep), 10, "the ssh command still runs")
        print(f"kill -9 A -> B marked its sessions ended {t_marked:.2f} s, Postgres backend gone {t_backend:.2f} s, "
              f"ssh command gone {t_ssh:.2f} s (lost_after {rs.lost_after:g} s)")  # fmt: skip
        assert t_marked < rs.lost_after + 3

        rows = await db.fetch("SELECT id, end_reason FROM sessions WHERE node='gw-a'")
        assert {r["id"]: r["end_reason"] for r in rows} == {pg_sid: "replica_lost", ssh_sid: "replica_lost"}
        ends = await db.fetch("SELECT session, node, data FROM audit WHERE type='session.end'")
        assert sorted((r["session"], r["node"]) for r in ends) == sorted([(pg_sid, "gw-b"), (ssh_sid, "gw-b")])
        detections = [json.loads(r["data"]) for r in await db.fetch(
            "SELECT data FROM audit WHERE type='detection' AND session=$1", pg_sid)]  # fmt: skip
        assert [(d["rule"], d["terminated"]) for d in detections] == [("lingering.ended_session_backend", True)]
        for _ in range(200):  # written when the sweep's script is done (it re-checks for a second or two)
            detached = [json.loads(r["data"]) for r in await db.fetch(
                "SELECT data FROM audit WHERE type='ssh.detached' AND session=$1", ssh_sid)]  # fmt: skip
            if detached:
                break
            time.sleep(0.05)
        assert len(detached) == 1 and [p["args"] for p in detached[0]["processes"]] == [sleep]
        alerts = [json.loads(line) for line in (tmp_path / "gw-b" / "alerts.jsonl").read_text().splitlines()]
        lost = [a for a in alerts if a["type"] == "replica.lost"]
        assert len(lost) == 1 and lost[0]["severity"] == "critical" and "gw-a" in lost[0]["summary"]

        # A comes back: it heartbeats again, and its old sessions stay ended (nothing resurrects them).
        rs.start("gw-a")
        time.sleep(2 * rs.lost_after / 6 + 0.5)  # a few heartbeats and sweeps of the new A
        state = await db.fetchval("SELECT state FROM nodes WHERE id='gw-a'")
        assert state == "up"
        assert "gw-a" in rs.cli("gw-b", "nodes").stdout
        rows = await db.fetch("SELECT id, end_reason FROM sessions WHERE node='gw-a' AND ended_at IS NULL")
        assert rows == []
        assert int(await db.fetchval("SELECT count(*) FROM audit WHERE type='session.end'")) == 2
    finally:
        for c in clients:
            stop_client(c)
        await db.close()
        rs.stop_all()
    rs.verify("gw-b")


async def test_a_frozen_replica_that_comes_back_resurrects_nothing(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """SIGSTOP (a partition, a frozen VM) for longer than lost_after, then SIGCONT: B has reaped A's session
    and ended its backend; A, back, ends what it still held without a second session.end, and serves again."""
    backend = Backend("postgresql", tmp_path, pg_cluster)
    rs = ReplicaSet(tmp_path, backend.url, pg_cluster, lost_after=3.0)
    rs.add("gw-a")
    rs.add("gw-b")
    db = await asyncpg.connect(backend.url)
    psql = None
    try:
        rs.start("gw-a")
        rs.start("gw-b")
        token, grant = rs.grant("gw-b", "orders", "read")
        psql = rs.psql("gw-a", token, "SELECT pg_sleep(120)")
        for _ in range(400):
            sid = await db.fetchval("SELECT id FROM sessions WHERE grant_id=$1 AND ended_at IS NULL", grant)
            if sid is not None and backends(pg_cluster, str(sid)):
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"no session through A: {stop_client(psql)}")
        rs.replicas["gw-a"].proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            wait_until(lambda: backends(pg_cluster, str(sid)) == 0, 15, "B did not end the frozen replica's backend")
            assert await db.fetchval("SELECT end_reason FROM sessions WHERE id=$1", sid) == "replica_lost"
        finally:
            rs.replicas["gw-a"].proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        wait_until(lambda: exited(psql), 10, "the client of the frozen replica did not end once it came back")
        time.sleep(1.0)  # A's end of its session is written by now
        ends = await db.fetch("SELECT type, node FROM audit WHERE session=$1 AND type IN "
                              "('session.end', 'session.closed') ORDER BY seq", sid)  # fmt: skip
        assert [(r["type"], r["node"]) for r in ends] == [("session.end", "gw-b"), ("session.closed", "gw-a")]
        assert await db.fetchval("SELECT end_reason FROM sessions WHERE id=$1", sid) == "replica_lost"
        assert await db.fetchval("SELECT state FROM nodes WHERE id='gw-a'") == "up"  # beating again
        again = rs.psql("gw-a", rs.grant("gw-b", "orders", "read")[0], "SELECT 1")  # and serving
        assert again.wait(timeout=30) == 0, stop_client(again)
    finally:
        if psql is not None:
            stop_client(psql)
        await db.close()
        rs.stop_all()
    rs.verify("gw-b")
