"""`[listen] workers = 2`: one real `gateway run` supervising two worker processes on the same ports and one
SQLite store, with real psql, psycopg and ssh clients: connections spread over both workers, a revocation
through the API ends sessions on both, a cancel reaches its query whichever worker the cancel lands on, a
worker killed with -9 is restarted while the other's sessions go on, SIGTERM stops everything."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.replicas import Replica, ReplicaSet, exited, stop_client, wait_until
from tests.rig.postgres import PgCluster
from tests.rig.sshd import SshServer

pytestmark = pytest.mark.slow
NAME = "gw"


class Workers:
    """The supervisor's replica entry, its store and its workers' pids."""

    def __init__(self, rs: ReplicaSet, db: Path) -> None:
        self.rs = rs
        self.db = db

    @property
    def gw(self) -> Replica:
        return self.rs.replicas[NAME]

    def pids(self) -> list[int]:
        """The supervisor's live children (its workers)."""
        out = subprocess.run(["pgrep", "-P", str(self.gw.pid)], capture_output=True, text=True).stdout
        return sorted(int(p) for p in out.split())

    def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as con:
            return list(con.execute(sql, args))

    def nodes_of_live(self, grant: str) -> list[str]:
        return [str(r[0]) for r in self.rows("SELECT node FROM sessions WHERE grant_id=? AND ended_at IS NULL", grant)]

    def node_of(self, c: psycopg.Connection[tuple[object, ...]]) -> str:
        """The node holding this connection's session (its id is in the upstream application_name)."""
        row = c.execute("SELECT current_setting('application_name')").fetchone()
        assert row is not None
        rows = self.rows("SELECT node FROM sessions WHERE id=?", str(row[0]).rsplit(":", 1)[1])
        return str(rows[0][0])

    def connect(self, token: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(host="127.0.0.1", port=self.gw.pg, user="alice", dbname="orders", password=token,
                               sslmode="require", autocommit=True)  # fmt: skip


def live_gauge(port: int) -> float:
    """gateway_live_sessions for the orders target from one scrape of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    line = next(
        x for x in text.splitlines() if x.startswith('gateway_live_sessions{protocol="postgres",target="orders"}')
    )
    return float(line.rsplit(" ", 1)[1])


@pytest.fixture
def workers(pg_cluster: PgCluster, sshd_server: SshServer, tmp_path: Path) -> Iterator[Workers]:
    """`gateway run` with two workers on a fresh SQLite store; stopped (and the chain verified) after."""
    db = tmp_path / "store" / "gateway.db"
    db.parent.mkdir()
    rs = ReplicaSet(tmp_path, f"sqlite:///{db}", pg_cluster, sshd_server)
    r = rs.add(NAME)
    r.config.write_text(r.config.read_text().replace("[listen]\n", "[listen]\nworkers = 2\n", 1))
    try:
        rs.start(NAME)
        wait_until(lambda: "serving with 2 workers" in r.log.read_text(), 30, "the workers did not start")
        yield Workers(rs, db)
    finally:
        rs.stop_all()
    rs.verify(NAME)


def test_sessions_spread_over_both_workers_and_one_revoke_ends_them_all(workers: Workers) -> None:
    w = workers
    assert len(w.pids()) == 2
    token, grant = w.rs.grant(NAME, "orders", "read")
    conns = [w.connect(token) for _ in range(16)]  # 2 in 65536 that the kernel's hash puts all on one worker
    try:
        for c in conns:
            assert c.execute("SELECT count(*) FROM customers").fetchone() is not None
        nodes = w.nodes_of_live(grant)
        assert len(nodes) == 16
        assert {n.rsplit("/", 1)[1] for n in nodes} == {"w0", "w1"}, nodes
        # Each scrape lands on either worker (a new connection each): every one counts both workers' sessions.
        time.sleep(1.5)  # a worker publishes its live figures every second (gateway/workermetrics.py)
        for _ in range(8):
            assert live_gauge(w.gw.http) == 16
        t0 = time.monotonic()
        w.rs.api(NAME, "POST", f"/v1/grants/{grant}/revoke", {"reason": "INC-9 done"})
        took = wait_until(lambda: not w.nodes_of_live(grant), 5, "sessions still live after the revoke")
        for c in conns:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
        print(f"revoke -> every session on both workers ended in {time.monotonic() - t0:.3f} s ({took:.3f})")
        wait_until(lambda: all(live_gauge(w.gw.http) == 0 for _ in range(4)), 5, "live sessions still counted")
    finally:
        for c in conns:
            c.close()


def test_a_cancel_reaches_its_query_whichever_worker_takes_it(workers: Workers) -> None:
    w = workers
    token, grant = w.rs.grant(NAME, "orders", "read")
    nodes = set()
    for _ in range(10):  # each cancel is a new connection: about half land on the other worker
        with w.connect(token) as c:
            nodes.add(w.nodes_of_live(grant)[0])
            t0 = time.monotonic()
            timer = threading.Timer(0.3, c.cancel_safe)  # once the statement runs
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                c.execute("SELECT pg_sleep(20)")
            timer.join()
            assert time.monotonic() - t0 < 5
            assert c.execute("SELECT 1").fetchone() == (1,)  # the session goes on after its cancel
    assert len(nodes) == 2, nodes


def test_a_worker_killed_with_9_is_restarted_and_the_other_serves_on(workers: Workers) -> None:
    w = workers
    token, grant = w.rs.grant(NAME, "orders", "read")
    conns = [w.connect(token) for _ in range(12)]
    try:
        nodes = [w.node_of(c) for c in conns]
        victim_node = nodes[0]
        victim_index = int(victim_node.rsplit("/w", 1)[1])
        victim = _pid_of(w, victim_index, w.pids())
        survivors = [c for c, n in zip(conns, nodes, strict=True) if n != victim_node]
        doomed = [c for c, n in zip(conns, nodes, strict=True) if n == victim_node]
        assert survivors and doomed
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        for c in doomed:
            with pytest.raises(psycopg.OperationalError):
                c.execute("SELECT 1")
        for c in survivors:
            assert c.execute("SELECT 1").fetchone() == (1,)
        wait_until(lambda: len(w.pids()) == 2 and victim not in w.pids(), 20, "the worker was not restarted")
        wait_until(lambda: victim_node not in w.nodes_of_live(grant), 20, "the dead worker's sessions stay live")
        print(f"worker {victim_index} restarted and its sessions ended {time.monotonic() - t0:.2f} s after kill -9")
        ended = w.rows("SELECT count(*) FROM sessions WHERE node=? AND ended_at IS NOT NULL", victim_node)
        assert ended[0][0] == len(doomed)
        for c in survivors:
            assert c.execute("SELECT 1").fetchone() == (1,)
        fresh = [w.connect(token) for _ in range(8)]  # the port serves on with both workers
        for c in fresh:
            assert c.execute("SELECT 1").fetchone() == (1,)
            c.close()
    finally:
        for c in conns:
            c.close()


def _pid_of(w: Workers, index: int, pids: list[int]) -> int:
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        spec = cmdline[cmdline.index(b"--worker") + 1]
        if f'"index": {index},'.encode() in spec:
            return pid
    pytest.fail(f"no worker {index} among {pids}")


def test_ssh_through_the_workers_and_sigterm_stops_them_all(workers: Workers, tmp_path: Path) -> None:
    w = workers
    token, grant = w.rs.grant(NAME, "rig", "ops")
    outs = [tmp_path / f"out{i}" for i in range(4)]
    clients = [w.rs.ssh(NAME, token, "echo through-42; sleep 30", stdout=o.open("w")) for o in outs]
    try:
        wait_until(lambda: len(w.nodes_of_live(grant)) == 4, 30, "ssh sessions did not start")
        wait_until(lambda: all("through-42" in o.read_text() for o in outs), 30, "no output through the workers")
        assert _outputs(w, grant) == 4  # and recorded
        pids = w.pids()
        assert w.gw.proc is not None
        w.gw.proc.send_signal(signal.SIGTERM)
        assert w.gw.proc.wait(timeout=30) == 0
        wait_until(lambda: all(exited(c) for c in clients), 10, "ssh clients still running after SIGTERM")
        for c in clients:
            assert "gateway shutting down" in stop_client(c)
        assert not [p for p in pids if Path(f"/proc/{p}").exists()], "a worker outlived its supervisor"
        assert not w.nodes_of_live(grant)
        ends = w.rows("SELECT count(*) FROM audit WHERE type='session.end' AND grant_id=?", grant)
        assert ends == [(4,)]
    finally:
        for c in clients:
            stop_client(c)


def _outputs(w: Workers, grant: str) -> int:
    paths = [Path(str(r[0])) for r in w.rows("SELECT recording_path FROM sessions WHERE grant_id=?", grant)]
    return sum(1 for p in paths if p.exists() and b"through-42" in p.read_bytes())


def test_a_port_in_use_fails_the_start_with_a_clear_message(pg_cluster: PgCluster, tmp_path: Path) -> None:
    db = tmp_path / "gateway.db"
    rs = ReplicaSet(tmp_path, f"sqlite:///{db}", pg_cluster)
    r = rs.add(NAME)
    r.config.write_text(r.config.read_text().replace("[listen]\n", "[listen]\nworkers = 2\n", 1))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", r.pg))
        taken.listen()
        p = rs.cli(NAME, "run", timeout=60)
    assert p.returncode != 0
    assert "cannot start" in p.stderr and "in use" in p.stderr, p.stderr
